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
