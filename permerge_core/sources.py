"""Checkpoint sources (a folder, a file or a hub id) as the grid and the app name and key them."""

from __future__ import annotations

from pathlib import Path


def source_signature(source: str | None) -> str:
    """A string that changes whenever a local checkpoint folder's (or file's) content may
    have changed: names, sizes and modification times. A hub id is its own signature.
    Keys the app's caches and a grid's cells, so a model re-saved under the same path is
    never served stale."""
    if not source:
        return ""
    path = Path(source).expanduser()
    if path.is_file():
        st = path.stat()
        return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    if not path.is_dir():
        return str(source)
    parts = [str(path.resolve())]
    for f in sorted(path.iterdir()):
        if f.is_file():
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def short_names(sources: list[str]) -> list[str]:
    """Shortest unique names for checkpoints: the last path part, with as many parent parts
    as it takes to tell equal names apart ('seed-0', or 'runs/a/model' vs 'runs/b/model')."""
    parts = [Path(str(src).rstrip("/")).parts or (str(src),) for src in sources]
    depth = [1] * len(parts)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clashes = {n for n in names if names.count(n) > 1}
        grow = [i for i, n in enumerate(names) if n in clashes and depth[i] < len(parts[i])]
        if not grow:
            return names
        for i in grow:
            depth[i] += 1


def pair_label(a: str, b: str) -> str:
    """'A ↔ B' for titles and the status line, naming the set where both checkpoints sit in one
    folder and their own names do not say it ('seed-0 ↔ seed-1 (decoders)', so the bundled
    encoder and decoder pairs are told apart)."""
    name_a, name_b = short_names([a, b])
    parent_a, parent_b = Path(str(a).rstrip("/")).parent, Path(str(b).rstrip("/")).parent
    shared = parent_a == parent_b and parent_a.name and "/" not in name_a + name_b
    return f"{name_a} ↔ {name_b}" + (f" ({parent_a.name})" if shared else "")
