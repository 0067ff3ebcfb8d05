"""From correlation matrices to permutations (docs/method.md §4).

Convention everywhere: `perm[i] = j` means A's unit i is matched with B's unit j, so the
aligned B′ is B reindexed by perm (B′[i] = B[perm[i]]). Every assignment maximises the sum of
matched correlations; correlations are signed by default (a permutation cannot flip a sign).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import spaces as sp
from .modes import RESIDUAL, Problem, Solution, is_function_preserving, refuse_moving_fixed, solvers
from .settings import ACTIVATIONS

__all__ = ["HeadMatching", "Matching", "compute_matching", "is_function_preserving"]


def identity(dim: int) -> np.ndarray:
    return np.arange(dim, dtype=np.int64)


@dataclass
class HeadMatching:
    """Head-Perm for one layer: what the Heads page draws."""

    cost: np.ndarray  # [H, H], cost[j, k] = Σ matched corr of inner assignment (A head j, B head k)
    assignment: np.ndarray  # [H], assignment[j] = k: A's head j ↔ B's head k
    inner: np.ndarray  # [H, H, d_k], inner[j, k] = perm within the (j, k) block
    perm: np.ndarray  # [H·d_k], the full feature permutation that was applied
    head_perm_assignment: np.ndarray  # what Head-Perm would choose (differs from `assignment` for monotonic)


def solve_heads(corr: np.ndarray, num_heads: int, fixed: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Head-Perm's assignments, whatever the mode: (cost [H, H], inner [H, H, d_k], head_perm [H]).

    `fixed` are positions inside a head that must stay where they are (spaces.Space.fixed):
    the inner assignment moves only the others, while the cost of a head pair still sums the
    matched correlation of every position, fixed ones included (they too say which heads match)."""
    from .assignment import assign

    dim = corr.shape[0]
    if dim % num_heads:
        raise ValueError(f"{dim} features do not split into {num_heads} heads")
    dk = dim // num_heads
    movable = np.setdiff1d(np.arange(dk), np.asarray(fixed, dtype=np.int64))
    blocks = corr.reshape(num_heads, dk, num_heads, dk).transpose(0, 2, 1, 3)  # [j, k, a, b]
    cost = np.empty((num_heads, num_heads))
    inner = np.empty((num_heads, num_heads, dk), dtype=np.int64)
    for j in range(num_heads):
        for k in range(num_heads):
            if len(movable) == dk:
                p = assign(blocks[j, k])
            else:
                p = np.arange(dk)
                if len(movable):
                    p[movable] = movable[assign(blocks[j, k][np.ix_(movable, movable)])]
            inner[j, k] = p
            cost[j, k] = blocks[j, k][np.arange(dk), p].sum()
    return cost, inner, assign(cost)


def heads_for_mode(solved: tuple[np.ndarray, np.ndarray, np.ndarray], match_heads: bool) -> HeadMatching:
    """The HeadMatching a mode applies: Head-Perm's outer assignment (`match_heads`), or head
    j ↔ head j with features matched inside each head (monotonic)."""
    cost, inner, head_perm = solved
    num_heads, dk = inner.shape[0], inner.shape[2]
    chosen = head_perm if match_heads else identity(num_heads)
    perm = np.concatenate([chosen[j] * dk + inner[j, chosen[j]] for j in range(num_heads)])
    return HeadMatching(cost, chosen, inner, perm, head_perm)


def match_heads(corr: np.ndarray, num_heads: int) -> HeadMatching:
    """Head-Perm on one attention correlation: inner assignment per head pair, outer on the H×H cost."""
    return heads_for_mode(solve_heads(corr, num_heads), match_heads=True)


@dataclass
class Matching:
    """Permutations for every space, plus what the app needs to explain them."""

    permutations: dict[str, np.ndarray]  # by space name (spaces.py): every layer's, and the stream's or each node's
    heads: dict[int, HeadMatching]
    settings: dict
    residual_score: np.ndarray | None = None  # the matrix the residual assignment used
    info: dict = field(default_factory=dict)  # how it was found: matcher, sweeps, objective, seconds (JSON-able)

    @property
    def function_preserving(self) -> bool:
        return is_function_preserving(self.settings["attention"], self.settings["residual"])

    def as_lists(self) -> dict:
        """Its permutations, head assignments and head costs as JSON-able lists, as report.json
        and the permutations export write them."""
        return {
            "permutations": {k: [int(x) for x in v] for k, v in self.permutations.items()},
            "head_assignment": {sp.layer_name(i): [int(x) for x in h.assignment] for i, h in self.heads.items()},
            "head_cost": {sp.layer_name(i): np.asarray(h.cost).tolist() for i, h in self.heads.items()},
        }

    def residual_perm(self, node: int) -> np.ndarray:
        return self.permutations.get(sp.node(node), self.permutations.get(sp.STREAM))


def merge_settings(settings) -> dict:
    """The merge settings a Matching records (what its permutations depend on besides the data):
    every merge setting but the matcher, which `Matching.info` names."""
    return {k: v for k, v in settings.merge_fields().items() if k != "matcher"}


def _score(corr: torch.Tensor, absolute: bool) -> np.ndarray:
    c = corr.abs() if absolute else corr
    return c.cpu().numpy()


def compute_matching(stats, spaces: dict[str, sp.Space], settings, family: str = "this model") -> Matching:
    """Every permutation `settings` asks for (its ffn, attention, residual and absolute fields),
    solved on the activation correlations of `stats` by each mode's own solver (modes.py);
    identity where a component is off. `spaces` are the model's (Checkpoint.spaces): they carry
    each space's heads, fixed positions and what it admits; a mode that would move fixed
    positions is refused, naming `family`."""
    refuse_moving_fixed(settings.attention, spaces, family)
    residual, absolute = RESIDUAL[settings.residual], settings.absolute
    if residual.move not in (sp.IDENTITY, sp.PER_NODE) and residual.score is None:
        raise ValueError(f"residual mode {residual.name!r} makes one permutation for the stream but names no correlation to solve it on")
    # Every assignment is a pure function of the statistics and the merge settings other than
    # the modes (the modes' solvers name what they compute in their memo keys), so it is
    # remembered per Statistics object: a change of mode re-solves only what it changes. The
    # independent ones run in parallel: scipy's solver releases the GIL.
    memo = stats.__dict__.setdefault("_assignments", {})
    solver_settings = tuple((k, v) for k, v in merge_settings(settings).items() if k not in ("ffn", "attention", "residual"))

    def problem(name: str, space: sp.Space) -> Problem:
        return Problem(space, lambda: _score(stats.spaces[name].correlation(), absolute),
                       cached=lambda key, compute: _remember(memo, (key, name, solver_settings), compute))

    jobs: dict[str, Callable[[], Solution]] = {}
    for name, (space, solve) in solvers(spaces, settings).items():
        if name == sp.STREAM:  # one permutation for the stream, solved on the mode's correlation
            def solve_stream(space=space, solve=solve) -> tuple[np.ndarray, Solution]:
                score = _score(residual.score(stats), absolute)
                return score, solve(Problem(space, lambda: score))

            jobs[name] = lambda: _remember(memo, ("residual", settings.residual, solver_settings), solve_stream)[1]
        else:
            jobs[name] = lambda p=problem(name, space), solve=solve: solve(p)
    solved = _solve(jobs)

    # Every layer's space (identity where nothing moved it), then the stream or its nodes.
    perms = {name: solved[name].perm.copy() if name in solved else identity(space.width)
             for name, space in spaces.items() if space.kind != sp.RESIDUAL}
    perms.update({name: found.perm.copy() for name, found in solved.items() if sp.parse(name).kind == sp.RESIDUAL})
    if residual.move == sp.IDENTITY:
        perms[sp.STREAM] = identity(sp.stream(spaces).width)
    heads = {spaces[name].layer: found.heads for name, found in solved.items() if found.heads is not None}
    score = memo[("residual", settings.residual, solver_settings)][0] if sp.STREAM in solved else None
    return Matching(perms, heads, merge_settings(settings), score, {"matcher": ACTIVATIONS})


def _remember(memo: dict, key: tuple, compute: Callable[[], object]):
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def _solve(jobs: dict[str, Callable[[], object]]) -> dict[str, object]:
    """Run the jobs, as many at once as torch may use threads."""
    workers = min(len(jobs), max(1, torch.get_num_threads()))
    if workers <= 1:
        return {key: fn() for key, fn in jobs.items()}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {key: pool.submit(fn) for key, fn in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


def summarise(values: np.ndarray) -> dict:
    return {
        "mean": float(np.mean(values)),
        "median": float(np.median(values)),
        "p10": float(np.percentile(values, 10)),
        "p90": float(np.percentile(values, 90)),
    }


def matched_statistics(stats, matching: Matching) -> dict[str, dict]:
    """Mean/median matched correlation per space, before (identity) and after alignment."""
    def before_after(space, perm) -> dict:  # only the d matched entries, not the d×d matrix
        sums = stats.spaces[space]
        idx = np.arange(sums.dim)
        return {
            "before": summarise(sums.correlation_at(idx, idx).numpy()),
            "after": summarise(sums.correlation_at(idx, perm).numpy()),
        }

    out = {}
    for i in range(stats.num_layers):
        for kind in sp.LAYER_KINDS:
            name = sp.name_of(kind, i)
            out[name] = before_after(name, matching.permutations[name])
    for n, node in enumerate(stats.residual_nodes()):
        out[node] = before_after(node, matching.residual_perm(n))
    return out
