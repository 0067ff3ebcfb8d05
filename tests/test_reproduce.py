"""docs/reproduce.md's recipe for the paper's Tables 1 and 2, run as written on the bundled seeds
(the hub's MultiBERTs are out of reach here): its `grid` commands with the page's variables
replaced by the bundled models, small budgets and the local engine."""

import csv
import json
import shlex
from pathlib import Path

import pytest

from permerge_core.checkpoints import bundled_seeds
from permerge_core.cli import main

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "reproduce.md"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(len(bundled_seeds()) < 3, reason="the bundled seed models are missing")]


def recipe() -> list[list[str]]:
    """The page's grid commands, split as a shell would (before expanding its variables)."""
    lines = [line for line in PAGE.read_text().splitlines() if line.startswith(".venv/bin/python -m permerge_core grid ")]
    return [shlex.split(line)[3:] for line in lines]


def test_the_recipe_gives_both_tables_with_the_papers_rows(tmp_path):
    commands = recipe()
    assert len(commands) == 2 and all("--eval-packing" in c and "blocks" in c for c in commands)
    values = {
        "$MODELS": [str(p) for p in bundled_seeds()[:3]],
        "$DATA": ["--match-tokens", "1024", "--eval-tokens", "512"],
        "$RUN": ["--engine", "local"],
    }
    tables = {}
    for args in commands:
        assert {"$MODELS", "$DATA", "$RUN"} <= set(args)
        expanded = [x for arg in args for x in values.get(arg, [arg])]
        out = expanded[expanded.index("--out") + 1]
        expanded[expanded.index("--out") + 1] = str(tmp_path / out)
        expanded += ["--lambdas", "3", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
        assert main(expanded) == 0
        tables[Path(out).name] = (json.loads((tmp_path / out / "grid.json").read_text()),
                                  list(csv.DictReader((tmp_path / out / "table.csv").open())))
    grid1, table1 = tables["table1"]
    grid2, table2 = tables["table2"]
    assert [r["variant"] for r in table1] == ["vanilla attention", "monotonic", "ignore-heads", "Head-Perm"]
    assert [r["variant"] for r in table2] == ["identity", "first", "last", "all", "sep"]
    assert all(r["pairs"] == "3" for r in table1 + table2)
    flags = {r["variant"]: r["function_preserving"] for r in table1 + table2}
    assert flags["ignore-heads"] == flags["sep"] == "False" and flags["Head-Perm"] == flags["first"] == "True"
    for cell in grid2["pairs"]:  # identity permutes nothing: its path is the vanilla path
        identity = cell["variants"]["identity"]["barrier"]
        assert identity["permuted"] == pytest.approx(identity["vanilla"], abs=1e-6)
    # Table 2 ran after Table 1 on the same cache: the pairs' vanilla paths are the same numbers.
    assert [c["barrier"]["vanilla"] for c in grid1["pairs"]] == [c["barrier"]["vanilla"] for c in grid2["pairs"]]
