"""The sparse-first assignment finds the same optimum as the dense solver, and says when it can't."""

import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from permerge_core import assignment
from permerge_core.assignment import assign, assign_dense, assign_sparse


def total(score, perm):
    return float(score[np.arange(len(perm)), perm].astype(np.float64).sum())


def matrices(n, seed=0):
    rng = np.random.default_rng(seed)
    planted = np.zeros((n, n), np.float32)
    planted[np.arange(n), rng.permutation(n)] = 0.3
    yield "uniform", rng.random((n, n)).astype(np.float32)
    yield "weak correlations", np.tanh(0.05 * rng.standard_normal((n, n))).astype(np.float32)
    yield "planted", planted + 0.1 * rng.standard_normal((n, n)).astype(np.float32)
    yield "negative", -rng.random((n, n)).astype(np.float32)
    yield "float64", np.tanh(0.05 * rng.standard_normal((n, n)))  # correlations come as float64


@pytest.mark.parametrize("candidates", [32, 2])
def test_sparse_optimum_equals_the_dense_optimum(candidates):
    for name, score in matrices(400):
        rounds = []
        before = score.copy()
        perm = assign_sparse(score, candidates=candidates, rounds=rounds)
        assert np.array_equal(score, before), f"{name}: the scores were modified"
        dense = assign_dense(score)
        assert perm is not None, name
        assert sorted(perm) == list(range(400)), name
        assert total(score, perm) == pytest.approx(total(score, dense), abs=1e-6), name
        # Random matrices have a unique optimum: the same permutation, index for index.
        assert np.array_equal(perm, dense), name
        assert rounds[-1]["violations"] == 0


def test_two_candidates_per_row_are_not_enough_and_the_certificate_says_so():
    score = next(matrices(400))[1]
    rounds = []
    assign_sparse(score, candidates=2, rounds=rounds)
    assert len(rounds) > 1 and rounds[0]["violations"] != 0  # it had to widen or repair


def test_ties_and_missing_full_matchings_still_give_an_optimum():
    rng = np.random.default_rng(3)
    score = rng.integers(0, 3, (300, 300)).astype(np.float32)
    perm = assign_sparse(score, candidates=1)
    expected = total(score, assign_dense(score))
    if perm is not None:  # with ties, any optimum will do
        assert total(score, perm) == expected
    assert total(score, assign(score)) == expected


def test_non_finite_scores_go_to_the_dense_solver(monkeypatch):
    score = np.random.default_rng(0).random((50, 50)).astype(np.float32)
    score[3, 4] = np.nan
    assert assign_sparse(score) is None
    with pytest.raises(ValueError):
        assign(score)


def test_large_matrices_take_the_sparse_path(monkeypatch):
    calls = []
    monkeypatch.setattr(assignment, "SPARSE_FROM", 100)
    monkeypatch.setattr(assignment, "_worker_pool", lambda: None)  # here, where the spy can see it
    real = assignment.assign_sparse
    monkeypatch.setattr(assignment, "assign_sparse", lambda s: calls.append(s.shape) or real(s))
    score = next(matrices(150))[1]
    assert np.array_equal(assign(score), assign_dense(score))
    assert calls == [(150, 150)]


class InProcessPool(ThreadPoolExecutor):
    """Stands in for the worker pool: the same submit/result protocol on any platform, so the
    logic around the pool is tested the same way everywhere (the real pool: see below)."""

    def __init__(self):
        super().__init__(max_workers=1)


@pytest.fixture
def pool(monkeypatch):
    stand_in = InProcessPool()
    monkeypatch.setattr(assignment, "_worker_pool", lambda: stand_in)
    monkeypatch.setattr(assignment, "_pool_state", {"usable": True, "solved": 0})
    monkeypatch.setattr(assignment, "SPARSE_FROM", 1000)  # the worker path on a matrix quicker to solve than BERT-base's
    yield stand_in
    stand_in.shutdown()


def test_mid_size_matrices_are_solved_dense_here_without_workers(monkeypatch):
    """A 4-layer 256-wide pair's 1,024-wide FFN: the dense solver in this thread (it releases
    the GIL); workers would cost more to start and feed than they save."""
    def no_pool():
        raise AssertionError("a worker pool was asked for")

    monkeypatch.setattr(assignment, "_worker_pool", no_pool)
    monkeypatch.setattr(assignment, "assign_sparse", lambda *a, **k: pytest.fail("the sparse path was taken"))
    score = np.tanh(0.05 * np.random.default_rng(4).standard_normal((1024, 1024)))
    perm = assign(score)
    assert np.array_equal(np.sort(perm), np.arange(1024))
    assert score[np.arange(1024), perm].sum() == pytest.approx(score[np.arange(1024), assign_dense(score)].sum())


def test_large_assignments_are_solved_by_the_pool_and_here_without_it(pool, monkeypatch):
    score = np.tanh(0.05 * np.random.default_rng(5).standard_normal((1100, 1100)))
    expected = assign_dense(score)
    assert np.array_equal(assign(score), expected)
    assert assignment._pool_state == {"usable": True, "solved": 1}  # answered by the pool

    class Refusing:
        def submit(self, *args):
            raise OSError("no processes here")

    monkeypatch.setattr(assignment, "_worker_pool", lambda: Refusing())
    assert np.array_equal(assign(score), expected)  # solved here instead
    assert assignment._pool_state == {"usable": False, "solved": 1}
    monkeypatch.setattr(assignment, "_worker_pool", lambda: None)  # a platform without workers
    assert np.array_equal(assign(score), expected)
    assert assignment._pool_state["solved"] == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="worker processes are forked on Linux only")
def test_on_linux_large_assignments_go_to_forked_worker_processes(monkeypatch):
    monkeypatch.setattr(assignment, "_pool_state", {"usable": True, "solved": 0})
    monkeypatch.setattr(assignment, "SPARSE_FROM", 1000)
    workers = assignment._worker_pool()
    assert workers is not None, "no worker pool on Linux"
    assert workers.submit(os.getpid).result() != os.getpid()  # another process
    score = np.tanh(0.05 * np.random.default_rng(5).standard_normal((1100, 1100)))
    assert np.array_equal(assign(score), assign_dense(score))
    assert assignment._pool_state == {"usable": True, "solved": 1}


def test_large_assignments_reach_workers_through_a_shared_file_removed_after(pool, monkeypatch, tmp_path):
    """The matrix goes to the worker as a file it maps, not through the pool's pipe; with no
    folder or no room for the file it is pickled instead. Same answer each way, no file left."""
    monkeypatch.setattr(assignment, "SPARSE_FROM", 1000)
    score = np.tanh(0.05 * np.random.default_rng(6).standard_normal((1100, 1100)))
    expected = assign_dense(score)
    submitted = []

    class Recording:  # the pool, remembering what each job was handed
        def submit(self, fn, *args):
            files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
            submitted.append({"fn": fn, "args": args, "files": files})
            return pool.submit(fn, *args)

    monkeypatch.setattr(assignment, "_worker_pool", lambda: Recording())
    monkeypatch.setattr(assignment, "SHARED_DIR", str(tmp_path))
    assert np.array_equal(assign(score), expected)
    job = submitted[-1]
    assert job["fn"] is assignment._assign_large_mapped and not any(isinstance(a, np.ndarray) for a in job["args"])
    assert job["files"] == {Path(job["args"][0]).name: score.tobytes()}  # the whole matrix, when the job was sent
    assert list(tmp_path.iterdir()) == [] and assignment._pool_state == {"usable": True, "solved": 1}

    def full(fd, matrix):  # room for half of it
        with os.fdopen(fd, "wb") as f:
            f.write(matrix.tobytes()[: matrix.nbytes // 2])
        raise OSError(28, "No space left on device")

    for where, write in ((tmp_path, full), (tmp_path / "missing", assignment._write_matrix)):
        monkeypatch.setattr(assignment, "SHARED_DIR", str(where))
        monkeypatch.setattr(assignment, "_write_matrix", write)
        assert np.array_equal(assign(score), expected)
        assert submitted[-1]["fn"] is assignment.assign_large and submitted[-1]["args"][0] is score  # pickled to a worker
        assert list(tmp_path.iterdir()) == []
    assert assignment._pool_state == {"usable": True, "solved": 3}


def test_a_job_that_fails_in_a_worker_is_solved_here_and_the_workers_stay(pool, monkeypatch):
    score = np.tanh(0.05 * np.random.default_rng(7).standard_normal((1100, 1100)))
    gone = []

    class FileGone:  # as if something deleted the shared file before the worker mapped it
        def submit(self, fn, *args):
            future = Future()
            future.set_exception(FileNotFoundError(args[0]))
            gone.append(fn)
            return future

    monkeypatch.setattr(assignment, "_worker_pool", lambda: FileGone())
    assert np.array_equal(assign(score), assign_dense(score))
    assert gone and assignment._pool_state == {"usable": True, "solved": 0}
