"""The Streamlit app, page by page, with AppTest on tiny random models (no browser).

Each test presets the sidebar through st.session_state (the app's supported override) so
that it runs on a tiny pair in tmp, small token budgets and a private disk cache, then
asserts on what the page shows: numbers, chart data, error messages.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from fixtures import random_model, random_text, save_model
from permerge_app import views
from permerge_core import AlignSettings, Pipeline

ROOT = Path(__file__).resolve().parent.parent
LAMBDAS = 5


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("app")
    models = root / "models"
    seeds = [save_model(random_model("bert", "mlm", seed=s, layers=2, hidden=16, heads=4, ffn=32), models / f"seed-{s}") for s in (0, 1, 2)]
    deep = save_model(random_model("bert", "mlm", seed=3, layers=3, hidden=16, heads=4, ffn=32), root / "other" / "deep")
    text = root / "text.txt"
    text.write_text(random_text(300))
    return {"root": root, "models": models, "seeds": seeds, "deep": deep, "text": text}


@pytest.fixture(autouse=True)
def private_cache(world, monkeypatch):
    monkeypatch.setenv("PERMERGE_CACHE", str(world["root"] / "cache"))


def app(world, **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    preset = {
        "model_a": str(world["seeds"][0]), "model_b": str(world["seeds"][1]), "models_dir": str(world["models"]),
        "match_source": "path", "match_path": str(world["text"]), "eval_source": "path", "eval_path": str(world["text"]),
        "match_tokens": 1500, "eval_tokens": 1000, "lambdas": LAMBDAS,
    }
    preset.update(state)
    for key, value in preset.items():
        at.session_state[key] = value
    return at


def goto(at: AppTest, page: str) -> AppTest:
    at.run()
    return at.switch_page(f"pages/{page}.py").run()


def charts(at: AppTest) -> dict[str, dict]:
    return {c.key: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def arr(value) -> np.ndarray:
    """A figure's array as numpy: plotly stores numpy data as base64 typed arrays."""
    if isinstance(value, dict) and "bdata" in value:
        out = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        return out.reshape([int(n) for n in str(value["shape"]).split(",")]) if "shape" in value else out
    return np.asarray(value)


def no_crash(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not [e.value for e in at.error if "Unexpected error" in e.value]


def test_models_page_shows_both_models_losses_and_the_equivalence_badge(world):
    at = app(world).run()
    no_crash(at)
    rows = {r["property"]: r for r in at.dataframe[0].value.to_dict("records")}
    assert rows["layers"]["A"] == rows["layers"]["B"] == "2" and rows["layers"]["same"] == "✓"
    assert rows["attention heads"]["A"] == "4" and rows["FFN size"]["B"] == "32"
    assert any("Compatible" in s.value for s in at.success)
    badge = [s.value for s in at.success if "same function" in s.value]
    assert badge and "B′ computes the same function as B: max |Δlogit| = " in badge[0]
    assert float(badge[0].rsplit("= ", 1)[1]) < 1e-4
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["L(A), λ = 1"].endswith("nats") and metrics["L(B), λ = 0 vanilla"] == metrics["L(B′), λ = 0 permuted"]
    status = [c.value for c in at.sidebar.get("caption") if "Status" in c.value]
    assert status and "✓ statistics" in status[0] and "✓ matching" in status[0]


def test_incompatible_pair_is_explained_naming_both_values(world):
    at = app(world, model_b=str(world["deep"])).run()
    no_crash(at)
    errors = [e.value for e in at.error]
    assert any("number of layers: A has 2, B has 3" in e and "Fix:" in e for e in errors), errors
    rows = {r["property"]: r for r in at.dataframe[0].value.to_dict("records")}
    assert (rows["layers"]["A"], rows["layers"]["B"], rows["layers"]["same"]) == ("2", "3", "✗ differs")
    # The app keeps running: another page shows the same error, not a traceback.
    at.switch_page("pages/4_loss_path.py").run()
    no_crash(at)
    assert any("A has 2, B has 3" in e.value for e in at.error)


def test_bad_input_and_missing_models_give_clear_messages(world, tmp_path):
    at = app(world, eval_path=str(tmp_path / "nope.txt")).run()
    no_crash(at)
    assert any("does not exist" in e.value and "Fix:" in e.value for e in at.error)
    at = app(world, model_a=None, model_b=None).run()
    no_crash(at)
    assert any("Choose model A and model B" in i.value for i in at.info)
    at = app(world, model_b=str(tmp_path / "missing-folder")).run()
    no_crash(at)
    assert any("does not exist" in e.value for e in at.error)
    at = app(world, models_dir=str(tmp_path / "no-such-models")).run()
    no_crash(at)
    assert any("no-such-models does not exist" in c.value and "Type the path" in c.value for c in at.sidebar.get("caption"))
    (tmp_path / "empty-models").mkdir()
    at = app(world, models_dir=str(tmp_path / "empty-models")).run()
    assert any("No checkpoint folder" in c.value for c in at.sidebar.get("caption"))


def test_unusable_cache_folder_is_shown_under_the_status_and_the_page_still_works(world, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("PERMERGE_CACHE", str(blocker / "cache"))
    at = app(world).run()
    no_crash(at)
    assert at.metric and at.metric[0].value.endswith("nats")  # computed without the disk cache
    warnings = [c.value for c in at.sidebar.get("caption") if "disk cache off" in c.value]
    assert len(warnings) == 1 and "Fix:" in warnings[0]


def test_each_checkpoint_is_loaded_once_per_pair(world, tmp_path, monkeypatch):
    """The sidebar learns model A's head kind from its config.json, not by loading it: a pair
    costs two model loads (the pipeline's), not three."""
    from collections import Counter

    import permerge_core.pipeline
    from permerge_app import ui

    pair = [save_model(random_model("bert", "mlm", seed=s, layers=2, hidden=16, heads=4, ffn=32), tmp_path / f"m{s}") for s in (0, 1)]
    loads = Counter()
    for module in (permerge_core.pipeline, ui):
        original = module.load_checkpoint

        def counting(source, *args, original=original, **kwargs):
            loads[str(source)] += 1
            return original(source, *args, **kwargs)

        monkeypatch.setattr(module, "load_checkpoint", counting)
    at = app(world, model_a=str(pair[0]), model_b=str(pair[1])).run()
    no_crash(at)
    assert at.metric and at.metric[0].value.endswith("nats")
    assert loads == {str(pair[0]): 1, str(pair[1]): 1}


def test_non_preserving_mode_is_labelled(world):
    at = app(world, attention="ignore-heads").run()
    no_crash(at)
    warnings = [w.value for w in at.warning]
    assert any("not function-preserving" in w for w in warnings)  # the sidebar, where it is chosen
    assert any("attention ignore-heads is not function-preserving" in w and "max |Δlogit|" in w for w in warnings)  # the badge


def test_unexpected_error_is_a_message_not_a_traceback(world, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(views, "endpoint_losses", broken)
    at = app(world).run()
    assert not at.exception
    assert any("Unexpected error" in e.value and "simulated failure" in e.value for e in at.error)
    assert any(r["property"] == "layers" for r in at.dataframe[0].value.to_dict("records"))  # the page above still shows


def test_uploaded_text_is_used_via_a_content_addressed_file(world):
    at = app(world, match_source="upload").run()
    assert any("No matching text file has been uploaded" in e.value for e in at.error)
    data = world["text"].read_bytes()
    at.sidebar.get("file_uploader")[0].set_value(("mine.txt", data, "text/plain")).run()
    no_crash(at)
    path = Path(at.session_state["match_upload_path"])
    assert path.read_bytes() == data and path.stem == __import__("hashlib").sha256(data).hexdigest()
    assert any("same function" in s.value for s in at.success)


def test_correlations_page_shows_before_after_histogram_and_per_layer_line(world):
    at = goto(app(world), "2_correlations")
    no_crash(at)
    figs = charts(at)
    overview = figs["corr_overview"]["data"]
    before, after = arr(overview[0]["z"]), arr(overview[1]["z"])
    assert before.shape == after.shape == (32, 32)  # layer 0 FFN, small enough to show every cell
    # "after" is "before" with B's columns reordered: same values per row, larger diagonal.
    assert np.allclose(np.sort(before, axis=1), np.sort(after, axis=1))
    assert np.trace(after) > np.trace(before)
    layout = figs["corr_overview"]["layout"]
    assert layout["coloraxis"]["cmid"] == 0 and layout["coloraxis"]["cmin"] == -1 and layout["coloraxis"]["cmax"] == 1
    assert len(figs["corr_hist"]["data"]) == 2
    line = figs["corr_layers"]["data"]
    assert [t["name"] for t in line] == ["unaligned diagonal", "matched (aligned)"] and len(arr(line[0]["x"])) == 2
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["mean matched correlation"]) > float(metrics["mean correlation, unaligned diagonal"])


def test_heads_page_cost_matrix_graph_and_head_pair_block(world):
    at = goto(app(world), "3_heads")
    no_crash(at)
    figs = charts(at)
    cost = figs["heads_cost"]["data"]
    assert arr(cost[0]["z"]).shape == (4, 4)  # H×H
    assert sorted(arr(cost[1]["x"]).tolist()) == [0, 1, 2, 3]  # the assignment is a permutation of B's heads
    assert len(figs["heads_block"]["data"]) == 2 and arr(figs["heads_block"]["data"][0]["z"]).shape == (4, 4)  # d_k×d_k
    reach = np.abs(arr(figs["heads_block"]["data"][0]["z"])).max()  # the colours span the block's own range
    assert figs["heads_block"]["layout"]["coloraxis"]["cmax"] == pytest.approx(reach) == -figs["heads_block"]["layout"]["coloraxis"]["cmin"]
    assert "heads move" in figs["heads_graph"]["layout"]["title"]["text"]
    assert "moved head" in figs["heads_layers"]["layout"]["title"]["text"]
    # Monotonic: the table of what Head-Perm would have chosen.
    at.session_state["attention"] = "monotonic"
    at.run()
    no_crash(at)
    table = at.dataframe[0].value
    assert list(table["applied B head"]) == [0, 1, 2, 3] and sorted(table["Head-Perm B head"]) == [0, 1, 2, 3]


@pytest.fixture
def served_files(monkeypatch) -> dict[str, bytes]:
    """Every file the app hands to Streamlit's media store (downloads), by file id: the bytes a
    user's download would get."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    files: dict[str, bytes] = {}
    store = MemoryMediaFileStorage.load_and_get_id

    def recording(self, path_or_data, mimetype, kind, filename=None):
        file_id = store(self, path_or_data, mimetype, kind, filename)
        files[file_id] = self.get_file(file_id).content
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", recording)
    return files


def test_loss_path_under_both_matchers_shows_the_weights_barrier_beside_the_activations(world):
    at = goto(app(world, matcher="both"), "4_loss_path")
    no_crash(at)
    metrics = {m.label: m.value for m in at.metric}
    table = {r["curve"]: r for r in at.dataframe[0].value.to_dict("records")}
    assert {"vanilla barrier", "permuted barrier", "permuted (weights) barrier"} <= set(metrics)
    for name in ("vanilla", "permuted", "permuted (weights)"):
        assert metrics[f"{name} barrier"] == f"{table[name]['barrier (nats)']:.3f} nats"
    assert any(f"measured on 1,000 evaluation tokens at {LAMBDAS} λ points" in c.value for c in at.caption)  # the budget beside the barriers


def test_loss_path_shows_two_curves_barriers_and_variants(world, served_files):
    at = goto(app(world, variants=["FFN only"]), "4_loss_path")
    no_crash(at)
    fig = charts(at)["loss_final"]
    curves = {t["name"]: t for t in fig["data"] if t.get("name") in ("vanilla", "permuted", "FFN only")}
    assert set(curves) == {"vanilla", "permuted", "FFN only"}
    for trace in curves.values():
        assert arr(trace["x"]).tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1.0]) and len(arr(trace["y"])) == LAMBDAS
    assert fig["layout"]["yaxis"]["title"]["text"] == "loss (nats)"
    assert any("barrier" in (t.get("name") or "") for t in fig["data"])  # barriers marked on the chart
    table = {r["curve"]: r for r in at.dataframe[0].value.to_dict("records")}
    assert set(table) == {"vanilla", "permuted", "FFN only"}
    losses = arr(curves["permuted"]["y"]).tolist()
    assert table["permuted"]["barrier (nats)"] == pytest.approx(max(losses) - (losses[0] + losses[-1]) / 2)
    assert arr(curves["vanilla"]["y"])[-1] == losses[-1]  # λ = 1 is A on both paths
    # The CSV a user downloads holds exactly the pipeline's curves for these settings, computed
    # here afresh (no cache), to the 6 decimals it is written with.
    button = next(b for b in at.get("download_button") if "CSV" in b.proto.label)
    rows = list(csv.DictReader(io.StringIO(served_files[Path(button.proto.url).stem].decode())))
    p = Pipeline(world["seeds"][0], world["seeds"][1], match_data=world["text"], eval_data=world["text"], cache_dir=None)
    s = AlignSettings(match_tokens=1500, eval_tokens=1000, lambdas=LAMBDAS)
    expected = {"vanilla": p.curve(s, "vanilla"), "permuted": p.curve(s, "permuted"),
                "FFN only": p.curve(views.variant_settings(s, "FFN only"), "permuted")}
    assert [r["curve"] for r in rows] == [name for name in expected for _ in range(LAMBDAS)]
    for row, point in zip(rows, [pt for points in expected.values() for pt in points]):
        for key in ("lambda", "loss", "accuracy"):
            assert float(row[key]) == pytest.approx(point[key], abs=1e-6), (row, key)
    # Matcher `both`: the weight matching's path beside the activation matching's.
    at.session_state["matcher"] = "both"
    at.run()
    no_crash(at)
    names = {t.get("name") for t in charts(at)["loss_final"]["data"]}
    assert {"vanilla", "permuted", "permuted (weights)"} <= names
    assert "permuted (weights)" in {r["curve"] for r in at.dataframe[0].value.to_dict("records")}


def test_export_writes_a_loadable_model_and_the_exact_cli_command(world, tmp_path):
    target = tmp_path / "merged"
    at = goto(app(world, export_target=str(target), export_lambda=0.25), "5_export")  # off the middle: λ and 1 − λ differ
    no_crash(at)
    save = next(b for b in at.button if b.label == "Save merged model")
    save.click().run()
    no_crash(at)
    assert any("Wrote θ(λ=0.25)" in s.value for s in at.success)
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(target)
    AutoTokenizer.from_pretrained(target)
    assert model.config.num_hidden_layers == 2
    # The loss the page shows is the saved model's own, evaluated here from the folder.
    from permerge_core import Pipeline

    own = Pipeline(str(target), str(target), match_data=str(world["text"]), eval_data=str(world["text"]), cache_dir=None)
    loss = own.loss_of_a(AlignSettings(match_tokens=1500, eval_tokens=1000, lambdas=LAMBDAS))["loss"]
    assert {m.label: m.value for m in at.metric}["loss of θ(λ=0.25)"] == f"{loss:.3f} nats"
    # Never overwrite a non-empty folder unless asked.
    next(b for b in at.button if b.label == "Save merged model").click().run()
    assert any("not empty" in e.value for e in at.error)
    # The CLI command parses to exactly the app's settings.
    command = at.code[0].value
    assert command.startswith(".venv/bin/python -m permerge_core align ")  # as the README runs it
    from permerge_core.cli import build_parser

    args = build_parser().parse_args(shlex.split(command)[3:])
    assert (args.model_a, args.model_b, args.match_data, args.eval_data) == (str(world["seeds"][0]), str(world["seeds"][1]), str(world["text"]), str(world["text"]))
    assert (args.match_tokens, args.eval_tokens, args.lambdas, args.attention, args.residual, args.ffn) == (1500, 1000, LAMBDAS, "heads", "first", True)
    assert args.save_merged == str(target) and args.merge_lambda == 0.25
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Download permutations (JSON)" in labels
    next(b for b in at.button if b.label.startswith("Prepare the merged model as a zip")).click().run()
    no_crash(at)
    assert any(b.proto.label.startswith("Download merged model (zip") for b in at.get("download_button"))


def test_seeds_fills_the_matrix_and_opens_a_pair(world):
    seeds = [str(s) for s in world["seeds"]]
    at = goto(app(world, seeds_selected=seeds, lambdas=3), "6_seeds")
    no_crash(at)
    go = next(b for b in at.button if b.label.startswith("Compute"))
    assert go.label == "Compute 3 missing pair(s)"
    go.click().run()
    no_crash(at)
    fig = next(f for k, f in charts(at).items() if k.startswith("seeds_matrix"))
    vanilla, permuted = (arr(t["z"]).astype(float) for t in fig["data"])
    for z in (vanilla, permuted):  # the diagonal (a model against itself) is left blank, off the colour scale
        assert np.isfinite([z[0, 1], z[0, 2], z[1, 2]]).all() and np.isnan(np.diag(z)).all()
    pairs = np.array([z[i, j] for z in (vanilla, permuted) for i, j in ((0, 1), (0, 2), (1, 2))])
    assert fig["layout"]["coloraxis"]["cmin"] == pytest.approx(pairs.min()) and fig["layout"]["coloraxis"]["cmax"] == pytest.approx(pairs.max())
    assert "3 of 3 pairs" in fig["layout"]["title"]["text"]
    table = at.dataframe[0].value
    assert len(table) == 3
    v, p = table["vanilla barrier (nats)"], table["permuted barrier (nats)"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["vanilla barrier, mean ± sd over 3 pair(s)"] == f"{v.mean():.3f} ± {v.std(ddof=1):.3f} nats"
    assert metrics["permuted barrier"] == f"{p.mean():.3f} ± {p.std(ddof=1):.3f} nats"
    assert metrics["share of the vanilla barrier removed"] == f"{1 - p.mean() / v.mean():.0%}"
    # Computed through the grid code into the pipeline's disk cache: a fresh pipeline finds both paths there.
    from permerge_core import Pipeline

    p = Pipeline(seeds[1], seeds[2], match_data=world["text"], eval_data=world["text"], cache_dir=world["root"] / "cache")
    status = p.stage_status(AlignSettings(match_tokens=1500, eval_tokens=1000, lambdas=3))
    assert status["vanilla path"] == status["permuted path"] == "cached"
    # Choosing a pair opens its loss path with A and B set.
    at.selectbox(key="seeds_pick").set_value((1, 2)).run()
    next(b for b in at.button if b.label == "Open its loss path").click().run()
    no_crash(at)
    assert (at.session_state["model_a"], at.session_state["model_b"]) == (seeds[1], seeds[2])
    assert at.title[0].value == "Loss path"


def test_seeds_loads_a_grid_json_made_elsewhere(world, tmp_path):
    from permerge_core import grid

    seeds = [str(s) for s in world["seeds"]]
    small = AlignSettings(match_tokens=1500, eval_tokens=1000, lambdas=3)
    spec = grid.GridSpec(seeds, grid.parse_variants(["paper-attention"], small), match_data=str(world["text"]), eval_data=str(world["text"]))
    made = grid.run_grid(spec, grid.LocalEngine(), tmp_path / "g", log=lambda m: None)
    at = goto(app(world, seeds_selected=seeds[:2], lambdas=3), "6_seeds")
    at.get("file_uploader")[0].set_value(("grid.json", (tmp_path / "g" / "grid.json").read_bytes(), "application/json")).run()
    no_crash(at)
    at.selectbox(key="seeds_grid_variant").set_value("Head-Perm").run()
    fig = charts(at)["seeds_grid_matrix"]
    permuted = arr(fig["data"][1]["z"]).astype(float)
    assert permuted[1, 2] == pytest.approx(made["pairs"][2]["variants"]["Head-Perm"]["barrier"]["permuted"])
    assert "Head-Perm: 3 pairs" in fig["layout"]["title"]["text"]
    at.get("file_uploader")[0].set_value(("other.json", b'{"format": "something else"}', "application/json")).run()
    assert any("not a grid.json" in e.value for e in at.error)


def test_landscape_page_draws_the_plane_both_paths_and_the_activation_spreads(world):
    at = goto(app(world, plane_grid=3, plane_tokens=1000), "8_landscape")
    no_crash(at)
    assert at.title[0].value == "Landscape"
    assert any(i.value.startswith("Expected time: about") for i in at.info)  # stated before it starts
    assert "landscape" not in charts(at)
    at.button(key="plane_go").click().run()
    no_crash(at)
    fig = charts(at)["landscape"]
    contour = next(t for t in fig["data"] if t["type"] == "contour")
    assert arr(contour["z"]).shape == (3, 3) and len(arr(contour["x"])) == 3
    paths = {t["name"]: t for t in fig["data"] if t.get("name", "").endswith("path (A–B)") or t.get("name", "").endswith("path (A–B′)")}
    assert set(paths) == {"vanilla path (A–B)", "permuted path (A–B′)"}
    assert len(arr(paths["permuted path (A–B′)"]["x"])) == LAMBDAS
    assert arr(paths["permuted path (A–B′)"]["y"]).tolist() == [0.0] * LAMBDAS  # the permuted path is the x axis
    models = next(t for t in fig["data"] if t.get("name") == "models")
    assert list(models["text"]) == ["A", "B", "B′"]
    rows = {r["quantity"]: r["value"] for r in at.dataframe[0].value.to_dict("records")}
    assert rows["barrier, vanilla path A–B"].endswith("nats") and "distance A → B′, |u| = |B′ − A|" in rows
    assert any("Colour scale" in m.value for m in at.markdown)
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Download plane (CSV)" in labels and "Download figure (HTML)" in labels
    at.button(key="spreads_go").click().run()
    no_crash(at)
    spreads = charts(at)["spreads"]
    for heatmap in spreads["data"]:
        z = arr(heatmap["z"]).astype(float)
        assert z.shape == (2 + 5, LAMBDAS)  # two FFN intermediates and five residual nodes
        assert np.allclose(z[:, 0], 1.0) and np.allclose(z[:, -1], 1.0)


def test_seeds_shows_at_once_a_pair_the_loss_path_page_computed(world):
    seeds = [str(s) for s in world["seeds"]]
    at = goto(app(world, lambdas=4), "4_loss_path")  # seed-0 ↔ seed-1, λ grid used by no other test
    no_crash(at)
    at.session_state["seeds_selected"] = seeds
    at.switch_page("pages/6_seeds.py").run()
    no_crash(at)
    fig = next(f for k, f in charts(at).items() if k.startswith("seeds_matrix"))
    assert "1 of 3 pairs" in fig["layout"]["title"]["text"]
    vanilla, permuted = (arr(t["z"]).astype(float) for t in fig["data"])
    barriers = {r["curve"]: r["barrier (nats)"] for r in views.barrier_rows(views_curves(world, lambdas=4))}
    assert vanilla[0, 1] == pytest.approx(barriers["vanilla"]) and permuted[0, 1] == pytest.approx(barriers["permuted"])
    assert np.isnan(vanilla[0, 2]) and np.isnan(vanilla[1, 2])
    assert [b.label for b in at.button if b.label.startswith("Compute")] == ["Compute 2 missing pair(s)"]


def views_curves(world, lambdas: int) -> dict:
    """The seed-0 ↔ seed-1 curves the app computes with the test's sidebar (from the disk cache)."""
    from permerge_core import Pipeline

    p = Pipeline(str(world["seeds"][0]), str(world["seeds"][1]), match_data=str(world["text"]), eval_data=str(world["text"]))
    s = AlignSettings(match_tokens=1500, eval_tokens=1000, lambdas=lambdas)
    assert p.stage_status(s)["permuted path"] == "cached"
    return {which: p.curve(s, which) for which in ("vanilla", "permuted")}


def test_stability_page_draws_the_ablation_and_compares_the_matchers(world):
    study = dict(stability_budgets=(64, 256), stability_resamples=2, stability_lambdas=3, stability_eval_tokens=500)
    at = goto(app(world, matcher="both", **study), "9_stability")
    no_crash(at)
    figs = charts(at)
    barrier = figs["stability_barrier"]["data"]
    mean = next(t for t in barrier if t["name"].startswith("permuted"))
    assert arr(mean["x"]).tolist() == [64, 128, 256] and len(arr(barrier[0]["y"])) == 6  # 3 budgets × 2 resamples
    references = [t["name"] for t in barrier if t["name"].startswith(("vanilla", "weight matching"))]
    assert len(references) == 2
    traces = figs["stability_agreement"]["data"]
    lines = {t["name"]: arr(t["y"]).tolist() for t in traces}
    for kind in ("FFN", "attention", "residual stream"):
        assert lines[f"{kind}: vs the largest budget"][-1] == 1.0  # the largest budget agrees with itself
        assert all(0.0 <= v <= 1.0 for v in lines[f"{kind}: between resamples"])
    assert traces[0]["name"].endswith("between resamples") and "dash" not in traces[0]["line"]  # the honest measure leads
    assert all(t["line"]["dash"] == "dot" for t in traces if t["name"].endswith("vs the largest budget"))
    assert any("The sidebar matches on 1,500 tokens; this study stops at 256" in c.value for c in at.caption)
    assert "every barrier on 500 evaluation tokens, 3 λ points" in figs["stability_barrier"]["layout"]["title"]["text"]  # the study's own budget
    heads = arr(figs["stability_heads"]["data"][0]["z"])
    assert heads.shape == (2, 3) and np.all(heads[:, -1] == 1.0)  # layer × budget
    table = at.dataframe[0].value
    assert list(table["tokens"]) == [64, 128, 256]
    metrics = {m.label: m.value for m in at.metric}
    assert {"vanilla barrier", "activations barrier", "weights barrier"} <= set(metrics)
    heads_table = at.dataframe[2].value
    assert len(heads_table) == 8 and set(heads_table["alike"]) <= {"✓", "✗"}  # 2 layers × 4 heads
    assert {b.proto.label for b in at.get("download_button")} >= {"Download ablation.json", "Download ablation.csv"}


def test_stability_page_survives_each_of_its_controls(world):
    """Every control of the page changed once, each followed by a rerun: the budget range stays
    a range (a slider keyed in session state without a value pair came back as one number)."""
    study = dict(stability_resamples=1, stability_lambdas=3, stability_eval_tokens=500)
    at = goto(app(world, **study), "9_stability")
    no_crash(at)
    assert at.select_slider(key="stability_budgets").value == (256, 2048)
    for change in (lambda: at.toggle(key="stability_compare").set_value(True),
                   lambda: at.number_input(key="stability_resamples").set_value(2),
                   lambda: at.number_input(key="stability_lambdas").set_value(2),
                   lambda: at.number_input(key="stability_eval_tokens").set_value(400),
                   lambda: at.select_slider(key="stability_budgets").set_value((64, 128))):
        change()
        at.run()
        no_crash(at)
    assert at.select_slider(key="stability_budgets").value == (64, 128)
    barrier = charts(at)["stability_barrier"]["data"]
    assert arr(next(t for t in barrier if t["name"].startswith("permuted"))["x"]).tolist() == [64, 128]


def test_about_page_explains_with_formulas_and_links(world):
    at = goto(app(world), "7_about")
    no_crash(at)
    text = " ".join(m.value for m in at.markdown)
    assert "0.999995" in text and "Tied decoder" in text
    assert len(at.get("latex")) >= 5
    assert len(at.get("page_link")) >= 5


def test_repair_setting_adds_a_third_curve_and_export_corrects_only_when_ticked(world, tmp_path):
    at = goto(app(world, repair=True), "4_loss_path")
    no_crash(at)
    fig = charts(at)["loss_final"]
    repaired = next(t for t in fig["data"] if t.get("name") == "permuted + REPAIR")
    p = Pipeline(world["seeds"][0], world["seeds"][1], match_data=world["text"], eval_data=world["text"], cache_dir=world["root"] / "cache")
    expected = p.curve(AlignSettings(match_tokens=1500, eval_tokens=1000, lambdas=LAMBDAS, repair=True), "permuted_repair")
    assert arr(repaired["y"]).tolist() == pytest.approx([pt["loss"] for pt in expected], abs=1e-9)
    assert any(t.get("name") == "permuted + REPAIR barrier" for t in fig["data"])
    assert "permuted + REPAIR" in {r["curve"] for r in at.dataframe[0].value.to_dict("records")}
    assert any(m.label == "permuted + REPAIR barrier" for m in at.metric)
    # Export: the merged model is plain θ(λ) unless its own checkbox is ticked.
    target = tmp_path / "merged"
    at.session_state["export_target"] = str(target)
    at.switch_page("pages/5_export.py").run()
    no_crash(at)
    assert "--merge-repair" not in at.code[0].value
    at.checkbox(key="export_repair").check().run()
    assert "--merge-repair" in at.code[0].value
    next(b for b in at.button if b.label == "Save merged model").click().run()
    no_crash(at)
    assert json.loads((target / "permerge_merge.json").read_text())["repair"]["tokens"] == 1500


@pytest.fixture(scope="module")
def classifiers(world) -> dict:
    """Two tiny fine-tuned-style classifiers (2 labels named neg/pos) and a labelled TSV."""
    root = world["root"] / "clf"
    pair = []
    for seed in (0, 1):
        model = random_model("bert", "classification", seed=seed, layers=2, hidden=16, heads=4, ffn=32, num_labels=2)
        model.config.id2label, model.config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
        pair.append(save_model(model, root / f"clf-{seed}"))
    lines = random_text(60, seed=5).splitlines()
    data = root / "task.tsv"
    data.write_text("sentence\tgold\n" + "".join(f"{t}\t{'pos' if k % 3 else 'neg'}\n" for k, t in enumerate(lines)))
    return {"a": pair[0], "b": pair[1], "data": data, "n": len(lines)}


def test_classifier_pair_gets_labelled_data_controls_a_preview_and_task_curves(world, classifiers):
    at = app(world, model_a=str(classifiers["a"]), model_b=str(classifiers["b"]), task_source="path",
             task_eval_path=str(classifiers["data"])).run()
    no_crash(at)
    # The sidebar offers the file's columns and guessed the text column; the label column is chosen by hand.
    assert at.sidebar.selectbox(key="text_column").value == "sentence"
    assert at.sidebar.selectbox(key="text_column").options == ["sentence", "gold"]
    at.sidebar.selectbox(key="label_column").set_value("gold").run()
    no_crash(at)
    preview = at.dataframe[1].value.to_dict("records")
    assert list(preview[0]) == ["sentence", "gold"] and len(preview) == 8
    balance = {r["label"]: r["examples"] for r in at.dataframe[2].value.to_dict("records")}
    n = classifiers["n"]
    assert balance == {"neg": (n + 2) // 3, "pos": n - (n + 2) // 3}
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["majority-class baseline"] == f"{max(balance.values()) / n:.1%}"
    assert any("same function" in s.value for s in at.success)

    at.switch_page("pages/4_loss_path.py").run()
    no_crash(at)
    assert at.radio(key="task_metric").options == ["accuracy", "F1", "Matthews correlation"]
    fig = charts(at)["loss_final"]
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    assert "task cross-entropy" in titles and "accuracy" in titles
    acc = [t for t in fig["data"] if t.get("name") == "permuted accuracy"]
    assert acc and all(0.0 <= v <= 1.0 for v in arr(acc[0]["y"]).tolist())
    at.radio(key="task_metric").set_value("mcc").run()
    no_crash(at)
    assert any(t.get("name") == "permuted mcc" for t in charts(at)["loss_final"]["data"])
    table = at.dataframe[0].value.to_dict("records")
    assert {"min accuracy", "min F1", "min Matthews correlation"} <= set(table[0])


class _Placeholder:
    """Stands in for st.empty(): counts the charts drawn into it."""

    def __init__(self):
        self.drawn = []

    def plotly_chart(self, fig, key=None):
        self.drawn.append(fig)


def test_live_redraw_draws_first_points_at_once_and_throttles_the_rest(monkeypatch):
    from permerge_app import ui

    clock = [1000.0]
    monkeypatch.setattr(ui.time, "monotonic", lambda: clock[0])
    holder = _Placeholder()
    redraw = ui.LiveRedraw(holder, every=2.5)
    redraw(lambda: "a")  # nothing drawn yet: draw
    clock[0] += 0.5
    redraw(lambda: "b")  # too soon
    redraw(lambda: "c", force=True)  # a curve's first point: at once
    clock[0] += 1.0
    redraw(lambda: "d")  # 1 s after the last draw: wait
    clock[0] += 1.6
    redraw(lambda: "e")  # 2.6 s: draw
    redraw(lambda: "f", force=True)
    assert holder.drawn == ["a", "c", "e", "f"]


def test_loss_path_does_not_draw_a_cached_curve_on_its_own(world, monkeypatch):
    """After a merge-settings change the vanilla curve is remembered: the first live draw is the
    one with the new permuted curve's first point, and the final chart has both curves whole."""
    from permerge_app import ui

    drawn = []
    original = ui.LiveRedraw.__call__

    def spy(self, make_figure, force=False):
        before = self.count
        original(self, make_figure, force=force)
        if self.count > before:
            drawn.append({t["name"]: len(t["x"]) for t in make_figure().to_dict()["data"] if t.get("legendgroup") == t.get("name").split(" (")[0]})

    at = goto(app(world), "4_loss_path")
    no_crash(at)
    monkeypatch.setattr(ui.LiveRedraw, "__call__", spy)
    at.sidebar.selectbox(key="attention").set_value("monotonic").run()
    no_crash(at)
    assert drawn, "the new permuted curve was never drawn while it was computed"
    assert drawn[0] == {"vanilla": LAMBDAS, "permuted (computing…)": 1}
    final = charts(at)["loss_final"]
    assert {t["name"]: len(arr(t["x"])) for t in final["data"] if t.get("name") in ("vanilla", "permuted")} == {"vanilla": LAMBDAS, "permuted": LAMBDAS}


def test_streamlit_config_keeps_the_file_watcher_off():
    """With .venv inside the app's folder, Streamlit's recursive file watcher overflowed its
    inotify queue hundreds of times per run, on the cores computing (docs/history.md)."""
    import tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["fileWatcherType"] == "none"
    assert config["server"]["address"] == "127.0.0.1"


# ---- a decoder pair (GPT-2) ------------------------------------------------------------------

@pytest.fixture(scope="module")
def decoders(world) -> list[str]:
    """Two tiny random GPT-2 causal LMs with one byte-level BPE tokenizer."""
    root = world["root"] / "decoders"
    return [str(save_model(random_model("gpt2", "causal-lm", seed=s, layers=2, hidden=16, heads=4, ffn=32), root / f"seed-{s}")) for s in (0, 1)]


def decoder_app(world, decoders, **state) -> AppTest:
    return app(world, model_a=decoders[0], model_b=decoders[1], models_dir=str(Path(decoders[0]).parent), **state)


def page_text(at: AppTest) -> str:
    return " ".join(e.value for kind in ("markdown", "caption", "success", "info", "warning") for e in at.get(kind))


def test_decoder_pair_models_page_shows_the_family_and_the_next_token_loss(world, decoders):
    at = decoder_app(world, decoders).run()
    no_crash(at)
    rows = {r["property"]: r for r in at.dataframe[0].value.to_dict("records")}
    assert rows["family"]["A"] == rows["family"]["B"] == "gpt2" and rows["head"]["A"] == "causal-lm"
    assert rows["architecture"]["A"] == "GPT2LMHeadModel" and rows["positions"]["same"] == "✓"
    badge = [s.value for s in at.success if "same function" in s.value]
    assert badge and float(badge[0].rsplit("= ", 1)[1]) < 1e-4
    metrics = {m.label: m for m in at.metric}
    assert metrics["L(A), λ = 1"].value.endswith("nats") and "next-token accuracy" in metrics["L(A), λ = 1"].help
    assert "Next-token cross-entropy" in page_text(at) and "masked" not in page_text(at).lower()


def test_bundled_decoders_are_offered_in_the_model_pickers(world, decoders, monkeypatch):
    from permerge_app import ui
    from permerge_core import checkpoints

    root = Path(decoders[0]).parent  # stands in for assets/decoders, which may not exist yet
    monkeypatch.setattr(checkpoints, "BUNDLED_DECODERS", root)
    monkeypatch.setattr(ui, "BUNDLED_DECODERS", root)
    at = app(world).run()
    no_crash(at)
    options = at.sidebar.selectbox(key="model_a").options
    assert {"seed-0 (bundled decoder)", "seed-1 (bundled decoder)", "seed-0 (bundled)"} <= set(options)


def test_decoder_pair_loss_path_is_labelled_next_token(world, decoders):
    at = goto(decoder_app(world, decoders), "4_loss_path")
    no_crash(at)
    fig = charts(at)["loss_final"]
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    assert "next-token loss" in titles and "next-token accuracy" in titles
    curves = {t["name"]: arr(t["y"]) for t in fig["data"] if t.get("name") in ("vanilla", "permuted")}
    assert len(curves["vanilla"]) == len(curves["permuted"]) == LAMBDAS and curves["vanilla"][-1] == curves["permuted"][-1]
    accuracy = [t for t in fig["data"] if t.get("name") == "permuted accuracy"]
    assert accuracy and all(0.0 <= v <= 1.0 for v in arr(accuracy[0]["y"]).tolist())
    assert "masked" not in page_text(at).lower() and "Next-token accuracy: how often" in page_text(at)
    table = {r["curve"]: r for r in at.dataframe[0].value.to_dict("records")}
    assert set(table) == {"vanilla", "permuted"} and "min next-token accuracy" not in table["vanilla"]


def test_decoder_pair_correlations_and_heads_pages(world, decoders):
    at = goto(decoder_app(world, decoders, corr_kind="residual"), "2_correlations")
    no_crash(at)
    figs = charts(at)
    assert arr(figs["corr_overview"]["data"][0]["z"]).shape == (16, 16)  # the residual stream, 16 wide
    assert len(arr(figs["corr_layers"]["data"][0]["x"])) == 5  # 2L + 1 residual nodes
    at.switch_page("pages/3_heads.py").run()
    no_crash(at)
    cost = charts(at)["heads_cost"]["data"]
    assert arr(cost[0]["z"]).shape == (4, 4) and sorted(arr(cost[1]["x"]).tolist()) == [0, 1, 2, 3]


def test_decoder_pair_export_writes_a_gpt2_and_seeds_compares_the_pair(world, decoders, tmp_path):
    target = tmp_path / "merged"
    at = goto(decoder_app(world, decoders, export_target=str(target)), "5_export")
    no_crash(at)
    next(b for b in at.button if b.label == "Save merged model").click().run()
    no_crash(at)
    assert any("GPT2LMHeadModel.from_pretrained" in s.value for s in at.success)
    from transformers import GPT2LMHeadModel

    merged = GPT2LMHeadModel.from_pretrained(target)
    assert merged.lm_head.weight.data_ptr() == merged.transformer.wte.weight.data_ptr()
    from permerge_core.cli import build_parser

    args = build_parser().parse_args(shlex.split(at.code[0].value)[3:])
    assert (args.model_a, args.model_b) == tuple(decoders)
    at = goto(decoder_app(world, decoders, seeds_selected=decoders, lambdas=3), "6_seeds")
    no_crash(at)
    next(b for b in at.button if b.label.startswith("Compute")).click().run()
    no_crash(at)
    row = at.dataframe[0].value.to_dict("records")[0]
    assert np.isfinite(row["vanilla barrier (nats)"]) and np.isfinite(row["permuted barrier (nats)"])


def test_about_page_has_a_section_on_decoders(world):
    at = goto(app(world), "7_about")
    no_crash(at)
    assert any("Decoder-only models" in h.value for h in at.header)
    text = " ".join(m.value for m in at.markdown)
    assert "ln_f" in text and "c_attn" in text and "end-of-text" in text


def test_mixed_bert_and_gpt2_pair_is_refused_naming_both_families(world, decoders):
    at = app(world, model_b=decoders[0]).run()
    no_crash(at)
    assert any("family: A has bert, B has gpt2" in e.value for e in at.error)


def test_a_rotary_pair_draws_every_variant_it_can_and_says_why_not_the_others(world):
    """ignore-heads would move rotary features, so a GPT-NeoX pair refuses it: the Loss path page
    draws the other curves and names the refused variant with the reason."""
    root = world["root"] / "neox"
    pair = [str(save_model(random_model("gpt_neox", "causal-lm", seed=s, layers=2, hidden=16, heads=4, ffn=32), root / f"seed-{s}")) for s in (0, 1)]
    at = goto(app(world, model_a=pair[0], model_b=pair[1], models_dir=str(root),
                  variants=["FFN only", "FFN + ignore-heads attention"]), "4_loss_path")
    no_crash(at)
    names = {t.get("name") for t in charts(at)["loss_final"]["data"]}
    assert {"vanilla", "permuted", "FFN only"} <= names and "FFN + ignore-heads attention" not in names
    assert any("'FFN + ignore-heads attention' is not drawn" in c.value and "rotary" in c.value for c in at.caption)
    assert {r["curve"] for r in at.dataframe[0].value.to_dict("records")} == {"vanilla", "permuted", "FFN only"}


def test_correlations_overview_of_a_wide_space_is_its_first_units_exactly(world):
    """Wider than the overview: its first 96 units of each side, every correlation exact (a pooled
    view would hide the alignment), the same values the zoom shows for that corner."""
    root = world["root"] / "wide"
    pair = [str(save_model(random_model("bert", "mlm", seed=s, layers=1, hidden=16, heads=4, ffn=128), root / f"m{s}")) for s in (0, 1)]
    at = goto(app(world, model_a=pair[0], model_b=pair[1], models_dir=str(root)), "2_correlations")
    no_crash(at)
    before, after = (arr(t["z"]) for t in charts(at)["corr_overview"]["data"])
    assert before.shape == after.shape == (96, 96)
    assert any("the first 96 of 128 units" in c.value for c in at.caption)
    at.number_input(key="corr_zoom_row").set_value(0).run()  # the zoom at the same corner shows the same numbers
    at.slider(key="corr_zoom_size").set_value(96).run()
    zoom_before, zoom_after = (arr(t["z"]) for t in charts(at)["corr_zoom"]["data"])
    np.testing.assert_array_equal(zoom_before, before)
    np.testing.assert_array_equal(zoom_after, after)
