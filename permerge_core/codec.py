"""How the statistics and matching stages are stored in the disk cache (`cache.py`): as
named tensors plus a small JSON header, and back. Decoding checks what it reads, so a damaged
or foreign entry is refused (ValueError) and the stage is recomputed, never trusted."""

from __future__ import annotations

import numpy as np
import torch

from .matching import HeadMatching, Matching
from .statistics import SpaceStats, Statistics

HEAD_PARTS = ("cost", "assignment", "inner", "perm", "head_perm_assignment")


def encode_statistics(stats: Statistics) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {f"{name}/{part}": getattr(sp, part) for name, sp in stats.spaces.items() for part in SpaceStats.PARTS}
    counts = {name: sp.n for name, sp in stats.spaces.items()}
    return tensors, {"counts": counts, "num_tokens": stats.num_tokens, "notes": stats.notes}


def decode_statistics(tensors: dict, meta: dict, num_layers: int, dims: dict[str, int]) -> Statistics:
    """Statistics from a cache entry; `dims` is every space the model has, with its width."""
    spaces = {name: SpaceStats(n, *(tensors[f"{name}/{p}"] for p in SpaceStats.PARTS)) for name, n in meta["counts"].items()}
    if {name: sp.dim for name, sp in spaces.items()} != dims:
        raise ValueError("wrong set of spaces")
    return Statistics(spaces, num_layers, meta["num_tokens"], meta.get("notes", []))


def encode_matching(m: Matching) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {f"perm/{k}": torch.as_tensor(v) for k, v in m.permutations.items()}
    for layer, h in m.heads.items():
        for part in HEAD_PARTS:
            tensors[f"heads/{layer}/{part}"] = torch.as_tensor(np.ascontiguousarray(getattr(h, part)))
    if m.residual_score is not None:
        tensors["residual_score"] = torch.as_tensor(m.residual_score)
    return tensors, {"settings": m.settings, "info": m.info}


def decode_matching(tensors: dict, meta: dict) -> Matching:
    perms = {k[5:]: v.numpy() for k, v in tensors.items() if k.startswith("perm/")}
    heads = {}
    for layer in {int(k.split("/")[1]) for k in tensors if k.startswith("heads/")}:
        heads[layer] = HeadMatching(*(tensors[f"heads/{layer}/{p}"].numpy() for p in HEAD_PARTS))
    for name, perm in perms.items():  # a permutation must be one
        if not np.array_equal(np.sort(perm), np.arange(len(perm))):
            raise ValueError(f"{name} is not a permutation")
    score = tensors["residual_score"].numpy() if "residual_score" in tensors else None
    return Matching(perms, heads, meta["settings"], score, meta.get("info", {}))
