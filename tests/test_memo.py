"""The stages' memo (memo.py): one computation per key, the disk round trip, and the status
the app's status line shows, read from the same keys."""

import threading

import pytest
import torch

from permerge_core.cache import DiskCache
from permerge_core.memo import JSON, Memo, tensors


def counting(value):
    calls = []

    def compute():
        calls.append(1)
        return value

    return compute, calls


def test_a_result_is_computed_once_and_then_returned_as_held(tmp_path):
    memo = Memo(DiskCache(tmp_path))
    compute, calls = counting({"loss": 1.5})
    first = memo.get("curve", {"which": "vanilla", "lambdas": 5}, compute, JSON)
    again = memo.get("curve", {"lambdas": 5, "which": "vanilla"}, compute, JSON)  # the same fields in another order
    assert calls == [1] and again is first
    other, other_calls = counting({"loss": 2.5})
    assert memo.get("curve", {"which": "vanilla", "lambdas": 7}, other, JSON) == {"loss": 2.5} and other_calls == [1]
    assert memo.find("curve", {"which": "permuted", "lambdas": 5}, JSON) is None  # find computes nothing


def test_a_result_comes_back_from_disk_in_a_new_memo_and_says_so(tmp_path):
    fields = {"which": "permuted", "lambdas": 3}
    Memo(DiskCache(tmp_path)).get("curve", fields, lambda: [{"lambda": 0.0, "loss": 0.25}], JSON)
    fresh = Memo(DiskCache(tmp_path))
    loaded = []
    value = fresh.get("curve", fields, lambda: pytest.fail("recomputed what is on disk"), JSON, loaded=loaded.append)
    assert value == [{"lambda": 0.0, "loss": 0.25}] and loaded == [value]
    fresh.get("curve", fields, lambda: pytest.fail("recomputed what is in memory"), JSON, loaded=loaded.append)
    assert len(loaded) == 1  # held in memory from then on: `loaded` is for reads from disk only
    memory_only = Memo(DiskCache(tmp_path))
    compute, calls = counting([{"lambda": 0.0, "loss": 9.0}])
    assert memory_only.get("curve", fields, compute) == [{"lambda": 0.0, "loss": 9.0}] and calls == [1]  # no store: disk unread


def test_tensor_results_round_trip_and_a_damaged_entry_is_recomputed(tmp_path):
    store = tensors(lambda t: ({"w": t}, {"n": int(t.numel())}), lambda named, meta: named["w"], "damaged entry; recomputing")
    value = torch.arange(6.0).reshape(2, 3)
    Memo(DiskCache(tmp_path)).get("stats", {"a": 1}, lambda: value, store)
    assert torch.equal(Memo(DiskCache(tmp_path)).find("stats", {"a": 1}, store), value)
    refusing = tensors(lambda t: ({"w": t}, {}), lambda named, meta: (_ for _ in ()).throw(ValueError("wrong set")), "damaged entry; recomputing")
    memo = Memo(DiskCache(tmp_path))
    compute, calls = counting(value + 1)
    assert torch.equal(memo.get("stats", {"a": 1}, compute, refusing), value + 1) and calls == [1]
    assert "damaged entry; recomputing" in memo.disk.events


def test_state_says_computed_cached_stale_or_missing(tmp_path):
    fields = lambda lambdas, which="vanilla": {"which": which, "lambdas": lambdas, "eval_tokens": 100}  # noqa: E731
    memo = Memo(DiskCache(tmp_path))
    same = ("which", "lambdas")
    assert memo.state("curve", fields(5), JSON, same) == "missing"
    memo.get("curve", fields(5), lambda: [1.0], JSON)
    assert memo.state("curve", fields(5), JSON, same) == "computed"
    other_budget = {**fields(5), "eval_tokens": 200}
    assert memo.state("curve", other_budget, JSON, same) == "stale"  # this path, computed for another budget
    assert memo.state("curve", fields(7), JSON, same) == "missing"  # another λ grid is another path
    assert memo.state("curve", fields(5, "permuted"), JSON, same) == "missing"
    assert Memo(DiskCache(tmp_path)).state("curve", fields(5), JSON, same) == "cached"  # on disk, not in this memo
    assert Memo(DiskCache(tmp_path)).state("curve", fields(5)) == "missing"  # a memory-only stage never reads the disk
    memo.forget("curve")
    assert memo.state("curve", other_budget, JSON, same) == "missing"


def test_two_threads_asking_at_once_compute_once(tmp_path):
    memo = Memo(DiskCache(None))
    started, calls = threading.Event(), []

    def slow():
        calls.append(1)
        started.set()
        threading.Event().wait(0.2)
        return "done"

    results = []
    first = threading.Thread(target=lambda: results.append(memo.get("stats", {"a": 1}, slow)))
    first.start()
    started.wait(5)
    results.append(memo.get("stats", {"a": 1}, slow))  # waits for the first thread's result
    first.join()
    assert results == ["done", "done"] and calls == [1]
