"""The faster paths give exactly what the plain ones give (see docs/performance.md)."""

import copy
import threading

import numpy as np
import torch

from fixtures import merge, random_ids, random_model, spaces_of
from permerge_core.families import FAMILIES
from permerge_core.checkpoints import _choose_head
from permerge_core.data import TokenBatches
from permerge_core.matching import compute_matching
from permerge_core.permuting import permute_state_dict, permuted_model, plan_for_matching
from permerge_core.statistics import collect_statistics
from test_invariants import random_matching


def head_for(model):
    family = FAMILIES[model.config.model_type]
    return family, _choose_head(family, [type(model).__name__], set())


def _stats(seed_a=41, seed_b=42):
    a = random_model("bert", "mlm", seed=seed_a, layers=2, hidden=16, heads=4, ffn=32)
    b = random_model("bert", "mlm", seed=seed_b, layers=2, hidden=16, heads=4, ffn=32)
    ids, masks = zip(*(random_ids(batch=4, length=20, seed=s, vocab=a.config.vocab_size) for s in range(6)))
    batches = TokenBatches(list(ids), list(masks), int(sum(m.sum() for m in masks)), 24)
    fam, _ = head_for(a)
    return a, b, fam, collect_statistics(a, b, fam, a.config, batches)


def test_correlation_at_is_the_full_matrix_entry_for_entry():
    *_, stats = _stats()
    for sp in stats.spaces.values():
        corr = sp.correlation()
        idx = np.arange(sp.dim)
        perm = np.random.default_rng(0).permutation(sp.dim)
        assert torch.equal(sp.correlation_at(idx, idx), corr[idx, idx])
        assert torch.equal(sp.correlation_at(idx, perm), corr[idx, perm])


def test_matching_is_the_same_whether_solved_fresh_remembered_or_in_parallel():
    a, *_, stats = _stats()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = {m: compute_matching(copy.deepcopy(stats), spaces_of(a), merge(attention=m, residual=r)) for m, r in (("heads", "first"), ("monotonic", "all"))}
        torch.set_num_threads(2)
        for (mode, residual), fresh in zip((("heads", "first"), ("monotonic", "all")), serial.values()):
            again = compute_matching(stats, spaces_of(a), merge(attention=mode, residual=residual))  # the second reuses the first's FFN work
            assert again.permutations.keys() == fresh.permutations.keys()
            for k in fresh.permutations:
                np.testing.assert_array_equal(again.permutations[k], fresh.permutations[k], err_msg=k)
            for i, h in fresh.heads.items():
                np.testing.assert_array_equal(again.heads[i].perm, h.perm)
                np.testing.assert_array_equal(again.heads[i].assignment, h.assignment)
    finally:
        torch.set_num_threads(threads)


def test_permuted_model_equals_loading_the_permuted_state_dict():
    a, b, fam, stats = _stats()
    _, head = head_for(b)
    for residual in ("first", "sep"):  # sep permutes the tied embedding/decoder differently
        matching = compute_matching(stats, spaces_of(a), merge(attention="heads", residual=residual))
        expected = copy.deepcopy(b)
        expected.load_state_dict(permute_state_dict(b.state_dict(), plan_for_matching(fam, head, 2, matching)))
        got = permuted_model(b, fam, head, 2, matching)
        for (name, x), (_, y) in zip(expected.state_dict().items(), got.state_dict().items()):
            assert torch.equal(x, y), (residual, name)


def test_statistics_do_not_depend_on_the_row_slices(monkeypatch):
    import permerge_core.statistics as statistics

    a, b, fam, whole = _stats()
    ids, masks = zip(*(random_ids(batch=4, length=20, seed=s, vocab=a.config.vocab_size) for s in range(6)))
    batches = TokenBatches(list(ids), list(masks), int(sum(m.sum() for m in masks)), 24)
    monkeypatch.setattr(statistics, "HELD_BYTES", 1)  # one row per slice
    monkeypatch.setattr(statistics, "MIN_SLICE_TOKENS", 1)
    sliced = collect_statistics(a, b, fam, a.config, batches)
    assert sliced.num_tokens == whole.num_tokens
    for name, sp in whole.spaces.items():
        assert sliced.spaces[name].n == sp.n
        torch.testing.assert_close(sliced.spaces[name].correlation(), sp.correlation(), atol=1e-6, rtol=0)


def test_last_layer_at_masked_positions_gives_the_full_forward_logits():
    # The last layer's position-wise tail runs only where logits are needed; the logits must be
    # those of the whole forward pass, padding and several layers included, for each family.
    # The last layer's attention is asked queries at the selected positions only.
    from permerge_core.evaluation import _position_wise_tail, mlm_logits_at

    for family, module in (("bert", "cls"), ("roberta", "lm_head")):
        model = random_model(family, "mlm", seed=3, layers=3, hidden=16, heads=4, ffn=32).eval()
        assert _position_wise_tail(model).self_attention is not None
        ids, mask = random_ids(batch=5, length=12, seed=5, vocab=model.config.vocab_size)
        mask[1, 7:] = 0  # padding in one row
        positions = torch.zeros_like(mask, dtype=torch.bool)
        positions[0, [1, 4]] = positions[1, 6] = positions[3, 0] = positions[3, 11] = True
        positions[4] = True  # every position of a row; row 2 has none
        with torch.no_grad():
            fast = mlm_logits_at(model, module, ids, mask, positions)
            full = mlm_logits_at(model, module, ids, mask, positions, tail_at_positions=False)
            everywhere = getattr(model, module)(model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state)
        assert fast.shape == (int(positions.sum()), model.config.vocab_size)
        torch.testing.assert_close(fast, full, rtol=0, atol=1e-5)
        torch.testing.assert_close(fast, everywhere[positions], rtol=0, atol=1e-5)
        assert not torch.equal(fast[0], fast[1])  # different positions, different logits


def test_the_float32_pair_sums_products_as_precisely_as_float64(monkeypatch):
    # The cross sum is held as two float32 matrices and folded with TwoSum. With a fold after
    # every slice (the most rounding it can see), it must stay at float32-product precision
    # over thousands of slices, where one plain float32 running sum drifts.
    import permerge_core.statistics as statistics
    from permerge_core.statistics import SpaceStats

    monkeypatch.setattr(statistics, "FOLD_TOKENS", 1)
    gen = torch.Generator().manual_seed(0)
    xs = [(torch.randn(4, 6, generator=gen) + 3, torch.randn(4, 6, generator=gen) - 2) for _ in range(3000)]
    space = SpaceStats.zeros(6)
    naive = torch.zeros(6, 6)
    shift_a, shift_b = xs[0][0].mean(0), xs[0][1].mean(0)
    for xa, xb in xs:
        space.add(xa, xb)
        naive += (xa - shift_a).t() @ (xb - shift_b)
    exact = sum((xa.double() - shift_a.double()).t() @ (xb.double() - shift_b.double()) for xa, xb in xs)
    scale = exact.abs().max()
    paired = (space.cross_sum() - exact).abs().max() / scale
    plain = (naive.double() - exact).abs().max() / scale
    assert paired < 1e-6, paired
    assert plain > 10 * paired, (plain, paired)
    space.compact()
    assert space.cross_low is None and space.cross.dtype == torch.float32
    torch.testing.assert_close(space.cross.double(), exact, atol=1e-6 * float(scale), rtol=0)


def test_gathering_b_through_the_plan_equals_interpolating_a_stored_b_prime():
    # B′ is not stored: each λ gathers B through the permutation plan. Every parameter at
    # every λ must be bitwise what interpolating towards a materialised B′ gives.
    from permerge_core.interpolation import Interpolator

    for family, kind in (("bert", "mlm"), ("roberta", "mlm"), ("bert", "classification")):
        a = random_model(family, kind, seed=1, layers=2, hidden=16, heads=4, ffn=32)
        b = random_model(family, kind, seed=2, layers=2, hidden=16, heads=4, ffn=32)
        fam, head = head_for(b)
        for residual in ("first", "sep", "none"):
            matching = random_matching(b.config, "heads", residual, seed=7)
            stored = Interpolator(a, permuted_model(b, fam, head, 2, matching))
            gathered = Interpolator(a, b, plan=plan_for_matching(fam, head, 2, matching))
            for lam in (0.0, 0.3, 0.5, 1.0):
                want = dict(stored.set(lam).named_parameters())
                for name, p in gathered.set(lam).named_parameters():
                    assert torch.equal(p, want[name]), (family, kind, residual, lam, name)


def _masked_batches(model, seed=0):
    from permerge_core.data import MaskedBatch

    out = []
    for s, (batch, length) in enumerate(((3, 9), (4, 14), (2, 20), (5, 11))):
        ids, mask = random_ids(batch=batch, length=length, seed=seed + s, vocab=model.config.vocab_size)
        mask[0, length - 3 :] = 0  # padding in each batch's first row
        gen = torch.Generator().manual_seed(seed + s)
        positions = (torch.rand(ids.shape, generator=gen) < 0.3) & mask.bool()
        positions[1, 0] = True
        out.append(MaskedBatch(ids, mask, positions, ids[positions].roll(1)))  # some targets right, most wrong
    return out


def test_parallel_evaluation_equals_chunk_by_chunk_evaluation(monkeypatch):
    # The chunks run side by side on the CPU's threads; the loss, the hit count and the number
    # of predictions must be those of running the same chunks one after another, and the
    # thread count must be what it was before.
    import permerge_core.evaluation as evaluation

    model = random_model("bert", "mlm", seed=7, layers=3, hidden=16, heads=4, ffn=32).eval()
    batches = _masked_batches(model)
    monkeypatch.setattr(evaluation, "EVAL_CHUNK_BYTES", 2 * 20 * 32 * 4)  # 2-row chunks: more chunks than threads
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        calls = []
        real_map = evaluation.map_chunks
        monkeypatch.setattr(evaluation, "map_chunks", lambda fn, chunks, *a, **k: calls.append(len(chunks)) or real_map(fn, chunks, *a, **k))
        parallel = evaluation.mlm_loss(model, "cls", batches)
        assert calls and calls[0] > 2 and torch.get_num_threads() == 2
        monkeypatch.setattr(evaluation, "map_chunks", lambda fn, chunks, *a, **k: [fn(c) for c in chunks])
        serial = evaluation.mlm_loss(model, "cls", batches)
    finally:
        torch.set_num_threads(threads)
    assert parallel.num_predictions == serial.num_predictions == sum(int(b.positions.sum()) for b in batches)
    assert parallel.accuracy == serial.accuracy
    assert abs(parallel.loss - serial.loss) <= 1e-6 * abs(serial.loss)


def test_map_chunks_keeps_chunk_order_and_raises_a_workers_error():
    import pytest

    from permerge_core.parallel import map_chunks

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        seen_threads = []

        def work(k):
            seen_threads.append(torch.get_num_threads())
            return k * k

        assert map_chunks(work, list(range(7)), cost=lambda k: k) == [k * k for k in range(7)]
        assert set(seen_threads) == {1}  # each worker ran on one intra-op thread
        assert torch.get_num_threads() == 2

        def fail(k):
            if k == 3:
                raise ValueError("chunk 3")
            return k

        with pytest.raises(ValueError, match="chunk 3"):
            map_chunks(fail, list(range(5)))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_argmax_hits_counts_exactly_what_argmax_counts():
    from permerge_core.evaluation import argmax_hits

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=gen)
    logits[:8, 3] = logits[:8, 7] = 5.0  # exact ties: argmax takes the first maximal index (3)
    logits[8, 2] = float("nan")  # argmax ranks NaN highest
    targets = torch.randint(0, 10, (64,), generator=gen)
    targets[:4], targets[4:8], targets[8] = 7, 3, 2
    targets[9:30] = logits[9:30].argmax(-1)
    expected = int((logits.argmax(-1) == targets).sum())
    assert argmax_hits(logits, targets) == expected
    assert expected >= 21 + 4 + 1  # the planted hits, the tie rule and the NaN row are all exercised


def test_the_tail_hook_stops_only_the_thread_that_asked():
    # While an evaluation holds the stopping hook on a model, another use of that model on
    # another thread (or this one, outside an evaluation) must run the whole encoder.
    from permerge_core.evaluation import _logits_at, _position_wise_tail, tail_stop

    model = random_model("bert", "mlm", seed=3, layers=2, hidden=16, heads=4, ffn=32).eval()
    ids, mask = random_ids(batch=2, length=8, seed=1, vocab=model.config.vocab_size)
    positions = torch.ones_like(mask, dtype=torch.bool)
    tail = _position_wise_tail(model)
    with torch.no_grad():
        whole = model(input_ids=ids, attention_mask=mask).logits
        with tail_stop(tail):
            again = model(input_ids=ids, attention_mask=mask).logits
            fast = _logits_at(model, "cls", ids, mask, positions, tail)
    assert torch.equal(again, whole)
    torch.testing.assert_close(fast, whole[positions], rtol=0, atol=1e-5)


def test_row_chunks_drop_only_padding_that_no_row_of_the_chunk_needs(monkeypatch):
    import permerge_core.evaluation as evaluation
    from permerge_core.data import MaskedBatch

    model = random_model("bert", "mlm", seed=7, layers=2, hidden=16, heads=4, ffn=32).eval()
    ids, _ = random_ids(batch=6, length=12, seed=2, vocab=model.config.vocab_size)
    lengths = [3, 4, 4, 7, 9, 12]  # sorted, as data.tokenize makes them
    mask = torch.tensor([[1] * n + [0] * (12 - n) for n in lengths])
    positions = torch.zeros_like(mask, dtype=torch.bool)
    for row, n in enumerate(lengths):
        positions[row, n - 1] = positions[row, 0] = True
    batch = MaskedBatch(ids, mask, positions, ids[positions])
    chunks = list(evaluation.row_chunks(batch, 32, budget=2 * 12 * 32 * 4))  # two rows per chunk
    assert [c.input_ids.shape for c in chunks] == [(2, 4), (2, 7), (2, 12)]
    assert torch.equal(torch.cat([c.targets for c in chunks]), batch.targets)
    whole = evaluation.mlm_loss(model, "cls", [batch])
    monkeypatch.setattr(evaluation, "EVAL_CHUNK_BYTES", 2 * 12 * 32 * 4)
    chunked = evaluation.mlm_loss(model, "cls", [batch])
    assert chunked.num_predictions == whole.num_predictions == 12
    assert abs(chunked.loss - whole.loss) <= 1e-6 * whole.loss and chunked.accuracy == whole.accuracy


def test_the_last_layer_stops_after_its_attention_where_queries_cannot_be_cut():
    # A self-attention that is causal, or a config with relative positions, is not what
    # `_attention_at` computes: the last layer's attention then runs at every position, and
    # the tail still runs at the selected positions only.
    from permerge_core.evaluation import _position_wise_tail, mlm_logits_at

    model = random_model("bert", "mlm", seed=3, layers=2, hidden=16, heads=4, ffn=32).eval()
    model.config.position_embedding_type = "relative_key"
    tail = _position_wise_tail(model)
    assert tail is not None and tail.self_attention is None
    ids, mask = random_ids(batch=3, length=10, seed=4, vocab=model.config.vocab_size)
    mask[0, 6:] = 0
    positions = torch.zeros_like(mask, dtype=torch.bool)
    positions[0, 2] = positions[2, [0, 9]] = True
    with torch.no_grad():
        fast = mlm_logits_at(model, "cls", ids, mask, positions)
        full = mlm_logits_at(model, "cls", ids, mask, positions, tail_at_positions=False)
    torch.testing.assert_close(fast, full, rtol=0, atol=1e-5)


def test_task_evaluation_in_parallel_row_chunks_equals_whole_batches(monkeypatch):
    # Classifier logits per example, computed in 2-row chunks cut to their longest row and run
    # side by side, against each whole padded batch through the model at once.
    import permerge_core.tasks as tasks

    model = random_model("bert", "classification", seed=5, layers=2, hidden=16, heads=4, ffn=32, num_labels=3).eval()
    ids, masks, types, labels = [], [], [], []
    for s, (batch, length) in enumerate(((5, 12), (3, 17), (6, 9))):
        i, m = random_ids(batch=batch, length=length, seed=20 + s, vocab=model.config.vocab_size)
        m[torch.arange(batch), length - 1 - torch.arange(batch) % 4] = 0  # rows of different lengths
        m[:, 0] = 1
        m = (m.cumprod(1) > 0).long()  # right padding only
        ids.append(i), masks.append(m), types.append(torch.zeros_like(i)), labels.append(torch.arange(batch) % 3)
    batches = tasks.LabelledBatches(ids, masks, types, labels, sum(len(x) for x in labels))
    import permerge_core.evaluation as evaluation

    monkeypatch.setattr(evaluation, "EVAL_CHUNK_BYTES", 2 * 17 * 32 * 4 * 2)  # 2 rows of the widest batch per chunk, 2 workers
    threads = torch.get_num_threads()
    calls = []
    real_map = tasks.map_chunks
    monkeypatch.setattr(tasks, "map_chunks", lambda fn, chunks, *a, **k: calls.append([c[0].shape for c in chunks]) or real_map(fn, chunks, *a, **k))
    try:
        torch.set_num_threads(2)
        chunked = tasks.task_eval(model, batches)
    finally:
        torch.set_num_threads(threads)
    assert len(calls[0]) > len(ids) and any(shape[1] < 17 for shape in calls[0][3:5])  # chunked, and trimmed
    with torch.no_grad():
        logits = torch.cat([model(input_ids=i, attention_mask=m, token_type_ids=t).logits for i, m, t in zip(ids, masks, types)])
    gold = torch.cat(labels)
    assert abs(chunked.loss - float(torch.nn.functional.cross_entropy(logits, gold))) <= 1e-5
    assert chunked.metrics["accuracy"] == float((logits.argmax(-1) == gold).float().mean())


def test_interpolation_fills_parameter_groups_side_by_side_on_one_thread_each(monkeypatch):
    # θ(λ) is formed without an OpenMP team (its idle spinning competed with the evaluation
    # that follows): the parameters are split into two balanced groups, filled by map_chunks'
    # workers with one intra-op thread each (which worker takes which group is the pool's
    # choice: with a tiny model one worker may take both); the result is θ(λ), and the thread
    # count comes back.
    import permerge_core.interpolation as interpolation

    a = random_model("bert", "mlm", seed=1, layers=2, hidden=16, heads=4, ffn=32)
    b = random_model("bert", "mlm", seed=2, layers=2, hidden=16, heads=4, ffn=32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        interpolator = interpolation.Interpolator(a, b)
        sizes = [sum(t.numel() for t, *_ in group) for group in interpolator._groups]
        assert len(sizes) == 2 and max(sizes) <= 1.1 * min(sizes) + max(p.numel() for p in a.parameters())
        assert sum(sizes) == sum(p.numel() for p in a.parameters())
        seen = []
        real_mul = torch.mul
        monkeypatch.setattr(interpolation.torch, "mul", lambda *args, **kw: seen.append((threading.get_ident(), torch.get_num_threads())) or real_mul(*args, **kw))
        work = interpolator.set(0.25)
        assert {n for _, n in seen} == {1}
        assert threading.get_ident() not in {t for t, _ in seen}
        assert torch.get_num_threads() == 2
        for name, p in work.named_parameters():  # and it still computes θ(λ)
            want = real_mul(dict(b.named_parameters())[name], 0.75).add_(dict(a.named_parameters())[name], alpha=0.25)
            assert torch.equal(p, want), name
            assert not p.grad_fn
    finally:
        torch.set_num_threads(threads)
