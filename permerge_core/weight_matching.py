"""Weight matching: B's units matched to A's from the weights alone, reading no data
(docs/method.md §9).

The data-free method of Ainsworth et al. (2023, "Git Re-Basin") maximises the summed inner
products of the two models' weights over the permutations of B:

    J(π) = Σ_W ⟨W_A, W_B′⟩,   B′ = B with every permutation applied (B′[..i..] = B[..π(i)..]),

W running over every tensor a permutation touches. Which tensors touch which space, and along
which axis, is the family's data (`families/`), read through the same permutation plan
that builds B′ (`permuting.permutation_plan`) and cut into rows by `permuting.touched_units`:
nothing here knows a tensor name, so every family works.

With the other permutations held fixed, J is linear in one space's permutation π_s:
J = Σ_i S[i, π_s(i)] + const, where S = Σ_t A_t B̃_tᵀ over the touches t of s, A_t holds A's
rows of the touched units and B̃_t B's, every *other* axis of the tensor already permuted by its
current permutation. One step is then one exact linear assignment (`assignment.assign`).
Coordinate descent visits the permuted spaces in a seeded random order, sweep after sweep, and
stops when a whole sweep changes nothing or after MAX_SWEEPS sweeps.

A tensor touched twice by one space (BERT's MLM head transform maps the residual stream to
itself) makes J quadratic in that permutation; its step holds the permutation on the other axis
at its current value, as Ainsworth et al. do, so such a step can lower J slightly. J is recorded
after every sweep.

What is permuted, and how, is each mode's own (`modes.py`), exactly as for activation matching;
every step calls the mode's solver on S:
- FFN spaces when `ffn` is on, by one assignment;
- attention spaces unless the mode's move is the identity. Head-Perm (`heads`): an inner
  assignment for every (A head, B head) block of S and an outer H×H assignment on the blocks'
  optima (`matching.solve_heads`), the exact maximum of J over permutations that keep heads
  whole; `monotonic` keeps head j ↔ head j; `ignore-heads` assigns S whole;
- the residual stream by the mode's move: `first`, `last` and `all` (one shared permutation)
  differ only in which activations they read, so for weights all three are one permutation over
  every residual touch; `sep` (a permutation per node) gives each node its own (not
  function-preserving); `none` leaves it.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from . import spaces as sp
from .matching import HeadMatching, Matching, identity, merge_settings
from .modes import RESIDUAL, Problem, refuse_moving_fixed, solvers
from .permuting import permutation_plan, reindex, touched_units, touches_by_tensor
from .settings import WEIGHTS

MAX_SWEEPS = 50  # a sweep visits every permuted space once; real pairs settle in a handful

ProgressFn = Callable[[str, float, str], None]


class WeightObjective:
    """J for one pair, and its linearisation in any one space (`similarity`).

    Spaces are named as in a Matching (spaces.py): every layer's, and the stream's one
    permutation (or each residual node's, when `per_node`)."""

    def __init__(self, model_a: torch.nn.Module, model_b: torch.nn.Module, family, head, num_layers: int, per_node: bool = False):
        labels = {sp.name_of(kind, i): sp.name_of(kind, i) for i in range(num_layers) for kind in sp.LAYER_KINDS}
        node_label = sp.node if per_node else (lambda n: sp.STREAM)
        plan = permutation_plan(family, head, num_layers, labels, node_label)
        state_a, state_b = model_a.state_dict(), model_b.state_dict()
        touches: dict[str, list] = {}
        for touch, space in plan:
            if touch.name not in state_b:
                if touch.optional:
                    continue
                raise KeyError(f"tensor {touch.name} is not in the model")
            touches.setdefault(touch.name, []).append((touch, space))
        # A tied tensor (the MLM decoder is the word-embedding matrix) counts once: under its
        # last name in state-dict order, whose permutation is the one B′ keeps (interpolation.py).
        # Tied in one end only, it is two tensors of the working model, and counts twice.
        owner = {}
        for name in state_b:
            if name in touches:
                owner[(state_a[name].data_ptr(), state_b[name].data_ptr(), tuple(state_b[name].shape))] = name
        self.tensors = {name: (state_a[name].detach(), state_b[name].detach(), touches[name]) for name in owner.values()}
        self.by_space: dict[str, list] = {}
        for name, (_, _, ts) in self.tensors.items():
            for touch, space in ts:
                self.by_space.setdefault(space, []).append((name, touch))
        self.device = next(iter(self.tensors.values()))[1].device if self.tensors else torch.device("cpu")
        self.dims = {space: touched_units(_block(self.tensors[name][0], touch), touch).shape[0] for space, ((name, touch), *_) in self.by_space.items()}

    def identity(self) -> dict[str, np.ndarray]:
        return {space: identity(dim) for space, dim in self.dims.items()}

    def similarity(self, space: str, perms: dict[str, np.ndarray]) -> np.ndarray:
        """S [d, d], float64: S[i, j] = Σ over the space's touches of ⟨A's unit i, B's unit j⟩,
        with every other permuted axis of those tensors at its current permutation."""
        index = _indices(perms, self.device)
        total = None
        for name, touch in self.by_space[space]:
            a, b, ts = self.tensors[name]
            others = [(t, index[s]) for t, s in ts if t.axis != touch.axis]
            if others:
                b = reindex(b, touches_by_tensor({name: b}, others)[name])
            product = touched_units(_block(a, touch), touch) @ touched_units(_block(b, touch), touch).T  # float32 products,
            total = product.double() if total is None else total.add_(product)  # summed in float64
        return total.cpu().numpy()

    def value(self, perms: dict[str, np.ndarray]) -> float:
        """J: Σ_W ⟨W_A, W_B′⟩ over every touched tensor (tied ones once)."""
        index = _indices(perms, self.device)
        total = 0.0
        for name, (a, b, ts) in self.tensors.items():
            b_prime = reindex(b, touches_by_tensor({name: b}, [(t, index[s]) for t, s in ts])[name])
            total += float(torch.sum(a * b_prime, dtype=torch.float64))
        return total


def _block(tensor: torch.Tensor, touch) -> torch.Tensor:
    """The part of `tensor` a touch permutes: all of it, or its part's rows along its axis (the
    q, k or v rows of a fused attention tensor), in the order of the space's units."""
    if touch.part is None:
        return tensor
    rows = torch.as_tensor(touch.part.indices(tensor.shape[touch.axis]), device=tensor.device)
    return tensor.index_select(touch.axis, rows)


def _indices(perms: dict[str, np.ndarray], device) -> dict[str, torch.Tensor]:
    return {space: torch.as_tensor(perm, dtype=torch.long, device=device) for space, perm in perms.items()}


def match_weights(
    model_a: torch.nn.Module,
    model_b: torch.nn.Module,
    family,
    head,
    spaces: dict[str, sp.Space],
    settings,
    seed: int = 0,
    max_sweeps: int = MAX_SWEEPS,
    progress: ProgressFn | None = None,
) -> Matching:
    """The weight matching of B to A under `settings`' modes (see the module docstring), as a
    Matching in the usual convention: perm[i] = j, A's unit i ↔ B's unit j. Each space is
    solved by its mode's own solver (modes.py), on the weights' similarity."""
    refuse_moving_fixed(settings.attention, spaces, family.name)
    started = time.perf_counter()
    layers = [s for s in spaces.values() if s.kind != sp.RESIDUAL]
    problem = WeightObjective(model_a, model_b, family, head, sp.num_layers(spaces),
                              per_node=RESIDUAL[settings.residual].move == sp.PER_NODE)
    moved = solvers(spaces, settings)

    rng = np.random.default_rng(seed)
    perms = problem.identity()
    heads: dict[int, HeadMatching] = {}
    residual_score = None
    objective = [problem.value(perms)]
    converged = not moved
    sweeps = 0
    while not converged and sweeps < max_sweeps:
        sweeps += 1
        changed = False
        for name in rng.permutation(list(moved)):
            space, solve = moved[name]
            score = problem.similarity(name, perms)
            found = solve(Problem(space, lambda: score))
            if found.heads is not None:
                heads[space.layer] = found.heads
            if name == sp.STREAM:
                residual_score = score
            if not np.array_equal(found.perm, perms[name]):
                perms[name], changed = found.perm, True
        objective.append(problem.value(perms))
        converged = not changed
        if progress:
            progress("matching", sweeps / max_sweeps, f"weights: sweep {sweeps}, objective {objective[-1]:.6g}")

    permutations = {s.name: perms[s.name] for s in layers}
    permutations.update({name: perms[name] for name in sp.depth_order(n for n in perms if sp.parse(n).kind == sp.RESIDUAL)})
    info = {
        "matcher": WEIGHTS, "sweeps": sweeps, "objective": objective, "converged": converged, "max_sweeps": max_sweeps,
        "seed": seed, "seconds": time.perf_counter() - started,
    }
    return Matching(permutations, heads, {**merge_settings(settings), "absolute": False}, residual_score, info)
