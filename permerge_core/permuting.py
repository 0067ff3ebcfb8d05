"""Applying permutations to B (docs/method.md §5), driven entirely by the family's data.

`permutation_plan` turns a Matching into a list of (tensor name, axis, permutation);
`permute_state_dict` applies it with one generic loop. A tensor touched on two axes (a
Linear between two permuted spaces) gets both, which commute. Touches of parts of one axis (the
q, k and v rows of a fused projection, `Part`) make one index for that axis, each part's rows
reindexed among themselves.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch

from . import spaces as sp
from .families import expand
from .families.schema import BASE, Family, Head, Touch


def _prefix(family: Family, head: Head) -> str:
    return "" if head.kind == BASE else family.base_prefix


def permutation_plan(family: Family, head: Head, num_layers: int, perms: dict[str, np.ndarray], residual_for_node) -> list[tuple[Touch, np.ndarray]]:
    """Every (tensor, axis) to permute, with its permutation; names are absolute."""
    prefix = _prefix(family, head)
    enc = family.encoder
    plan: list[tuple[Touch, np.ndarray]] = []

    def add(touches, perm, relative=True):
        for t in touches:
            name = prefix + t.name if relative else t.name
            plan.append((replace(t, name=name), perm))

    for i in range(num_layers):
        add(expand(enc.ffn, i), perms[sp.ffn(i)])
        add(expand(enc.attention, i), perms[sp.attention(i)])
    for t in expand(enc.embeddings + enc.final, None):
        add([t], residual_for_node(family.residual_node(t.node, None, num_layers)))
    for i in range(num_layers):
        for t in expand(enc.residual_per_layer, i):
            add([t], residual_for_node(family.residual_node(t.node, i, num_layers)))
    for t in head.residual:
        add([t], residual_for_node(family.residual_node(t.node, None, num_layers)), relative=False)
    seen: dict[tuple[str, int], set] = {}
    for t, _ in plan:
        parts = seen.setdefault((t.name, t.axis), set())
        if t.part in parts or (parts and (t.part is None or None in parts)):
            raise ValueError(f"family {family.name} touches {t.name} axis {t.axis} twice")
        parts.add(t.part)
    return plan


def touches_by_tensor(state: dict[str, torch.Tensor], plan) -> dict[str, list[tuple[int, torch.Tensor]]]:
    """Tensor name → [(axis, index)] for every planned tensor of `state`, in the plan's order
    (optional tensors the model lacks are skipped). A touch of a part of an axis sets the
    part's rows of the axis's index, reindexed among themselves (the other rows stay put)."""
    indices: dict[str, dict[int, torch.Tensor]] = {}
    for touch, perm in plan:
        if touch.name not in state:
            if touch.optional:
                continue
            raise KeyError(f"tensor {touch.name} is not in the model")
        tensor = state[touch.name]
        perm = torch.as_tensor(perm, dtype=torch.long, device=tensor.device)
        by_axis = indices.setdefault(touch.name, {})
        if touch.part is None:
            by_axis[touch.axis] = perm
            continue
        length = tensor.shape[touch.axis]
        rows = torch.as_tensor(touch.part.indices(length), device=tensor.device)
        if len(rows) != len(perm):
            raise ValueError(f"{touch.name} axis {touch.axis}: {touch.part} has {len(rows)} rows, the permutation {len(perm)}")
        index = by_axis.setdefault(touch.axis, torch.arange(length, device=tensor.device))
        index[rows] = rows[perm]
    return {name: list(by_axis.items()) for name, by_axis in indices.items()}


def reindex(tensor: torch.Tensor, touches, out: torch.Tensor | None = None) -> torch.Tensor:
    """new[..i..] = tensor[..index[i]..] on every (axis, index) of `touches` (the axes commute),
    written into `out` when given."""
    *first, (axis, index) = touches
    for ax, ix in first:
        tensor = tensor.index_select(ax, ix)
    return torch.index_select(tensor, axis, index, out=out) if out is not None else tensor.index_select(axis, index)


def touched_units(tensor: torch.Tensor, touch: Touch) -> torch.Tensor:
    """The units of `tensor` that `touch` permutes, as a matrix [units, everything else]: the
    touched axis first, every other axis flattened (a bias or a LayerNorm vector is one
    column). Row i is what moves when the touch's permutation moves unit i; weight matching
    (`weight_matching.py`) compares A's and B's rows."""
    return tensor.movedim(touch.axis, 0).reshape(tensor.shape[touch.axis], -1)


def permuted_tensors(state: dict[str, torch.Tensor], plan):
    """(name, reindexed tensor) for every planned tensor, one at a time, in the state's order:
    new[..i..] = old[..perm[i]..] on every planned axis."""
    touches = touches_by_tensor(state, plan)
    for name, tensor in state.items():
        if name in touches:
            yield name, reindex(tensor, touches[name])


def permute_state_dict(state: dict[str, torch.Tensor], plan) -> dict[str, torch.Tensor]:
    """A new state dict with every planned tensor reindexed: new[..i..] = old[..perm[i]..]."""
    out = dict(state)
    out.update(permuted_tensors(state, plan))
    return out


def inverse(perm: np.ndarray) -> np.ndarray:
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm))
    return inv


def plan_for_matching(family: Family, head: Head, num_layers: int, matching) -> list:
    return permutation_plan(family, head, num_layers, matching.permutations, matching.residual_perm)


def permuted_model(model: torch.nn.Module, family: Family, head: Head, num_layers: int, matching) -> torch.nn.Module:
    """B′: a copy of B with the matching's permutations applied (B itself is untouched)."""
    plan = plan_for_matching(family, head, num_layers, matching)
    clone = copy.deepcopy(model)
    target = clone.state_dict()
    # One permuted tensor at a time, copied into the clone in state-dict order (as
    # load_state_dict would), so B′ costs one model, not a permuted state dict on top of it.
    with torch.no_grad():
        for name, tensor in permuted_tensors(model.state_dict(), plan):
            target[name].copy_(tensor)
    return clone
