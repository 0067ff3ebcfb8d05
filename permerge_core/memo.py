"""Every stage's results, kept once: in memory, on disk where worth it, one computation at a time.

A stage names its result by a kind ("stats", "curve", …) and the fields it depends on (the
pipeline's `*_fields`, which are also the disk cache's keys). `Memo.get` returns the result
held in memory for that key, else the one on disk (for a stage given a `Store`), else computes
it and keeps it in both. Every stage runs under one re-entrant lock: two app sessions sharing a
pipeline never compute a stage twice or drive its one working model at once, and a stage may
call another inside it. `state` says where a stage stands without computing anything, from the
same keys: computed (in memory), cached (on disk), stale (computed, but only for other
fields) or missing.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, Callable

from .cache import DiskCache


@dataclass(frozen=True)
class Store:
    """How one kind of result is kept on disk: the entry's suffix, how to write a value, and how
    to read it back (None when there is no usable entry)."""

    suffix: str
    save: Callable[[DiskCache, str, dict, Any], None]
    load: Callable[[DiskCache, str, dict], Any]


JSON = Store(".json", lambda disk, kind, fields, value: disk.save_json(kind, fields, value),
             lambda disk, kind, fields: disk.load_json(kind, fields))


def tensors(encode: Callable, decode: Callable, damaged: str) -> Store:
    """A result kept as named tensors (`codec.py`): `encode(value)` gives (tensors, metadata) and
    `decode(tensors, metadata)` the value back. An entry `decode` refuses is recomputed, with
    the note `damaged` in the cache's events (and so in the report's notes)."""

    def load(disk: DiskCache, kind: str, fields: dict):
        entry = disk.load_tensors(kind, fields)
        if entry is None:
            return None
        try:
            return decode(*entry)
        except Exception:
            disk.events.append(damaged)
            return None

    return Store(".safetensors", lambda disk, kind, fields, value: disk.save_tensors(kind, fields, *encode(value)), load)


class Memo:
    """Results by (kind, fields), in memory and, through a `Store`, in `disk`."""

    def __init__(self, disk: DiskCache):
        self.disk = disk
        self.lock = threading.RLock()
        self._held: dict[tuple[str, str], Any] = {}

    @staticmethod
    def key(kind: str, fields: dict) -> tuple[str, str]:
        return kind, json.dumps(fields, sort_keys=True)

    def _lookup(self, kind: str, fields: dict, store: Store | None) -> tuple[Any, bool]:
        """(value or None, whether it was read from disk just now)."""
        key = self.key(kind, fields)
        if key in self._held:
            return self._held[key], False
        value = store.load(self.disk, kind, fields) if store is not None else None
        if value is not None:
            self._held[key] = value
        return value, value is not None

    def find(self, kind: str, fields: dict, store: Store | None = None):
        """The result if it is in memory or (with `store`) on disk, else None; computes nothing."""
        with self.lock:
            return self._lookup(kind, fields, store)[0]

    def put(self, kind: str, fields: dict, value, store: Store | None = None):
        """Keep `value` in memory and (with `store`) on disk; returns it."""
        with self.lock:
            self._held[self.key(kind, fields)] = value
            if store is not None:
                store.save(self.disk, kind, fields, value)
        return value

    def get(self, kind: str, fields: dict, compute: Callable[[], Any], store: Store | None = None,
            loaded: Callable[[Any], None] | None = None):
        """The result from memory, else from disk (then `loaded(value)` runs: a stage says it
        found it), else `compute()`, kept by `put`. The lock is held throughout."""
        with self.lock:
            value, from_disk = self._lookup(kind, fields, store)
            if value is None:
                return self.put(kind, fields, compute(), store)
            if from_disk and loaded is not None:
                loaded(value)
            return value

    def forget(self, kind: str, fields: dict | None = None) -> None:
        """Drop results of `kind` from memory (all of them, or the one for `fields`); the disk keeps its entries."""
        with self.lock:
            for key in [k for k in self._held if k[0] == kind and (fields is None or k == self.key(kind, fields))]:
                del self._held[key]

    def state(self, kind: str, fields: dict, store: Store | None = None, same: tuple[str, ...] = ()) -> str:
        """'computed' (in memory), 'cached' (on disk), 'stale' (a result of this kind is in
        memory whose fields named in `same` are these fields' values: computed for other
        settings) or 'missing'."""
        key = self.key(kind, fields)
        with self.lock:
            held = list(self._held)
        if key in held:
            return "computed"
        if store is not None and self.disk.has(kind, fields, store.suffix):
            return "cached"
        if any(k == kind and all(json.loads(f).get(x) == fields.get(x) for x in same) for k, f in held):
            return "stale"
        return "missing"
