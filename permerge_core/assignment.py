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
4. add any entry that breaks the bound (and those close to breaking it) to the candidates and
   solve again.

Matrices below `SPARSE_FROM` (BERT-base's FFN is above it, its attention and residual below)
go straight to the dense solver, which is as fast there and releases the GIL.

The answer is the same optimum a dense solver finds, up to `TOLERANCE` per unit (far below the
7 significant digits a float32 correlation carries); with ties, it may pick another of the equal
optima. Whatever goes wrong (no full matching among the candidates, no proof after a few
rounds, non-finite scores) falls back to the dense solver.

scipy's sparse solver holds the GIL, so the large assignments, which the matching stage asks
for from several threads at once, run in forked worker processes (started on first use, then
reused). Off Linux, or where workers cannot be had, they run here. A score matrix reaches its
worker as a file in shared memory (/dev/shm), which the worker maps read-only: pickled through
the pool's pipe, a 3072×3072 matrix took 0.23 to 0.41 s per round trip, the file 0.05 to 0.07 s.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import threading
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from contextlib import contextmanager, suppress

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

# Below this size: scipy's dense solver, in the caller's thread. It releases the GIL, so the
# matching stage's threads solve side by side without worker processes. On 768- and
# 1,024-wide FFN correlations it took about as long as the sparse path (random-init pair)
# or half as long (the bundled trained pair), and the sparse path in workers added the
# pool's start-up and a round trip per matrix: the trained pair's matching stage took 1.5
# to 2.4 s that way, 0.9 to 1.6 s dense (2 cores under load; benchmarks' `matching` workload
# times a 4-layer 1,024-FFN pair). The sparse path pays from BERT-base's 3,072-wide spaces,
# where the dense solver takes seconds.
SPARSE_FROM = 2048
CANDIDATES = 16  # best entries kept per row and per column
# After a failed proof, every entry within this much (× the largest |score|) of breaking the
# bound joins the candidates, not only the broken ones: those are the likeliest to break next.
# On BERT-base FFN correlations that made it one re-solve instead of one to three (measured).
WIDEN = 0.03
TOLERANCE = 1e-10  # allowed dual violation per entry, relative to the largest |score|
MAX_ROUNDS = 6
BLOCK_ROWS = 256  # rows per block of the dense passes (keeps temporaries small)


def assign_dense(score: np.ndarray) -> np.ndarray:
    rows, cols = linear_sum_assignment(score, maximize=True)
    perm = np.empty(score.shape[0], dtype=np.int64)
    perm[rows] = cols
    return perm


def assign(score: np.ndarray) -> np.ndarray:
    """perm maximising Σ_i score[i, perm[i]], exact; sparse-first for large square matrices."""
    n = score.shape[0]
    if score.ndim == 2 and score.shape == (n, n) and n >= SPARSE_FROM:
        perm = _assign_in_worker(score)
        return perm if perm is not None else assign_large(score)
    return assign_dense(score)


def _assign_in_worker(score: np.ndarray) -> np.ndarray | None:
    """assign_large(score) in a worker process, or None to solve it here: without workers, or
    when the job failed there (non-finite scores, say: here the same error is raised again)."""
    pool = _worker_pool()
    if pool is None:
        return None
    with _shared_copy(score) as shared:
        try:
            future = pool.submit(_assign_large_mapped, *shared) if shared else pool.submit(assign_large, score)
        except Exception:  # a refused pool (daemonic parent, no semaphores, …)
            _give_up_workers()
            return None
        try:
            perm = future.result()
        except BrokenExecutor:  # a worker died
            _give_up_workers()
            return None
        except Exception:  # the job failed, not the pool: the workers stay
            return None
        finally:
            future.cancel()  # an interrupted wait: the job need not run any more
    _pool_state["solved"] += 1
    return perm


def assign_large(score: np.ndarray) -> np.ndarray:
    perm = assign_sparse(score)
    return perm if perm is not None else assign_dense(score)


SHARED_DIR = "/dev/shm"


@contextmanager
def _shared_copy(score: np.ndarray):
    """(path, shape, dtype) of a copy of `score` in a shared-memory file, removed on exit; None
    where there is no such folder or no room (the matrix is then pickled to the worker)."""
    try:
        fd, path = tempfile.mkstemp(prefix="permerge-score-", suffix=".bin", dir=SHARED_DIR)
    except OSError:
        yield None
        return
    try:
        try:
            _write_matrix(fd, score)
            written = True
        except OSError:  # full: a container's /dev/shm is often 64 MB
            written = False
        yield (path, score.shape, score.dtype.str) if written else None
    finally:
        with suppress(FileNotFoundError):  # a worker still mapping it keeps its pages until it lets go
            os.unlink(path)


def _write_matrix(fd: int, score: np.ndarray) -> None:
    with os.fdopen(fd, "wb") as f:
        np.ascontiguousarray(score).tofile(f)


def _assign_large_mapped(path: str, shape: tuple, dtype: str) -> np.ndarray:
    """assign_large on the matrix in `path`, mapped read-only (runs in a worker process)."""
    return assign_large(np.memmap(path, dtype=np.dtype(dtype), mode="r", shape=shape))


_pool: ProcessPoolExecutor | None = None
_pool_state = {"usable": True, "solved": 0}  # "solved": assignments answered by workers (for tests)
_pool_lock = threading.Lock()


def _worker_pool() -> ProcessPoolExecutor | None:
    global _pool
    with _pool_lock:
        if _pool is None and _pool_state["usable"]:
            # Forked workers, on Linux only: "spawn" and "forkserver" re-import the caller's main
            # script in every worker (a script without an `if __name__ == "__main__":` guard
            # would run again there), and fork is unsafe on macOS. The children run numpy and
            # scipy only, never torch, so the parent's torch threads do not matter to them.
            if not sys.platform.startswith("linux"):
                _pool_state["usable"] = False
                return None
            try:
                _pool = ProcessPoolExecutor(max_workers=max(1, os.cpu_count() or 1), mp_context=multiprocessing.get_context("fork"))
            except Exception:
                _pool_state["usable"] = False
        return _pool


def _give_up_workers() -> None:
    global _pool
    with _pool_lock:
        _pool_state["usable"] = False
        if _pool is not None:
            _pool.shutdown(wait=False, cancel_futures=True)
            _pool = None


def assign_sparse(score: np.ndarray, candidates: int = CANDIDATES, rounds: list | None = None) -> np.ndarray | None:
    """The certified optimum via the sparse candidate graph, or None to ask for the dense solver.

    `rounds`, when given, receives one dict per solve (edges, violations): for tests and tuning.
    """
    n = score.shape[0]
    score = np.ascontiguousarray(score)
    low, high = float(score.min()), float(score.max())  # NaN or ±inf shows up here
    if not (np.isfinite(low) and np.isfinite(high)):
        return None
    scale = max(1.0, abs(low), abs(high))
    tolerance = TOLERANCE * scale
    k = min(candidates, n)
    edges = _best_entries(score, k)
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
            edges = np.union1d(edges, _best_entries(score, k))  # (rare: only for massive ties)
            if rounds is not None:
                rounds.append({"edges": len(rows), "violations": None})
            continue
        price_cols = _column_potentials(rows, cols, cost, perm, n, slack=tolerance / 1000)
        if price_cols is None:  # cannot happen for an optimal sparse solution; be safe anyway
            return None
        matched_cost = -score[np.arange(n), perm].astype(np.float64)
        price_rows = matched_cost - price_cols[perm]
        broken, near = _dual_violations(score, price_rows, price_cols, tolerance, WIDEN * scale)
        if rounds is not None:
            rounds.append({"edges": len(rows), "violations": broken})
        if broken == 0:
            return perm
        edges = np.union1d(edges, near)
    return None


def _best_entries(score: np.ndarray, k: int) -> np.ndarray:
    """Flat indices (i·n + j) of the k largest entries of every row and of every column.

    In blocks of rows (and of columns), so no n×n index array is ever made. numpy, not torch:
    this runs in forked workers (and, without them, beside other solver threads, where
    torch's own threads oversubscribed the cores: no gain from the second thread, measured).
    """
    n = score.shape[0]
    chosen = np.zeros(n * n, dtype=bool)
    columns = np.empty((min(BLOCK_ROWS, n), n), dtype=score.dtype)
    for a in range(0, n, BLOCK_ROWS):
        block = score[a : a + BLOCK_ROWS]
        top = np.argpartition(block, n - k, axis=1)[:, n - k :]
        chosen[(np.arange(a, a + len(block))[:, None] * n + top).ravel()] = True
        slab = columns[: len(block)]
        for r in range(0, n, 512):  # transposed in tiles: a strided whole-slab copy is 2× slower
            slab[:, r : r + 512] = score[r : r + 512, a : a + BLOCK_ROWS].T
        top = np.argpartition(slab, n - k, axis=1)[:, n - k :]
        chosen[(top * n + np.arange(a, a + len(slab))[:, None]).ravel()] = True
    return np.flatnonzero(chosen)


def _column_potentials(rows: np.ndarray, cols: np.ndarray, cost: np.ndarray, perm: np.ndarray, n: int, slack: float = 0.0) -> np.ndarray | None:
    """Potentials v with v_j ≤ v_perm[i] + cost_ij − cost_i,perm[i] on every candidate edge.

    Shortest distances from a virtual source joined to every column at length 0, in the graph
    where row i leads from its matched column perm[i] to each of its candidates j. An optimal
    matching leaves no negative cycle, so Bellman–Ford converges; only the columns whose
    distance changed are relaxed again (most settle in a few rounds). None if it does not.
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
        # Improvements below the slack are rounding: chasing them could cycle forever on a
        # zero-length cycle that rounds to −1e-17. The certificate allows far more (TOLERANCE).
        shorter = reach < distance[target] - slack
        if not shorter.any():
            return distance
        before = distance.copy()
        np.minimum.at(distance, target[shorter], reach[shorter])
        changed = np.flatnonzero(distance < before)
    return None  # a negative cycle: the sparse matching was not optimal


def _dual_violations(score: np.ndarray, price_rows: np.ndarray, price_cols: np.ndarray, tolerance: float, margin: float) -> tuple[int, np.ndarray]:
    """How many entries break −score_ij − u_i − v_j ≥ −tolerance (none: proven optimal), and the
    flat indices of every entry with −score_ij − u_i − v_j < margin (empty when none break)."""
    n = score.shape[0]
    broken, near = 0, []
    reduced = np.empty((min(BLOCK_ROWS, n), n))  # float64, reused: never the caller's matrix
    for a in range(0, n, BLOCK_ROWS):
        block = score[a : a + BLOCK_ROWS]
        out = reduced[: len(block)]
        np.negative(block, out=out)
        out -= price_rows[a : a + BLOCK_ROWS, None]
        out -= price_cols
        broken += int(np.count_nonzero(out < -tolerance))
        near.append(np.flatnonzero(out < margin) + a * n)
    return broken, (np.concatenate(near) if broken else np.empty(0, dtype=np.int64))
