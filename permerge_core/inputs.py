"""What a pipeline reads besides its settings: the pair, its tokenizer, the data, the cache, the device.

`Inputs` is one value for them. The CLI builds it from its flags (`cli.inputs_from_args`), the
app from its sidebar (`permerge_app.ui.inputs_for`) and the grid for each of its pairs
(`grid.GridSpec.pair_inputs`); `Pipeline.from_inputs` takes it. The same choices give equal
values, so the app's pipeline cache and the command line it shows (`cli.command_line`) name
exactly what the CLI would run. `None` data means the bundled default; `cache_dir` None means
no disk cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .cache import default_cache_dir
from .settings import TaskSpec


def cache_folder(folder: str | Path | None = None) -> str:
    """The disk cache's folder as an absolute path (default: $PERMERGE_CACHE, else
    ~/.cache/permerge), so that it means the same wherever it is read (a Ray worker too)."""
    return os.path.abspath(Path(folder or default_cache_dir()).expanduser())


@dataclass(frozen=True)
class Inputs:
    model_a: str  # folder or hub id
    model_b: str
    tokenizer: str | None = None  # a tokenizer folder, where A's folder has none
    match_data: str | None = None  # the matching text (None: bundled; classifiers: the evaluation file's texts)
    eval_data: str | None = None  # the evaluation text or labelled file (None: bundled)
    # The columns of a labelled file (CSV, TSV, JSON Lines or a GLUE name): a classifier's
    # evaluation data, and for any pair the matching text's input column where the matching file
    # is such a file (plain text files are read line by line whatever this says).
    task: TaskSpec | None = TaskSpec()
    cache_dir: str | None = field(default_factory=cache_folder)
    device: str = "cpu"  # where the checkpoints are loaded (the settings' device is where stages run)
