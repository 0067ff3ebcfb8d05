"""permerge_core: align two transformers by permutation and measure the loss barrier.

The method is Verma & Elbayad (2024), "Merging Text Transformer Models from Different
Initializations", with the two fixes described in docs/method.md (tied MLM decoder
handled correctly; no scaling of the endpoints). Pure Python: no UI code lives here.

The public names are imported on first use (PEP 562), so that importing a light module such
as `permerge_core.assignment` (in the assignment worker processes) does not load torch and
transformers.
"""

from importlib import import_module

_EXPORTS = {
    "FAMILIES": "families", "supported_architectures": "families",
    "Checkpoint": "checkpoints", "load_checkpoint": "checkpoints", "validate_pair": "checkpoints",
    "CheckpointError": "errors", "DataError": "errors", "IncompatiblePairError": "errors",
    "PermergeError": "errors", "SettingsError": "errors",
    "ATTENTION_MODES": "modes", "RESIDUAL_MODES": "modes", "Matching": "matching",
    "compute_matching": "matching", "is_function_preserving": "modes",
    "AlignSettings": "settings", "TaskSpec": "settings", "Pipeline": "pipeline", "default_pair": "pipeline",
    "Inputs": "inputs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    try:  # submodules: `from permerge_core import grid`
        return import_module(f".{name}", __name__)
    except ModuleNotFoundError as missing:
        if missing.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
