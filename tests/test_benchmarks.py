"""The benchmark's own logic that could mislead: reading the app's chart timeline."""

from __future__ import annotations

import pytest

from benchmarks.app_interactive import _timings


def test_app_timings_wait_for_the_new_curve_not_the_old_one():
    clicked = 1000.0
    log = [
        (900.0, [["vanilla", 5], ["permuted", 5]]),  # before the click
        (1010.0, [["vanilla", 5], ["permuted", 5]]),  # the old chart, still complete after the click
        (1400.0, [["vanilla", 5]]),  # the new run's first draw: the old chart is gone
        (1900.0, [["vanilla", 5], ["permuted (computing…)", 1]]),
        (2600.0, [["vanilla", 5], ["permuted (computing…)", 3]]),
        (3250.0, [["vanilla", 5], ["permuted", 5]]),
    ]
    assert _timings(log, clicked, lambdas=5) == pytest.approx({"first_point": 0.9, "full_curve": 2.25})


def test_app_timings_are_none_when_the_new_curve_never_shows():
    log = [(1010.0, [["vanilla", 5], ["permuted", 5]])]
    assert _timings(log, 1000.0, lambdas=5) == {"first_point": None, "full_curve": None}


def test_the_arithmetic_floor_is_compared_with_the_median_evaluated_point():
    from benchmarks.report import render_floor

    floor = {"matmul_flops_per_point": 40e9, "gemm_flops_per_s": 160e9, "threads": 2, "seconds_per_point": 0.25, "points": 20, "curve_seconds": 5.0}
    workload = {
        "floor": floor,
        # the remembered θ(1) (0 s) is not an evaluation; the median of the rest is 0.5 s
        "lambda_vanilla": [{"seconds": 0.4}, {"seconds": 0.5}, {"seconds": 0.9}],
        "lambda_permuted": [{"seconds": 0.6}, {"seconds": 0.45}, {"seconds": 0.0}],
    }
    text = "\n".join(render_floor(workload))
    assert "40.0 GFLOP" in text and "160 GFLOP/s on 2 threads" in text
    assert "at least 0.250 s per point and 5.00 s for a new 20-point permuted curve" in text
    assert "Measured: 0.500 s per point" in text and "the floor is 0.50 of that" in text
    assert render_floor({"lambda_vanilla": []}) == []


def test_the_arithmetic_floor_counts_every_chunks_products_and_restores_the_threads():
    # The FLOP counter sees only its own thread: the evaluation must run there, chunk by
    # chunk, and count the same products whatever the thread count was.
    from types import SimpleNamespace

    import torch

    from benchmarks.worker import arithmetic_floor
    from fixtures import random_model
    from test_performance_paths import _masked_batches

    model = random_model("bert", "mlm", seed=3, layers=2, hidden=16, heads=4, ffn=32).eval()
    p = SimpleNamespace(a=SimpleNamespace(model=model, head=SimpleNamespace(mlm_module="cls")))
    masked = _masked_batches(model)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        floor = arithmetic_floor(p, masked, points=20)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        assert arithmetic_floor(p, masked, points=20)["matmul_flops_per_point"] == floor["matmul_flops_per_point"]
    finally:
        torch.set_num_threads(threads)
    # at least the vocabulary projection of every masked position: 2 · hidden · vocab each
    predictions = sum(int(b.positions.sum()) for b in masked)
    assert floor["matmul_flops_per_point"] >= 2 * 16 * model.config.vocab_size * predictions
    assert floor["gemm_flops_per_s"] > 0 and floor["threads"] == 2
    assert floor["curve_seconds"] == 20 * floor["seconds_per_point"]


def test_the_statistics_floor_is_the_products_alone_over_the_plain_passes():
    from benchmarks.report import render_statistics_floor

    workload = {
        "yardstick": {"encoder_passes": 4.0, "cross_products": {
            "seconds": 1.5, "runs": [1.7, 1.5, 1.6], "products": 130, "multiply_adds": 140e9, "tokens": 65_536}},
        "ratios": {"statistics": 1.62},
    }
    text = "\n".join(render_statistics_floor(workload))
    assert "130 A×B products (140.0 G multiply-adds over 65,536 tokens) take 1.50 s alone" in text
    assert "best of 3: 1.70, 1.50, 1.60 s" in text and "0.38 of the plain encoder passes (4.00 s)" in text
    assert "cannot go below 1.38" in text and "measured: 1.62" in text
    assert render_statistics_floor({"yardstick": {}}) == []


def test_the_timed_products_are_the_statistics_passs_own_slices(monkeypatch):
    # The floor is only a floor if it times the products the pass really computes: one per
    # space per slice, over the tokens that slice folds in.
    from types import SimpleNamespace

    import torch

    from benchmarks.worker import cross_products_alone
    from fixtures import random_model
    from permerge_core.families import family_for_model_type
    from permerge_core.data import TokenBatches
    from permerge_core import statistics
    from permerge_core.statistics import collect_statistics, slice_token_counts, space_dims

    a = random_model("bert", "mlm", seed=1, layers=2, hidden=16, heads=4, ffn=32).eval()
    b = random_model("bert", "mlm", seed=2, layers=2, hidden=16, heads=4, ffn=32).eval()
    # a few rows' worth, so that the held bytes per token, not MIN_SLICE_TOKENS, set the slices
    monkeypatch.setattr(statistics, "HELD_BYTES", 20 * 40 * statistics._held_per_token(a.config))
    folded: dict[int, list[int]] = {}  # tokens each space's sums took in, per slice, in order
    add = statistics.SpaceStats.add_

    def recording_add(self, xa, xb, scratch=None):
        folded.setdefault(id(self), []).append(int(xa.shape[0]))
        return add(self, xa, xb, scratch)
    monkeypatch.setattr(statistics.SpaceStats, "add_", recording_add)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, a.config.vocab_size, (70, 40), generator=generator)
    mask = torch.ones_like(ids)
    mask[3:, 30:] = 0  # rows of two lengths: padding is left out
    ids[:, 0] = 2  # a special id at every row's start, dropped below
    batches = TokenBatches([ids[:40], ids[40:]], [mask[:40], mask[40:]], int(mask.sum()), 70)
    counts = slice_token_counts(a.config, batches, [2], drop_special=True)
    stats = collect_statistics(a, b, family_for_model_type("bert"), a.config, batches, special_ids=[2], drop_special=True)
    assert sum(counts) == stats.num_tokens == int(mask.sum()) - 70
    assert len(counts) > 2  # the batches were cut into several slices
    assert all(per_slice == counts for per_slice in folded.values()) and len(folded) == len(space_dims(a.config))

    tokenizer = SimpleNamespace(all_special_ids=[2])
    p = SimpleNamespace(a=SimpleNamespace(config=a.config, tokenizer=tokenizer))
    alone = cross_products_alone(p, SimpleNamespace(drop_special=True), batches, repeats=2)
    dims = space_dims(a.config).values()
    assert alone["products"] == len(counts) * len(dims)
    assert alone["multiply_adds"] == sum(counts) * sum(d * d for d in dims)
    assert len(alone["runs"]) == 2 and alone["seconds"] == min(alone["runs"])


def test_a_yardstick_pass_hands_its_freed_heap_back_before_the_pipelines_peak_restarts(monkeypatch):
    # What a yardstick pass allocated and freed must not count as the pipeline's memory: with
    # release_heap, the heap is trimmed after the pass and before the high-water mark restarts
    # from the resident set. (How much that frees is the allocator's business, measured by the
    # benchmark; here, the order of the steps.)
    from benchmarks import worker

    steps = []
    marks = iter([500.0, 700.0, 650.0, 900.0, 680.0, 690.0])  # the high-water mark at each reading
    monkeypatch.setattr(worker.PipelinePeak, "_hwm", staticmethod(lambda: steps.append("read") or next(marks)))
    monkeypatch.setattr(worker.PipelinePeak, "_reset", staticmethod(lambda: steps.append("reset") or True))
    monkeypatch.setattr(worker, "rss_peak_mb", lambda: 0.0)
    monkeypatch.setattr(worker, "release_free_heap", lambda: steps.append("release") or True)
    peak = worker.PipelinePeak()
    assert steps == ["read", "reset", "read"] and peak.peak == 700.0
    steps.clear()
    assert peak.yardstick(lambda: steps.append("pass") or "result", release_heap=True) == "result"
    assert steps == ["read", "pass", "read", "release", "reset"]
    assert (peak.peak, peak.process) == (700.0, 900.0)  # the pass's own 900 is the process's, not the pipeline's
    steps.clear()
    peak.yardstick(lambda: steps.append("pass"))
    assert steps == ["read", "pass", "read", "reset"]  # no release unless asked: λ points keep their heap warm


def _bracket(monkeypatch, seconds, passes):
    """Run the bracketed statistics with scripted timings (one statistics run per entry of
    `seconds`); returns (out, the passes' heap releases, how many times the sums were computed)."""
    import gc
    import weakref
    from types import SimpleNamespace

    from benchmarks import worker

    repeats = len(seconds)
    seconds, passes = iter(seconds), iter(passes)
    monkeypatch.setattr(worker, "_timed", lambda fn, *a: (fn(*a), next(seconds)))
    released, earlier, memo = [], [], {}

    class Peak:
        def yardstick(self, fn, *args, release_heap=False):
            released.append(release_heap)
            return next(passes)

    class Sums:
        num_tokens = 123

    def statistics(s):  # remembered, as the pipeline's are, until forgotten
        if "sums" not in memo:
            # the earlier runs' sums are gone: for BERT-base a second set alive at once is 0.45 GB
            gc.collect()
            assert all(ref() is None for ref in earlier)
            memo["sums"] = Sums()
            earlier.append(weakref.ref(memo["sums"]))
        return memo["sums"]

    p = SimpleNamespace(a=SimpleNamespace(model=None), b=SimpleNamespace(model=None),
                        statistics=statistics, forget_statistics=memo.clear)
    out = {"yardstick": {}, "stages": {}, "rss_mb": {}, "_peak": Peak()}
    worker._bracketed_statistics(p, SimpleNamespace(match_tokens=100), [], out, repeats)
    return out, released, len(earlier)


def test_repeated_statistics_report_the_run_with_the_median_ratio(monkeypatch):
    # warm-up, then Y S Y S Y S Y: each run is divided by the mean of the yardstick passes on
    # either side, and the run with the median ratio is reported, with its own bracket.
    out, released, computed = _bracket(monkeypatch, [6.4, 6.0, 12.4], [5.0, 4.0, 4.0, 8.0, 8.0])
    assert [r["ratio"] for r in out["statistics_runs"]] == [6.4 / 4.0, 6.0 / 6.0, 12.4 / 8.0]
    assert out["stages"]["statistics"] == 12.4 and out["yardstick"]["encoder_passes"] == 8.0  # median 1.55, not 1.0 or 1.6
    assert out["yardstick"]["encoder_passes_each"] == [4.0, 4.0, 8.0, 8.0]  # the untimed warm-up left out
    assert computed == 3 and out["num_tokens"] == 123  # forgotten before every run, not served from memory
    assert released == [True] * 5  # no yardstick pass leaves its heap in the pipeline's peak


def test_an_even_number_of_statistics_runs_reports_the_lower_middle(monkeypatch):
    out, _, computed = _bracket(monkeypatch, [6.0, 8.0], [9.0, 4.0, 4.0, 4.0])
    assert computed == 2 and out["stages"]["statistics"] == 6.0  # ratios 1.5 and 2.0


def test_a_scaling_budget_reports_its_median_process_and_lists_them_all():
    from benchmarks.report import _get, median_by_peak, render

    def run(peak, seconds):
        return {"num_tokens": 4096, "stages": {"statistics": seconds}, "ratios": {"statistics": seconds / 2},
                "rss_mb": {"pipeline_peak": peak, "peak_child": peak + 10, "after_load": 400}}

    small = median_by_peak([run(500, 1.0), run(560, 1.1), run(490, 1.2)])
    assert small["rss_mb"]["pipeline_peak"] == 500 and small["stages"]["statistics"] == 1.0
    assert [x["pipeline_peak"] for x in small["processes"]] == [500, 560, 490]  # in the order they ran
    large = median_by_peak([run(540, 4.0), run(530, 4.1)])  # an even count: the lower middle
    assert large["rss_mb"]["pipeline_peak"] == 530
    results = {"machine": {"cpu": "x", "cores": 2}, "workloads": {"scaling": {"x1": small, "x16": large}}}
    assert _get(results, "scaling_growth") == 530 / 500
    text = render(results)
    assert "| 500, 560, 490 |" in text and "| 540, 530 |" in text and "median pipeline peak" in text


def test_statistics_runs_are_listed_only_when_there_were_several():
    from benchmarks.report import render_statistics_runs

    runs = [{"seconds": 6.4, "encoder_passes": 4.0, "ratio": 1.6}, {"seconds": 6.0, "encoder_passes": 6.0, "ratio": 1.0}]
    text = "\n".join(render_statistics_runs("default", {"statistics_runs": runs}))
    assert "1.60 (6.40 s / 4.00 s), 1.00 (6.00 s / 6.00 s)" in text
    assert render_statistics_runs("default", {"statistics_runs": runs[:1]}) == []


def test_the_matching_row_shows_wall_and_cpu_against_direct_scipy():
    from benchmarks.report import check_targets, render

    timing = lambda wall, cpu: {"wall": wall, "cpu": cpu}  # noqa: E731
    matching = {
        "settings": {"ffn": True, "attention": "heads", "residual": "first"},
        "model": {"layers": 4, "hidden": 256, "heads": 4, "ffn": 1024}, "num_tokens": 8192,
        "first": timing(0.3, 0.5), "again": [timing(0.25, 0.45)], "direct_scipy": [timing(0.6, 0.62)],
        "ratio": 0.5, "cpu_ratio": 0.8,
    }
    results = {"machine": {"cpu": "x", "cores": 2}, "workloads": {"matching": matching}}
    results["targets"] = check_targets(results)
    text = render(results)
    assert "| wall s (8,192 matching tokens) | 0.300 | 0.250 | 0.600 | 0.50 |" in text
    assert "| cpu s (8,192 matching tokens) | 0.500 | 0.450 | 0.620 | 0.80 |" in text
    target = next(t for t in results["targets"] if t["target"].startswith("matching alone"))
    assert target["value"] == 0.5 and target["met"] is True
