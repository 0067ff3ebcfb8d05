"""The loss plane through A, B and B′, and the activation spreads along a path, on tiny random models."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from fixtures import random_model, random_text, save_model
from permerge_core import AlignSettings, Pipeline, PermergeError
from permerge_core import plane as plane_mod
from permerge_core.interpolation import lambda_grid

SETTINGS = AlignSettings(match_tokens=1500, eval_tokens=1000, lambdas=5)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("plane")
    a = save_model(random_model("bert", "mlm", seed=0, layers=2, hidden=16, heads=4, ffn=32), root / "a")
    b = save_model(random_model("bert", "mlm", seed=1, layers=2, hidden=16, heads=4, ffn=32), root / "b")
    text = root / "text.txt"
    text.write_text(random_text(300))
    return Pipeline(a, b, match_data=text, eval_data=text, cache_dir=root / "cache")


def test_the_basis_places_b_at_y_1_and_matches_the_weight_distances(pipeline):
    basis = pipeline.plane_basis(SETTINGS)
    a = dict(pipeline.a.model.named_parameters())
    b = dict(pipeline.b.model.named_parameters())
    b_prime = dict(pipeline._interpolator_for(SETTINGS, "permuted").set(0.0).named_parameters())
    dist = lambda x, y: math.sqrt(sum(float((x[n].detach().double() - y[n].detach().double()).square().sum()) for n in x))  # noqa: E731
    assert basis.distance_b == pytest.approx(dist(b, a), rel=1e-9)
    assert basis.norm_u == pytest.approx(dist(b_prime, a), rel=1e-9)
    # B = A + x_B·u + v with v ⟂ u: Pythagoras in weight space, and the angle's cosine.
    assert basis.distance_b ** 2 == pytest.approx((basis.x_b * basis.norm_u) ** 2 + basis.norm_v ** 2, rel=1e-9)
    assert math.cos(math.radians(basis.angle_degrees)) * basis.distance_b == pytest.approx(basis.x_b * basis.norm_u, rel=1e-6)
    # Alignment brings B closer to A here, as it usually does.
    assert basis.norm_u < basis.distance_b


def test_coefficients_rebuild_the_three_models():
    x_b = 0.37
    assert plane_mod.coefficients(0.0, 0.0, x_b) == (1.0, 0.0, 0.0)  # A
    assert plane_mod.coefficients(1.0, 0.0, x_b) == (0.0, 1.0, 0.0)  # B′
    alpha, beta, gamma = plane_mod.coefficients(x_b, 1.0, x_b)  # B
    assert (alpha, beta, gamma) == pytest.approx((0.0, 0.0, 1.0), abs=1e-15)
    for x, y in ((0.3, -0.2), (1.4, 0.9)):
        assert sum(plane_mod.coefficients(x, y, x_b)) == pytest.approx(1.0, abs=1e-15)


def test_combine_forms_the_plane_point_exactly_where_it_is_a_model(pipeline):
    interpolator = pipeline._interpolator_for(SETTINGS, "permuted")
    b_prime = {n: p.clone() for n, p in interpolator.set(0.0).named_parameters()}
    b = dict(pipeline.b.model.named_parameters())
    a = dict(pipeline.a.model.named_parameters())
    work = dict(interpolator.combine(0.0, 0.0, 1.0).named_parameters())
    assert all(torch.equal(work[n], b[n]) for n in b)
    work = dict(interpolator.combine(0.0, 1.0, 0.0).named_parameters())
    assert all(torch.equal(work[n], b_prime[n]) for n in b)
    work = dict(interpolator.combine(0.2, 0.5, 0.3).named_parameters())
    for n in a:
        assert torch.allclose(work[n], 0.2 * a[n] + 0.5 * b_prime[n] + 0.3 * b[n], atol=1e-6)


def test_plane_points_equal_the_endpoint_losses_of_align(pipeline):
    report = pipeline.run(SETTINGS)
    plane = pipeline.plane(SETTINGS, grid=3, margin=0.1)
    points = plane["points"]
    # A's point is L(A) from A's own model, as the report's endpoint is: compare it with θ(1) on
    # both paths instead, evaluated on the working model (bitwise A), not read back from L(A).
    assert points["a"]["loss"] == pytest.approx(report["curves"]["vanilla"][-1][1], abs=1e-9)
    assert points["a"]["loss"] == pytest.approx(report["curves"]["permuted"][-1][1], abs=1e-9)
    assert points["b"]["loss"] == pytest.approx(report["endpoint_loss"]["b"], abs=1e-9)
    assert points["b_prime"]["loss"] == pytest.approx(report["endpoint_loss"]["b_prime"], abs=1e-9)
    assert points["b_prime"]["loss"] == pytest.approx(points["b"]["loss"], abs=1e-4)  # B′ ≡ B: the same function
    assert (points["b"]["x"], points["b"]["y"]) == (pipeline.plane_basis(SETTINGS).x_b, 1.0)
    assert plane["complete"] and len(plane["grid"]) == 3 and all(len(row) == 3 and None not in row for row in plane["grid"])


def test_the_grid_cells_at_the_three_models_coordinates_have_their_losses(pipeline):
    """A grid point is θ(x, y) = α·A + β·B′ + γ·B; at B's coordinates (x_B, 1) it must be B. The
    settings do not preserve the function, so B′'s loss differs from B's and a wrong convention
    (B′ where B belongs) shows. B's loss comes from B's own model in a pipeline of its own."""
    s = replace(SETTINGS, attention="ignore-heads")
    x_b = pipeline.plane_basis(s).x_b
    plane = pipeline.plane(s, axes=([0.0, x_b, 1.0], [0.0, 1.0]))  # grid[j][i]: the loss at (x[i], y[j])
    own_b = Pipeline(pipeline.b.source, pipeline.a.source, match_data=pipeline.match_path, eval_data=pipeline.eval_path,
                     cache_dir=None).loss_of_a(s)["loss"]
    b_prime = pipeline.curve(s, "permuted")[0]["loss"]  # θ(0) of the permuted path
    assert abs(b_prime - own_b) > 1e-2
    assert plane["grid"][1][1] == pytest.approx(own_b, abs=1e-6)
    assert plane["grid"][0][0] == pytest.approx(pipeline.loss_of_a(s)["loss"], abs=1e-6)
    assert plane["grid"][0][2] == pytest.approx(b_prime, abs=1e-6)


def test_the_row_y_0_is_the_permuted_path(pipeline):
    grid = lambda_grid(SETTINGS.lambdas)
    curve = pipeline.curve(SETTINGS, "permuted")
    plane = pipeline.plane(SETTINGS, axes=([1.0 - lam for lam in grid], [0.0, 0.5]))
    row = plane["grid"][0]
    for lam, point, loss in zip(grid, curve, row):
        assert point["lambda"] == lam
        assert loss == pytest.approx(point["loss"], abs=1e-5)
    # ...and the plane is not flat: the other row differs.
    assert max(abs(a - b) for a, b in zip(plane["grid"][1], row)) > 1e-3


def test_identical_models_are_a_clear_message_not_a_division_by_zero(tmp_path):
    model = save_model(random_model("bert", "mlm", seed=0, layers=2, hidden=16, heads=4, ffn=32), tmp_path / "a")
    text = tmp_path / "text.txt"
    text.write_text(random_text(200))
    p = Pipeline(model, model, match_data=text, eval_data=text, cache_dir=None)
    with pytest.raises(PermergeError, match="same model") as err:
        p.plane(SETTINGS, grid=3)
    assert err.value.fix and "two checkpoints" in err.value.fix


def test_b_on_the_line_through_a_and_b_prime_is_a_clear_message(pipeline):
    a = pipeline.a.model
    with pytest.raises(PermergeError, match="line through A and B′"):
        plane_mod.basis(a, pipeline.b.model, pipeline.b.model)  # B′ = B: nothing was aligned


def test_fill_order_is_coarse_to_fine_and_covers_every_cell_once():
    for n in (2, 3, 5, 15, 16):
        order = plane_mod.fill_order(n, n)
        assert sorted(order) == [(i, j) for i in range(n) for j in range(n)]
    order = plane_mod.fill_order(15, 15)
    assert set(order[:9]) == {(i, j) for i in (0, 8, 14) for j in (0, 8, 14)}  # the frame and centre first


def test_a_stopped_plane_is_partial_and_the_next_call_goes_on(tmp_path):
    a = save_model(random_model("bert", "mlm", seed=0, layers=2, hidden=16, heads=4, ffn=32), tmp_path / "a")
    b = save_model(random_model("bert", "mlm", seed=2, layers=2, hidden=16, heads=4, ffn=32), tmp_path / "b")
    text = tmp_path / "text.txt"
    text.write_text(random_text(200))
    p = Pipeline(a, b, match_data=text, eval_data=text, cache_dir=tmp_path / "cache")
    seen = []
    partial = p.plane(SETTINGS, grid=5, on_point=seen.append, should_stop=lambda: len(seen) >= 9)
    assert not partial["complete"] and partial["computed"] == 9
    assert set(partial["points"]) == {"a", "b", "b_prime"}  # the three models come first: the colour scale's reference
    computed = {(i, j) for j, row in enumerate(partial["grid"]) for i, v in enumerate(row) if v is not None}
    assert computed == {(i, j) for i in (0, 2, 4) for j in (0, 2, 4)}  # the coarse pass spans the whole plane
    evaluated = []
    whole = p.plane(SETTINGS, grid=5, on_point=lambda plane: evaluated.append(plane["computed"]))
    assert whole["complete"] and evaluated[0] == 10  # went on from the 9 it had
    assert all(whole["grid"][j][i] == partial["grid"][j][i] for i, j in computed)
    # Cached on disk by content: a fresh pipeline reads it back without evaluating anything.
    again = Pipeline(a, b, match_data=text, eval_data=text, cache_dir=tmp_path / "cache")
    assert again.plane(SETTINGS, grid=5) == json.loads(json.dumps(whole))


def test_plane_csv_has_every_cell_and_the_three_models(pipeline):
    plane = pipeline.plane(SETTINGS, grid=3, margin=0.1)
    lines = plane_mod.plane_csv(plane).strip().splitlines()
    assert lines[0] == "point,x,y,loss,accuracy"
    assert len(lines) == 1 + 9 + 3
    assert [line.split(",")[0] for line in lines[-3:]] == ["a", "b", "b_prime"]


def test_activation_spread_ratio_is_1_at_both_ends(pipeline):
    for which in ("vanilla", "permuted"):
        spreads = pipeline.activation_spreads(SETTINGS, which)
        assert spreads["lambdas"] == lambda_grid(SETTINGS.lambdas)
        assert spreads["spaces"] == ["layer.0.ffn", "layer.1.ffn", *(f"residual.{n}" for n in range(5))]
        for space in spreads["spaces"]:
            assert spreads["mean"][space][0] == pytest.approx(1.0, abs=1e-12)
            assert spreads["mean"][space][-1] == pytest.approx(1.0, abs=1e-12)
            assert spreads["median"][space][0] == pytest.approx(1.0, abs=1e-12)
        # Between the ends it is a measurement, not a constant.
        assert any(abs(spreads["mean"][s][2] - 1.0) > 1e-3 for s in spreads["spaces"])


def test_unit_spreads_follow_the_permutation(pipeline):
    """B′'s FFN units are B's, reordered: their spreads are B's, reordered the same way."""
    from permerge_core.activations import unit_spreads

    inputs = [dict(input_ids=i, attention_mask=m) for i, m in pipeline.eval_set(SETTINGS)[0]]
    family, layers = pipeline.a.family, pipeline.a.num_layers
    of_b = unit_spreads(pipeline.b.model, family, layers, inputs)
    of_b_prime = unit_spreads(pipeline._interpolator_for(SETTINGS, "permuted").set(0.0), family, layers, inputs)
    perm = torch.as_tensor(pipeline.matching(SETTINGS).permutations["layer.0.ffn"])
    assert torch.allclose(of_b_prime["layer.0.ffn"], of_b["layer.0.ffn"][perm], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(of_b_prime["layer.0.ffn"], of_b["layer.0.ffn"], rtol=1e-3)


def test_cli_plane_writes_plane_json_and_csv_whose_points_are_aligns_endpoints(tiny_pair, tmp_path, capsys):
    from permerge_core.cli import main

    args = ["--model-a", tiny_pair["a"], "--model-b", tiny_pair["b"], "--match-data", tiny_pair["text"], "--eval-data", tiny_pair["text"],
            "--match-tokens", "1500", "--eval-tokens", "1000", "--lambdas", "5", "--cache-dir", tmp_path / "cache", "--quiet"]
    args = [str(a) for a in args]
    assert main(["align", *args, "--out", str(tmp_path / "align")]) == 0
    assert main(["plane", *args, "--out", str(tmp_path / "plane"), "--grid", "3", "--margin", "0.5"]) == 0
    assert "|u| = |B′ − A|" in capsys.readouterr().out
    report = json.loads((tmp_path / "align" / "report.json").read_text())
    plane = json.loads((tmp_path / "plane" / "plane.json").read_text())
    for key in ("grid", "x", "y", "points", "basis", "settings", "models"):
        assert key in plane, key
    assert len(plane["grid"]) == 3 and all(len(row) == 3 for row in plane["grid"])
    assert plane["y"] == pytest.approx([-0.5, 0.5, 1.5])
    assert {k: plane["points"][k]["loss"] for k in ("a", "b", "b_prime")} == pytest.approx(report["endpoint_loss"], abs=1e-9)
    assert plane["models"]["a"]["fingerprint"] == report["models"]["a"]["fingerprint"]
    assert plane["settings"]["eval_tokens"] == 1000
    assert set(plane["basis"]) >= {"norm_u", "norm_v", "angle_degrees", "x_b", "distance_b"}
    assert len((tmp_path / "plane" / "plane.csv").read_text().strip().splitlines()) == 1 + 9 + 3


def test_cli_plane_refuses_identical_models_and_a_bad_grid_in_one_line(tiny_pair, tmp_path, capsys):
    from permerge_core.cli import main

    same = ["--model-a", str(tiny_pair["a"]), "--model-b", str(tiny_pair["a"]), "--match-data", str(tiny_pair["text"]),
            "--eval-data", str(tiny_pair["text"]), "--match-tokens", "1500", "--eval-tokens", "500", "--no-cache", "--quiet",
            "--out", str(tmp_path / "out")]
    assert main(["plane", *same, "--grid", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "same model" in err and "Fix:" in err
    with pytest.raises(SystemExit) as exit_:
        main(["plane", *same, "--grid", "1"])
    assert exit_.value.code == 2 and "must be 2 to" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_default_axes_put_a_and_b_prime_exactly_on_the_grid():
    basis = plane_mod.Basis(x_b=0.5, norm_u=1.0, norm_v=1.0, distance_b=1.2, angle_degrees=60.0)
    xs, ys = plane_mod.axes(basis, plane_mod.DEFAULT_GRID, plane_mod.DEFAULT_MARGIN)
    assert 0.0 in xs and 1.0 in xs and 0.0 in ys and 1.0 in ys
    assert (xs[0], xs[-1], ys[0], ys[-1]) == pytest.approx((-0.2, 1.2, -0.2, 1.2))
    wide = plane_mod.Basis(x_b=1.7, norm_u=1.0, norm_v=1.0, distance_b=2.0, angle_degrees=30.0)
    xs, _ = plane_mod.axes(wide, 5, 0.5)
    assert xs == pytest.approx([-0.5, 0.175, 0.85, 1.525, 2.2])  # covers B at x = 1.7 with the margin


def test_png_export_of_the_landscape_works_headless_where_kaleido_and_chromium_are(request):
    from permerge_app import charts

    if not charts.png_export_available():
        pytest.skip("kaleido or Chromium is not installed here: the page offers the chart toolbar's PNG instead")
    pipeline = request.getfixturevalue("pipeline")
    plane = pipeline.plane(SETTINGS, grid=3, margin=0.1)
    curves = {w: pipeline.curve(SETTINGS, w) for w in ("vanilla", "permuted")}
    png = charts.loss_plane(plane, curves, "tiny pair").to_image(format="png", width=500, height=400)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
