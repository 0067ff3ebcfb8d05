"""From correlation matrices to permutations (docs/method.md §4).

Convention everywhere: `perm[i] = j` means A's unit i is matched with B's unit j, so the
aligned B′ is B reindexed by perm (B′[i] = B[perm[i]]). Every assignment maximises the sum of
matched correlations; correlations are signed by default (a permutation cannot flip a sign).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from .assignment import assign
from .modes import (
    ATTENTION, ATTENTION_MODES, HEADS_IGNORE, HEADS_KEEP, HEADS_MATCH, RESIDUAL, RESIDUAL_AVERAGE, RESIDUAL_EACH,
    RESIDUAL_FIRST, RESIDUAL_LAST, RESIDUAL_MODES, RESIDUAL_NONE, is_function_preserving,
)

__all__ = ["ATTENTION_MODES", "RESIDUAL_MODES", "HeadMatching", "Matching", "compute_matching", "is_function_preserving"]


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


def solve_heads(corr: np.ndarray, num_heads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Head-Perm's assignments, whatever the mode: (cost [H, H], inner [H, H, d_k], head_perm [H])."""
    dim = corr.shape[0]
    if dim % num_heads:
        raise ValueError(f"{dim} features do not split into {num_heads} heads")
    dk = dim // num_heads
    blocks = corr.reshape(num_heads, dk, num_heads, dk).transpose(0, 2, 1, 3)  # [j, k, a, b]
    cost = np.empty((num_heads, num_heads))
    inner = np.empty((num_heads, num_heads, dk), dtype=np.int64)
    for j in range(num_heads):
        for k in range(num_heads):
            p = assign(blocks[j, k])
            inner[j, k] = p
            cost[j, k] = blocks[j, k][np.arange(dk), p].sum()
    return cost, inner, assign(cost)


def heads_for_mode(solved: tuple[np.ndarray, np.ndarray, np.ndarray], mode: str) -> HeadMatching:
    """The HeadMatching `mode` applies: Head-Perm's outer assignment, or head j ↔ head j (monotonic)."""
    cost, inner, head_perm = solved
    num_heads, dk = inner.shape[0], inner.shape[2]
    chosen = head_perm if ATTENTION[mode].matches_heads else identity(num_heads)
    perm = np.concatenate([chosen[j] * dk + inner[j, chosen[j]] for j in range(num_heads)])
    return HeadMatching(cost, chosen, inner, perm, head_perm)


def match_heads(corr: np.ndarray, num_heads: int, mode: str) -> HeadMatching:
    """Head-aware attention matching: inner assignment per head pair, outer on the H×H cost."""
    return heads_for_mode(solve_heads(corr, num_heads), mode)


@dataclass
class Matching:
    """Permutations for every space, plus what the app needs to explain them."""

    permutations: dict[str, np.ndarray]  # "layer.i.ffn", "layer.i.attention", "residual" or "residual.n" (sep)
    heads: dict[int, HeadMatching]
    settings: dict
    residual_score: np.ndarray | None = None  # the matrix the residual assignment used
    info: dict = field(default_factory=dict)  # how it was found: matcher, sweeps, objective, seconds (JSON-able)

    @property
    def function_preserving(self) -> bool:
        return is_function_preserving(self.settings["attention"], self.settings["residual"])

    def residual_perm(self, node: int) -> np.ndarray:
        return self.permutations.get(f"residual.{node}", self.permutations.get("residual"))


def _score(corr: torch.Tensor, absolute: bool) -> np.ndarray:
    c = corr.abs() if absolute else corr
    return c.cpu().numpy()


def residual_score(stats, mode: str) -> torch.Tensor:
    """The correlation matrix the residual assignment uses for `mode` (not sep/none)."""
    nodes = stats.residual_nodes()
    source = RESIDUAL[mode].residual_source
    if source == RESIDUAL_FIRST:
        return stats.spaces[nodes[0]].correlation()
    if source == RESIDUAL_LAST:
        return stats.spaces[nodes[-1]].correlation()
    if source == RESIDUAL_AVERAGE:
        # Average the cross-covariances (and variances) of every node, then normalise.
        from .statistics import correlation_from_moments

        moments = [stats.spaces[n].moments() for n in nodes]
        cov = sum(m[0] for m in moments) / len(moments)
        var_a = sum(m[1] for m in moments) / len(moments)
        var_b = sum(m[2] for m in moments) / len(moments)
        return correlation_from_moments(cov, var_a, var_b)
    raise ValueError(mode)


def compute_matching(
    stats,
    num_heads: int,
    ffn: bool = True,
    attention: str = "heads",
    residual: str = "first",
    absolute: bool = False,
) -> Matching:
    """Every permutation the settings ask for; identity where a component is switched off."""
    if attention not in ATTENTION_MODES:
        raise ValueError(f"unknown attention mode {attention!r}")
    if residual not in RESIDUAL_MODES:
        raise ValueError(f"unknown residual mode {residual!r}")
    heads_rule, residual_source = ATTENTION[attention].heads, RESIDUAL[residual].residual_source
    # Every assignment is a pure function of the statistics, so it is solved once per
    # Statistics object (a change of merge settings re-solves only what it changes), and the
    # independent ones run in parallel: scipy's solver releases the GIL.
    memo = stats.__dict__.setdefault("_assignments", {})
    jobs = {}

    def space(name: str):
        return lambda: assign(_score(stats.spaces[name].correlation(), absolute))

    for i in range(stats.num_layers):
        if ffn:
            jobs[("assign", f"layer.{i}.ffn", absolute)] = space(f"layer.{i}.ffn")
    if residual_source == RESIDUAL_EACH:
        for node in stats.residual_nodes():
            jobs[("assign", node, absolute)] = space(node)
    elif residual_source != RESIDUAL_NONE:
        def solve_residual():
            score = _score(residual_score(stats, residual), absolute)
            return score, assign(score)

        jobs[("residual", residual, absolute)] = solve_residual
    for i in range(stats.num_layers):
        name = f"layer.{i}.attention"
        if heads_rule in (HEADS_MATCH, HEADS_KEEP):
            jobs[("heads", name, absolute)] = lambda name=name: solve_heads(_score(stats.spaces[name].correlation(), absolute), num_heads)
        elif heads_rule == HEADS_IGNORE:
            jobs[("assign", name, absolute)] = space(name)
    _solve(memo, jobs)

    perms: dict[str, np.ndarray] = {}
    heads: dict[int, HeadMatching] = {}
    for i in range(stats.num_layers):
        name = f"layer.{i}.ffn"
        perms[name] = memo[("assign", name, absolute)].copy() if ffn else identity(stats.spaces[name].dim)
        name = f"layer.{i}.attention"
        if heads_rule in (HEADS_MATCH, HEADS_KEEP):
            heads[i] = heads_for_mode(memo[("heads", name, absolute)], attention)
            perms[name] = heads[i].perm
        elif heads_rule == HEADS_IGNORE:
            perms[name] = memo[("assign", name, absolute)].copy()
        else:
            perms[name] = identity(stats.spaces[name].dim)
    score = None
    dim = stats.spaces["residual.0"].dim
    if residual_source == RESIDUAL_NONE:
        perms["residual"] = identity(dim)
    elif residual_source == RESIDUAL_EACH:
        for node in stats.residual_nodes():
            perms[node] = memo[("assign", node, absolute)].copy()
    else:
        score, perm = memo[("residual", residual, absolute)]
        perms["residual"] = perm.copy()
    settings = {"ffn": ffn, "attention": attention, "residual": residual, "absolute": absolute}
    return Matching(perms, heads, settings, score, {"matcher": "activations"})


def _solve(memo: dict, jobs: dict) -> None:
    """Run the jobs not yet in memo, as many at once as torch may use threads."""
    todo = [(key, fn) for key, fn in jobs.items() if key not in memo]
    workers = min(len(todo), max(1, torch.get_num_threads()))
    if workers <= 1:
        for key, fn in todo:
            memo[key] = fn()
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [(key, pool.submit(fn)) for key, fn in todo]
        for key, future in futures:
            memo[key] = future.result()


def matched_correlation(corr: torch.Tensor | np.ndarray, perm: np.ndarray | None = None) -> np.ndarray:
    """corr[i, perm[i]] for every unit i (the diagonal when perm is None: before alignment)."""
    c = corr.cpu().numpy() if isinstance(corr, torch.Tensor) else corr
    idx = np.arange(c.shape[0])
    return c[idx, idx if perm is None else perm]


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
        sp = stats.spaces[space]
        idx = np.arange(sp.dim)
        return {
            "before": summarise(sp.correlation_at(idx, idx).numpy()),
            "after": summarise(sp.correlation_at(idx, perm).numpy()),
        }

    out = {}
    for i in range(stats.num_layers):
        for kind in ("ffn", "attention"):
            name = f"layer.{i}.{kind}"
            out[name] = before_after(name, matching.permutations[name])
    for n, node in enumerate(stats.residual_nodes()):
        out[node] = before_after(node, matching.residual_perm(n))
    return out
