"""Independent pieces of work side by side on the CPU's cores, each on one intra-op thread.

PyTorch splits each op across its intra-op threads; for the attention, GELU and small matrix
products of a 192-wide model much of that is spent waiting at each op's end. Running
independent evaluation chunks one per core keeps both cores of this machine busier: one λ
point of the default pair took 20% less time, BERT-base's 9% less (docs/history.md).
(The statistics pass's two forward passes side by side were slower: its slices are large
enough to split well, and it has to hold both models' activations.) Forming θ(λ) uses it too,
for groups of parameters, so that no OpenMP team is left spinning while the evaluation runs
(interpolation.py). Results never depend on which thread ran what.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch


def map_chunks(fn, chunks: list, device: str = "cpu", cost=None) -> list:
    """[fn(c) for c in chunks], run side by side on the CPU's intra-op threads.

    Each of up to `torch.get_num_threads()` worker threads runs whole chunks on one intra-op
    thread of its own; `fn` must be thread-safe and enable what it needs of torch's
    thread-local state (no_grad). Results come back in chunk order, and every chunk is
    computed the same way whichever thread takes it, so results do not depend on timing.
    The costliest chunks (by `cost`) start first, so that no thread is left alone at the end
    with a big one. On other devices, or with one thread, the chunks run one by one.
    """
    threads = torch.get_num_threads()
    workers = min(worker_count(device), len(chunks))
    if workers < 2:
        return [fn(c) for c in chunks]
    order = sorted(range(len(chunks)), key=lambda k: -cost(chunks[k])) if cost else range(len(chunks))
    try:
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(max(1, threads // workers),)) as pool:
            futures = {k: pool.submit(fn, chunks[k]) for k in order}
            return [futures[k].result() for k in range(len(chunks))]
    finally:
        # torch.set_num_threads in a worker also sets the count that threads started later
        # (the app's next script run) begin with: put it back.
        torch.set_num_threads(threads)


def worker_count(device: str = "cpu") -> int:
    """How many chunks `map_chunks` runs at once at most (so that callers can size them)."""
    return torch.get_num_threads() if str(device).startswith("cpu") else 1
