"""Exact linear assignment for large score matrices, solved on a sparse candidate graph.

A dense solver (scipy's Jonker–Volgenant) takes 2 to 4 s for one 3072×3072 matrix, and a
BERT-base pair has twelve of them. But the optimal assignment almost only uses entries near the
top of their row or column, so we:

1. keep the best `k` entries of every row and every column as candidate edges;
2. solve the assignment on that sparse graph (scipy's LAPJVsp);
3. prove it optimal for the *whole* matrix with LP duality: dual prices u (rows) and v
   (columns) such that score[i, j] ≤ u_i + v_j for every entry and equality on the matched
   ones. The prices are shortest-path potentials of the matching's exchange graph; the check
   runs over every entry of the dense matrix, so the proof never relies on the sparse step;
4. add any entry that breaks the bound to the candidates and solve again.

The answer is the same optimum a dense solver finds, up to `TOLERANCE` per unit (far below the
7 significant digits a float32 correlation carries); with ties, it may pick another of the equal
optima. Whatever goes wrong (no full matching among the candidates, no proof after a few
rounds, non-finite scores) falls back to the dense solver.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

SPARSE_FROM = 1024  # below this size the dense solver takes well under a second
CANDIDATES = 32  # best entries kept per row and per column
TOLERANCE = 1e-10  # allowed dual violation per entry, relative to the largest |score|
MAX_ROUNDS = 6
CHECK_ROWS = 256  # rows per block of the dense certificate (keeps temporaries small)


def assign_dense(score: np.ndarray) -> np.ndarray:
    rows, cols = linear_sum_assignment(score, maximize=True)
    perm = np.empty(score.shape[0], dtype=np.int64)
    perm[rows] = cols
    return perm


def assign(score: np.ndarray) -> np.ndarray:
    """perm maximising Σ_i score[i, perm[i]], exact; sparse-first for large square matrices."""
    n = score.shape[0]
    if score.ndim == 2 and score.shape == (n, n) and n >= SPARSE_FROM:
        perm = assign_sparse(score)
        if perm is not None:
            return perm
    return assign_dense(score)


def assign_sparse(score: np.ndarray, candidates: int = CANDIDATES, rounds: list | None = None) -> np.ndarray | None:
    """The certified optimum via the sparse candidate graph, or None to ask for the dense solver.

    `rounds`, when given, receives one dict per solve (edges, violations): for tests and tuning.
    """
    n = score.shape[0]
    table = torch.from_numpy(np.ascontiguousarray(score))
    if not bool(torch.isfinite(table).all()):
        return None
    tolerance = TOLERANCE * max(1.0, float(table.abs().max()))
    k = min(candidates, n)
    edges = _best_entries(table, k)
    for _ in range(MAX_ROUNDS):
        rows, cols = np.divmod(edges, n)
        cost = -score[rows, cols].astype(np.float64)
        # LAPJVsp drops zero weights as missing edges, so shift every weight to ≥ 1: a
        # constant added to every edge changes every full matching's total by the same n·c.
        graph = csr_matrix((cost + (1.0 - cost.min()), (rows, cols)), shape=(n, n))
        try:
            perm = min_weight_full_bipartite_matching(graph)[1].astype(np.int64)
        except ValueError:  # the candidates hold no full matching: widen them
            if 4 * k >= n:
                return None
            k *= 2
            edges = np.union1d(edges, _best_entries(table, k))
            if rounds is not None:
                rounds.append({"edges": len(rows), "violations": None})
            continue
        price_cols = _column_potentials(rows, cols, cost, perm, n)
        matched_cost = -score[np.arange(n), perm].astype(np.float64)
        price_rows = matched_cost - price_cols[perm]
        broken = _dual_violations(table, price_rows, price_cols, tolerance)
        if rounds is not None:
            rounds.append({"edges": len(rows), "violations": len(broken)})
        if len(broken) == 0:
            return perm
        edges = np.union1d(edges, broken)
    return None


def _best_entries(table: torch.Tensor, k: int) -> np.ndarray:
    """Flat indices (i·n + j) of the k largest entries of every row and of every column."""
    n = table.shape[0]
    by_row = torch.topk(table, k, dim=1, sorted=False).indices
    by_col = torch.topk(table.t().contiguous(), k, dim=1, sorted=False).indices
    arange = torch.arange(n).unsqueeze(1)
    chosen = torch.zeros(n * n, dtype=torch.bool)
    chosen[(arange * n + by_row).reshape(-1)] = True
    chosen[(by_col * n + arange).reshape(-1)] = True
    return chosen.nonzero().squeeze(1).numpy()


def _column_potentials(rows: np.ndarray, cols: np.ndarray, cost: np.ndarray, perm: np.ndarray, n: int) -> np.ndarray:
    """Potentials v with v_j ≤ v_perm[i] + cost_ij − cost_i,perm[i] on every candidate edge.

    Shortest distances from a virtual source joined to every column at length 0, in the graph
    where row i leads from its matched column perm[i] to each of its candidates j. An optimal
    matching leaves no negative cycle, so Bellman–Ford converges; only the columns whose
    distance changed are relaxed again (most settle in a few rounds).
    """
    on_match = cols == perm[rows]
    matched = np.empty(n)
    matched[rows[on_match]] = cost[on_match]
    keep = ~on_match
    start_node, end_node = perm[rows[keep]], cols[keep]
    length = cost[keep] - matched[rows[keep]]
    order = np.argsort(start_node, kind="stable")
    start_node, end_node, length = start_node[order], end_node[order], length[order]
    first_edge = np.searchsorted(start_node, np.arange(n + 1))
    distance = np.zeros(n)
    changed = np.arange(n)
    for _ in range(n + 1):
        lo, count = first_edge[changed], first_edge[changed + 1] - first_edge[changed]
        total = int(count.sum())
        if total == 0:
            return distance
        edge = np.repeat(lo - np.cumsum(count) + count, count) + np.arange(total)
        reach = distance[start_node[edge]] + length[edge]
        target = end_node[edge]
        shorter = reach < distance[target]
        if not shorter.any():
            return distance
        before = distance.copy()
        np.minimum.at(distance, target[shorter], reach[shorter])
        changed = np.flatnonzero(distance < before)
    raise RuntimeError("assignment: negative cycle in the exchange graph (the sparse matching is not optimal)")


def _dual_violations(table: torch.Tensor, price_rows: np.ndarray, price_cols: np.ndarray, tolerance: float) -> np.ndarray:
    """Flat indices of entries with −score_ij − u_i − v_j < −tolerance (none: proven optimal)."""
    n = table.shape[0]
    u, v = torch.from_numpy(price_rows), torch.from_numpy(price_cols)
    found = []
    buffer = torch.empty(min(CHECK_ROWS, n), n, dtype=torch.float64)
    for a in range(0, n, CHECK_ROWS):
        block = table[a : a + CHECK_ROWS]
        # Into a float64 buffer first: `.double()` of float64 scores would be the scores
        # themselves, and the in-place arithmetic below would overwrite the caller's matrix.
        reduced = buffer[: len(block)].copy_(block).neg_().sub_(u[a : a + CHECK_ROWS, None]).sub_(v)
        bad = (reduced < -tolerance).nonzero()
        if len(bad):
            found.append(((bad[:, 0] + a) * n + bad[:, 1]).numpy())
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)
