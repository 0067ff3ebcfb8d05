"""permerge_core: align two transformers by permutation and measure the loss barrier.

The method is Verma & Elbayad (2024), "Merging Text Transformer Models from Different
Initializations", with the two fixes described in shared method.md (tied MLM decoder
handled correctly; no scaling of the endpoints). Pure Python: no UI code lives here.
"""

from .architectures import FAMILIES, supported_architectures
from .checkpoints import Checkpoint, load_checkpoint, validate_pair
from .errors import CheckpointError, DataError, IncompatiblePairError, PermergeError, SettingsError
from .matching import ATTENTION_MODES, RESIDUAL_MODES, Matching, compute_matching, is_function_preserving
from .pipeline import AlignSettings, Pipeline, default_pair

__all__ = [
    "ATTENTION_MODES", "RESIDUAL_MODES", "FAMILIES", "AlignSettings", "Checkpoint", "CheckpointError",
    "DataError", "IncompatiblePairError", "Matching", "PermergeError", "Pipeline", "SettingsError",
    "compute_matching", "default_pair", "is_function_preserving", "load_checkpoint", "supported_architectures",
    "validate_pair",
]
