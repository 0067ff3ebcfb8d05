"""Loading checkpoints safely, and deciding whether two of them can be compared.

Weights are read from safetensors, or from `pytorch_model.bin` with `weights_only=True`
(a pickle that holds anything but tensors is refused, never executed). No remote code is
ever run. Half-precision weights are computed in float32. Every failure becomes a
`CheckpointError` or `IncompatiblePairError` that names the problem and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from .families import FAMILIES, family_for_model_type, supported_architectures
from .families.schema import BASE, CLASSIFICATION, Family, Head, config_value
from .errors import CheckpointError, IncompatiblePairError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED_MODELS = ASSETS / "models"
BUNDLED_CLASSIFIERS = ASSETS / "classifiers"  # the seed models fine-tuned on the bundled task
BUNDLED_DECODERS = ASSETS / "decoders"  # GPT-2 decoders that differ only in their seed
BUNDLED_TASK = ASSETS / "tasks" / "source"  # train.tsv (matching) and eval.tsv (evaluation)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Files that hold a tokenizer's vocabulary; a folder with none has no tokenizer (transformers
# would still build one from config.json: an empty vocabulary of five special tokens).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")
HUB_ALLOW = ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer*", "vocab*", "special_tokens_map.json", "merges.txt"]


@dataclass
class Checkpoint:
    """A loaded model with everything needed to describe, compare and align it."""

    source: str  # what the user gave: a folder or a hub id
    path: Path  # local folder the files came from
    family: Family
    head: Head
    architecture: str  # the class it is loaded as
    config: object  # transformers PretrainedConfig
    model: torch.nn.Module  # float32, eval mode
    tokenizer: object  # None when the folder has none: validate_pair says which and how to fix it
    fingerprint: str  # sha256 over config and weights: identifies the content, not the path
    stored_dtype: str

    @property
    def shape(self):
        return self.family.shape(self.config)

    @property
    def num_layers(self) -> int:
        return self.shape.layers

    @property
    def hidden(self) -> int:
        return self.shape.hidden

    @property
    def num_heads(self) -> int:
        return self.shape.heads

    @property
    def ffn(self) -> int:
        return self.shape.ffn

    @property
    def spaces(self) -> dict:
        """Every space of the model (spaces.py): what a matching permutes, by name."""
        from . import spaces

        return spaces.of_model(self.family, self.config)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> dict:
        return {
            "source": self.source,
            "path": str(self.path),
            "family": self.family.name,
            "architecture": self.architecture,
            "head": self.head.kind,
            "layers": self.num_layers,
            "hidden": self.hidden,
            "heads": self.num_heads,
            "ffn": self.ffn,
            "positions": self.shape.positions,
            "vocab": self.config.vocab_size,
            "parameters": self.num_parameters,
            "stored_dtype": self.stored_dtype,
            "fingerprint": self.fingerprint,
        }


_fingerprints: dict[tuple, str] = {}


def _file_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _fingerprints:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _fingerprints[key] = digest.hexdigest()
    return _fingerprints[key]


def resolve_source(source: str) -> Path:
    """A local folder for `source`: the folder itself, or a hub snapshot when online."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{source} is a file; a checkpoint is a folder.", "Give the folder that holds config.json and the weights.")
    # Hub ids look like "name" or "org/name"; anything else can only be a local path.
    looks_like_path = source.startswith((".", "/", "~", "\\")) or source.count("/") > 1 or not source.strip()
    if looks_like_path:
        raise CheckpointError(f"Folder {source} does not exist.", "Check the path, or give a hub id such as google/multiberts-seed_0.")
    return _hub_snapshot(source)


def _hub_snapshot(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        raise CheckpointError("huggingface_hub is not installed.", "Give a local folder.") from None
    try:  # already downloaded: no network needed
        return Path(snapshot_download(repo_id, allow_patterns=HUB_ALLOW, local_files_only=True))
    except Exception:
        pass
    if not hub_reachable():
        raise CheckpointError(
            f"Cannot reach the Hugging Face hub to fetch {repo_id!r} (offline, or no such local folder).",
            "Give a local folder that holds config.json and the weights.",
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_ALLOW))
    except Exception as err:
        raise CheckpointError(f"Could not download {repo_id!r} from the hub: {type(err).__name__}: {err}".split("\n")[0], "Check the id, or give a local folder.") from None


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def read_state_dict(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The raw tensors of a checkpoint folder, loaded without executing anything."""
    for name in WEIGHT_FILES:
        file = folder / name
        if file.exists():
            break
    else:
        raise CheckpointError(
            f"{folder} has config.json but no weights ({' or '.join(WEIGHT_FILES)}).",
            "Copy the weight file into the folder, or save the model with save_pretrained().",
        )
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file)), file
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"{file} is truncated or corrupted ({str(err).splitlines()[0]}).",
                "Download or save the checkpoint again.",
            ) from None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{file} holds Python objects other than tensors; loading it could run arbitrary code, so it was refused.",
            "Convert the checkpoint to safetensors with a trusted tool, or use a plain state dict.",
        ) from None
    except Exception as err:
        raise CheckpointError(f"{file} cannot be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}).", "Download or save the checkpoint again.") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file} is not a state dict of tensors.", "Save the model with save_pretrained().")
    return state, file


def _choose_head(family: Family, architectures: list[str] | None, keys: set[str]) -> Head:
    for arch in architectures or []:
        head = family.head_for_architecture(arch)
        if head is not None:
            return head
    if architectures:
        raise CheckpointError(
            f"Architecture {architectures[0]} is not supported.",
            f"Use one of: {', '.join(supported_architectures())}.",
        )
    return family.head_for_keys(keys)


def _read_config(folder: Path) -> tuple[dict, Family]:
    """config.json of a checkpoint folder as a dict, and the supported family it belongs to."""
    config_file = folder / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{folder} has no config.json, so it is not a Hugging Face checkpoint folder.", "Give the folder that save_pretrained() wrote.")
    try:
        raw_config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_file} is not valid JSON ({err}).", "Restore config.json from the original checkpoint.") from None
    model_type = raw_config.get("model_type")
    family = family_for_model_type(model_type or "")
    if family is None:
        raise CheckpointError(
            f"Model type {model_type!r} ({', '.join(raw_config.get('architectures') or ['no architecture'])}) is not supported.",
            f"Supported families: {', '.join(FAMILIES)} ({', '.join(supported_architectures())}).",
        )
    return raw_config, family


def read_head(source: str | Path) -> Head:
    """The head a checkpoint is loaded with, chosen as `load_checkpoint` chooses it but without
    loading the model: from config.json's architectures, or, where it names none, from the
    tensor names (a safetensors file's header; only a pytorch_model.bin is read whole)."""
    folder = resolve_source(str(source))
    raw_config, family = _read_config(folder)
    architectures = raw_config.get("architectures")
    return _choose_head(family, architectures, set() if architectures else _tensor_names(folder))


def _tensor_names(folder: Path) -> set[str]:
    file = folder / WEIGHT_FILES[0]
    if file.exists():
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework="pt") as handle:
                return set(handle.keys())
        except Exception:  # damaged: read_state_dict says how
            pass
    return set(read_state_dict(folder)[0])


def _normalise_keys(state: dict[str, torch.Tensor], family: Family, head: Head) -> dict[str, torch.Tensor]:
    """Old checkpoints' tensor names (e.g. LayerNorm gamma/beta) become today's; bare encoders
    lack the prefix, and a head model saved without it (the hub's gpt2) gets it."""
    unprefixed = head.kind != BASE and not any(k.startswith(family.base_prefix) for k in state)
    out = {}
    for key, value in state.items():
        for old, new in family.renamed:
            key = key.replace(old, new)
        if head.kind == BASE and key.startswith(family.base_prefix):
            key = key[len(family.base_prefix):]
        elif unprefixed and not (head.detect and key.startswith(head.detect)):
            key = family.base_prefix + key
        out[key] = value
    return out


def load_checkpoint(source: str | Path, tokenizer: str | Path | None = None, device: str = "cpu") -> Checkpoint:
    """Load a Hugging Face-format folder (or hub id) as a float32 model in eval mode."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    source = str(source)
    folder = resolve_source(source)
    config_file = folder / "config.json"
    raw_config, family = _read_config(folder)
    model_type = raw_config.get("model_type")
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except Exception as err:
        raise CheckpointError(f"{config_file} cannot be read as a {model_type} config ({str(err).splitlines()[0]}).", "Restore config.json from the original checkpoint.") from None
    unmet = family.unmet_requirement(config)
    if unmet is not None:
        raise CheckpointError(f"{source} sets {unmet.key} to {config_value(config, unmet.key)!r}, but {unmet.why}.", unmet.fix)
    family = family.for_config(config)
    state, weights_file = read_state_dict(folder)
    head = _choose_head(family, raw_config.get("architectures"), set(state))
    state = _normalise_keys(state, family, head)
    stored_dtype = next((str(v.dtype).replace("torch.", "") for v in state.values() if v.is_floating_point()), "unknown")
    check_finite(state, source)

    model_class = getattr(transformers, head.model_class)
    with torch.device("cpu"):
        model = model_class(config)
    model = model.float()
    expected = model.state_dict()
    shape_errors = [
        f"{k}: checkpoint {tuple(v.shape)} vs config {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if shape_errors:
        raise CheckpointError(f"{source}: weights do not match config.json ({shape_errors[0]}).", "Use the config.json that came with these weights.")
    incompatible = model.load_state_dict({k: v.float() for k, v in state.items() if k in expected}, strict=False)
    missing = [k for k in incompatible.missing_keys if not family.lacks_ok(k)]
    if missing:
        raise CheckpointError(
            f"{source} lacks {len(missing)} tensor(s) its {head.model_class} needs, e.g. {missing[0]}.",
            "The weights do not belong to this architecture; check config.json's 'architectures'.",
        )
    if head.tied_decoder:
        model.tie_weights()
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {params[k].data_ptr() for k in state if k in params}
    untied = [k for k in incompatible.missing_keys if any(part in k for part in family.tied_only) and k in params and params[k].data_ptr() not in loaded]
    if untied:
        raise CheckpointError(
            f"{source} has no {untied[0]}, and its config does not tie it to the embeddings, so that head would be random.",
            "Use the checkpoint's complete weights, or set tie_word_embeddings to true in config.json if the head is the embedding table.",
        )
    model.eval().to(device)

    tok_source = Path(tokenizer).expanduser() if tokenizer else folder
    tok = None
    if has_tokenizer_files(tok_source):
        try:
            tok = AutoTokenizer.from_pretrained(tok_source, trust_remote_code=False)
        except Exception as err:
            raise CheckpointError(
                f"No usable tokenizer in {tok_source} ({type(err).__name__}).",
                "Give the tokenizer folder explicitly (--tokenizer PATH in the CLI, 'Tokenizer folder' in the app).",
            ) from None
    elif tokenizer:
        raise CheckpointError(
            f"The tokenizer folder {tok_source} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}).",
            "Give the folder the models' tokenizer was saved in (e.g. one of the model folders that has tokenizer.json).",
        )
    digest = hashlib.sha256(config_file.read_bytes())
    digest.update(_file_digest(weights_file).encode())
    return Checkpoint(source, folder, family, head, head.model_class, config, model, tok, digest.hexdigest(), stored_dtype)


def has_tokenizer_files(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).is_file() for name in TOKENIZER_FILES)


def _check_tokenizers(a: Checkpoint, b: Checkpoint) -> None:
    """A folder without a tokenizer is named, with the fix, before vocabularies are compared."""
    lacking = [(name, c, other) for name, c, other in (("A", a, b), ("B", b, a)) if c.tokenizer is None]
    if len(lacking) == 2:
        raise CheckpointError(
            f"Neither model's folder has a tokenizer (none of {', '.join(TOKENIZER_FILES)} in {a.path} or {b.path}).",
            "Give the folder of the tokenizer both models were trained with: --tokenizer PATH in the CLI, 'Tokenizer folder' in the app.",
        )
    if lacking:
        name, c, other = lacking[0]
        present = ", ".join(f.name for f in sorted(other.path.glob("tokenizer*")) + sorted(other.path.glob("vocab*")) + sorted(other.path.glob("*.model"))) or "its tokenizer files"
        raise CheckpointError(
            f"Model {name}'s folder {c.path} has no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}, …).",
            f"Copy the tokenizer files of model {'B' if name == 'A' else 'A'}'s folder ({present}) into {c.path}, "
            f"or use that tokenizer for both models (--tokenizer {other.path} in the CLI, 'Tokenizer folder' in the app's sidebar), "
            "if both were trained with it.",
        )


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                f"{source}: tensor {key} holds {bad} NaN or infinite value(s).",
                "The checkpoint is damaged (or training diverged); use another one.",
            )


def validate_pair(a: Checkpoint, b: Checkpoint) -> None:
    """Stop before any work if A and B cannot be aligned; name both values."""

    def differ(what: str, va, vb, fix: str = "Pick two checkpoints of the same architecture.") -> None:
        if va != vb:
            raise IncompatiblePairError(f"The models differ in {what}: A has {va}, B has {vb}.", fix)

    differ("family", a.family.name, b.family.name)
    differ("head", a.architecture, b.architecture)
    differ("number of layers", a.num_layers, b.num_layers)
    differ("hidden size", a.hidden, b.hidden)
    differ("number of attention heads", a.num_heads, b.num_heads)
    differ("FFN size", a.ffn, b.ffn)
    differ("rotary dimensions per head", a.shape.rotary_dims, b.shape.rotary_dims, "Pick two checkpoints with the same rotary fraction (partial_rotary_factor).")
    differ("number of positions", a.shape.positions, b.shape.positions, "Pick two checkpoints with the same maximum sequence length (n_positions).")
    differ("vocabulary size", a.config.vocab_size, b.config.vocab_size)
    if a.head.kind == CLASSIFICATION:
        differ("number of labels", a.config.num_labels, b.config.num_labels, "Both classifiers must be fine-tuned on the same task.")
        names_a = [a.config.id2label[i] for i in range(a.config.num_labels)]
        names_b = [b.config.id2label[i] for i in range(b.config.num_labels)]
        generic = all(n.startswith("LABEL_") for n in names_a + names_b)
        if not generic:
            differ("label names", names_a, names_b, "Both classifiers must be fine-tuned on the same task with the same label order.")
    _check_tokenizers(a, b)
    vocab_a, vocab_b = a.tokenizer.get_vocab(), b.tokenizer.get_vocab()
    if vocab_a != vocab_b:
        only_a = sorted(set(vocab_a) - set(vocab_b))[:3]
        moved = [t for t in vocab_a if t in vocab_b and vocab_a[t] != vocab_b[t]][:3]
        detail = f"tokens only in A: {only_a}" if only_a else f"tokens with other ids: {moved}"
        raise IncompatiblePairError(
            f"The tokenizers differ: A has {len(vocab_a)} entries, B has {len(vocab_b)} ({detail}).",
            "Both models must share one tokenizer vocabulary; pass the same --tokenizer for both only if they were trained with it.",
        )
    sa, sb = a.model.state_dict(), b.model.state_dict()
    for key, value in sa.items():
        if key not in sb:
            raise IncompatiblePairError(f"Tensor {key} exists in A but not in B.", "Pick two checkpoints of the same architecture.")
        differ(f"the shape of {key}", tuple(value.shape), tuple(sb[key].shape))


def bundled_seeds() -> list[Path]:
    """The seed models that ship with permerge, in seed order."""
    if not BUNDLED_MODELS.is_dir():
        return []
    return sorted(p for p in BUNDLED_MODELS.iterdir() if (p / "config.json").exists())


def bundled_classifiers() -> list[Path]:
    """The bundled fine-tuned pair (sequence classifiers on the bundled task), in seed order."""
    if not BUNDLED_CLASSIFIERS.is_dir():
        return []
    return sorted(p for p in BUNDLED_CLASSIFIERS.iterdir() if (p / "config.json").exists())


def bundled_decoders() -> list[Path]:
    """The bundled decoder seed pair (GPT-2), in seed order; empty until it is added."""
    if not BUNDLED_DECODERS.is_dir():
        return []
    return sorted(p for p in BUNDLED_DECODERS.iterdir() if (p / "config.json").exists())


def is_bundled_classifier(path: str | Path) -> bool:
    try:
        return Path(path).resolve().parent == BUNDLED_CLASSIFIERS.resolve()
    except OSError:
        return False


def find_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint folders (config.json plus weights) at most two levels under `root`."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    found = []
    for config in sorted(list(root.glob("config.json")) + list(root.glob("*/config.json")) + list(root.glob("*/*/config.json"))):
        if any((config.parent / w).exists() for w in WEIGHT_FILES):
            found.append(config.parent)
    return found
