"""A disk cache for statistics, matchings and curves that is never trusted blindly.

Keys are hashes of everything a result depends on: the *content* of both checkpoints (not
their paths), the data, and the settings. Each entry stores its own key fields and a format
version; an entry that is unreadable, truncated, from another format or for other inputs is
ignored and recomputed. Writes go to a temporary file that is renamed into place, so a crash
or two concurrent writers never leave a half-written entry behind.

A cache folder that cannot be created or written (a path below a file, a read-only disk, a
full one) never stops a run: the cache turns itself off with one warning saying why, and the
run goes on computing everything in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

FORMAT_VERSION = 3


def default_cache_dir() -> Path:
    return Path(os.environ.get("PERMERGE_CACHE", Path.home() / ".cache" / "permerge")).expanduser()


def key_of(kind: str, fields: dict) -> str:
    blob = json.dumps({"kind": kind, "format": FORMAT_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class DiskCache:
    def __init__(self, root: str | Path | None):
        self.root = Path(root).expanduser() if root else None
        self.events: list[str] = []  # what happened, for the report's notes and tests
        self.warning: str | None = None  # why the cache is off, when it turned itself off
        if self.root is not None:
            try:  # find out now, not after the first expensive stage
                self.root.mkdir(parents=True, exist_ok=True)
                fd, probe = tempfile.mkstemp(prefix=".permerge-probe-", dir=self.root)
                os.close(fd)
                os.unlink(probe)
            except OSError as err:
                self._turn_off(err)

    def _turn_off(self, err: OSError) -> None:
        """Stop using the disk (once, with one warning); the run goes on without it."""
        if self.root is None:
            return
        reason = err.strerror or type(err).__name__
        self.warning = (
            f"disk cache off: the cache folder {self.root} cannot be used ({reason}), so nothing is cached between runs. "
            "Fix: set PERMERGE_CACHE (or --cache-dir) to a folder you can write to, or pass --no-cache."
        )
        self.events.append(self.warning)
        self.root = None

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def has(self, kind: str, fields: dict, suffix: str) -> bool:
        """Whether an entry exists (without reading or validating it)."""
        return self.enabled and self._path(kind, fields, suffix).exists()

    def _path(self, kind: str, fields: dict, suffix: str) -> Path:
        return self.root / f"{kind}-{key_of(kind, fields)}{suffix}"

    def _write_atomic(self, path: Path, write) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as err:  # the folder went away or became read-only since the start
            self._turn_off(err)
            return
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, path)
        except OSError as err:  # a full disk, say: the result is still good, only not kept
            self._turn_off(err)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def load_tensors(self, kind: str, fields: dict) -> tuple[dict[str, torch.Tensor], dict] | None:
        """(tensors, metadata) if a valid entry for exactly these fields exists, else None."""
        if not self.enabled:
            return None
        path = self._path(kind, fields, ".safetensors")
        if not path.exists():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = json.loads(handle.metadata()["permerge"])
                if meta.get("format") != FORMAT_VERSION or meta.get("fields") != json.loads(json.dumps(fields, default=str)):
                    raise ValueError("entry is for other inputs or an older format")
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        except Exception as err:  # any damage means: recompute
            self.events.append(f"ignored unusable cache entry {path.name} ({type(err).__name__}); recomputing")
            return None
        self.events.append(f"reused cached {kind}")
        return tensors, meta

    def save_tensors(self, kind: str, fields: dict, tensors: dict[str, torch.Tensor], extra: dict | None = None) -> None:
        if not self.enabled:
            return
        from safetensors.torch import save_file

        meta = {"format": FORMAT_VERSION, "fields": json.loads(json.dumps(fields, default=str)), **(extra or {})}
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
        self._write_atomic(
            self._path(kind, fields, ".safetensors"),
            lambda tmp: save_file(tensors, tmp, metadata={"permerge": json.dumps(meta)}),
        )

    def load_json(self, kind: str, fields: dict) -> dict | None:
        if not self.enabled:
            return None
        path = self._path(kind, fields, ".json")
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text())
            if entry.get("format") != FORMAT_VERSION or entry.get("fields") != json.loads(json.dumps(fields, default=str)):
                raise ValueError("entry is for other inputs or an older format")
            return entry["value"]
        except Exception as err:
            self.events.append(f"ignored unusable cache entry {path.name} ({type(err).__name__}); recomputing")
            return None

    def save_json(self, kind: str, fields: dict, value) -> None:
        if not self.enabled:
            return
        entry = {"format": FORMAT_VERSION, "fields": json.loads(json.dumps(fields, default=str)), "value": value}
        self._write_atomic(self._path(kind, fields, ".json"), lambda tmp: Path(tmp).write_text(json.dumps(entry)))
