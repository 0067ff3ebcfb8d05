"""The core stays below the app: no module of permerge_core imports permerge_app or a UI
library, not even inside a function (where an import only fails once that code runs)."""

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "permerge_core"
ABOVE_THE_CORE = ("permerge_app", "streamlit", "plotly")


def imported_modules(path: Path) -> list[str]:
    """Every module `path` imports, anywhere in it; relative imports that leave the package as
    '..' (which could reach the app)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level > 1:
                names.append("..")
            elif node.level == 0:
                names.append(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__"):
            names += [arg.value for arg in node.args[:1] if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
    return names


def test_the_core_never_imports_the_app_or_streamlit():
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 20 and CORE / "pipeline.py" in files
    wrong = {str(f.relative_to(CORE)): m for f in files for m in imported_modules(f)
             if m == ".." or m.split(".")[0] in ABOVE_THE_CORE}
    assert wrong == {}


def test_the_scan_sees_imports_anywhere_in_a_module(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef late():\n    from permerge_app import views\n    import streamlit as st\n"
                      "    from .. import permerge_app\n    importlib.import_module('plotly.express')\n")
    assert imported_modules(module) == ["os", "permerge_app", "streamlit", "..", "plotly.express"]
