"""The app's display computations (permerge_app/views.py), without Streamlit: correlation
overviews, label balance, the curves' CSV."""

import numpy as np
import pytest

from permerge_app import views
from permerge_core.tasks import load_labelled
from test_tasks import _labelled_file


def test_views_alignment_and_zoom_window():
    rng = np.random.default_rng(0)
    m = rng.uniform(-1, 1, (300, 300))
    perm = rng.permutation(300)
    diag, matched = views.matched_pair(m, perm)
    assert np.allclose(np.diag(views.aligned(m, perm)), matched) and np.allclose(diag, np.diag(m))
    rows, cols = views.zoom_window(300, 300, 290, 0, 64)
    assert (rows.start, rows.stop, cols.start) == (236, 300, 0)


def test_label_balance_and_majority_baseline(tmp_path):
    data = load_labelled(_labelled_file(tmp_path / "task.tsv"), "sentence", "label")  # test_tasks' classifier_pair file
    rows = views.label_balance(data)
    assert [r["label"] for r in rows] == ["neg", "pos"]
    assert sum(r["examples"] for r in rows) == 80
    assert views.majority_baseline(data) == max(r["examples"] for r in rows) / 80 >= 0.5


def test_curves_csv_carries_every_task_metric():
    curves = {"vanilla": [{"lambda": 0.0, "loss": 0.5, "accuracy": 0.75, "f1": 0.5, "mcc": 0.25}]}
    lines = views.curves_csv(curves).splitlines()
    assert lines[0] == "curve,lambda,loss,accuracy,f1,mcc"
    assert lines[1] == "vanilla,0,0.500000,0.750000,0.500000,0.250000"


def test_pair_label_names_the_set_the_two_checkpoints_share():
    from permerge_core.sources import pair_label

    assert pair_label("/x/assets/decoders/seed-0", "/x/assets/decoders/seed-1") == "seed-0 ↔ seed-1 (decoders)"
    assert pair_label("/x/assets/models/seed-0/", "/x/assets/models/seed-1") == "seed-0 ↔ seed-1 (models)"
    assert pair_label("/runs/a/model", "/runs/b/model") == "a/model ↔ b/model"  # the names already differ by folder
    assert pair_label("org/bert-a", "other/bert-b") == "bert-a ↔ bert-b"


def test_barrier_bars_that_peak_at_the_same_lambda_stand_apart_and_alone_ones_stand_at_the_peak():
    from permerge_app import charts

    grid = [0.0, 0.5, 1.0]
    curves = {"vanilla": [{"lambda": x, "loss": y} for x, y in zip(grid, (1.0, 3.0, 1.0))],
              "permuted": [{"lambda": x, "loss": y} for x, y in zip(grid, (1.0, 2.9, 1.0))],
              "FFN only": [{"lambda": x, "loss": y} for x, y in zip(grid, (1.0, 1.2, 1.4))]}  # peaks at λ = 1
    fig = charts.loss_path(curves, 3, "t")
    bars = {t.name: t for t in fig.data if t.name.endswith(" barrier")}
    assert bars["vanilla barrier"].x[0] != bars["permuted barrier"].x[0]
    assert np.mean([bars["vanilla barrier"].x[0], bars["permuted barrier"].x[0]]) == pytest.approx(0.5)
    assert {bars["vanilla barrier"].textposition, bars["permuted barrier"].textposition} == {"top left", "top right"}
    assert bars["FFN only barrier"].x == (1.0, 1.0) and bars["FFN only barrier"].textposition == "top center"
    assert bars["permuted barrier"].y == (1.0, 2.9) and "λ = 0.50" in bars["permuted barrier"].hovertemplate


def test_a_partial_plane_is_drawn_as_its_computed_points_only():
    """Interpolating between a few computed points draws valleys nobody measured; a complete
    plane is a contour."""
    import math

    from permerge_app import charts

    basis = {"x_b": 0.4, "norm_u": 2.0, "norm_v": 3.0}
    points = {"a": {"loss": 1.0}, "b": {"loss": 1.2}, "b_prime": {"loss": 1.1}}
    grid = [[2.0, None, 3.0], [None, None, None], [1.5, None, 4.0]]  # grid[j][i]: the loss at (x[i], y[j])
    partial = {"x": [0.0, 0.5, 1.0], "y": [-1.0, 0.0, 1.0], "grid": grid, "basis": basis, "points": points, "complete": False}
    fig = charts.loss_plane(partial, {}, "t")
    assert not any(t.type == "contour" for t in fig.data)
    shown = next(t for t in fig.data if t.name == "computed points")
    assert sorted(zip(shown.x, shown.y, shown.customdata)) == [(0.0, -1.0, 2.0), (0.0, 1.0, 1.5), (1.0, -1.0, 3.0), (1.0, 1.0, 4.0)]
    assert list(shown.marker.color) == [math.log10(v - 1.1) for v in (2.0, 3.0, 1.5, 4.0)]
    full = charts.loss_plane({**partial, "grid": [[2.0] * 3] * 3, "complete": True}, {}, "t")
    assert [t.type for t in full.data][0] == "contour" and "1.50 units of x" in full.layout.title.subtitle.text
