"""`python -m permerge_core grid`: every pair, each cell equal to align's result, failures kept
in their cells, reruns that compute only what is missing, variants sharing a pair's statistics,
and the Ray engine on a local two-CPU Ray."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from fixtures import random_model, random_text, save_model
from permerge_core import AlignSettings, Pipeline, grid
from permerge_core.cli import main
from permerge_core.permuting import permuted_model
from test_invariants import head_for, random_matching

ROOT = Path(__file__).resolve().parent.parent
SMALL = AlignSettings(match_tokens=1500, eval_tokens=1000, lambdas=3)
FLAGS = ["--match-tokens", "1500", "--eval-tokens", "1000", "--lambdas", "3"]


@pytest.fixture(scope="module")
def trio(tmp_path_factory) -> dict:
    """Two unrelated random models and a planted shuffle of the first, listed third so that its
    pair with the first is not the first pair. Between unrelated random models both paths dip
    below their ends, so the vanilla and the permuted barrier are both |L(A) − L(B)|/2 and a
    cell that wrote one for the other would look right; for the planted pair they differ
    clearly: B′ is A (permuted barrier 0), and averaging this model (seed 61, chosen for it:
    most random models are better averaged, being less confident) with its shuffle is worse."""
    root = tmp_path_factory.mktemp("trio")
    first = random_model("bert", "mlm", seed=61, layers=2, hidden=16, heads=4, ffn=32)
    family, head = head_for(first)
    shuffled = permuted_model(first, family, head, 2, random_matching(first.config, "heads", "first", seed=62))
    other = random_model("bert", "mlm", seed=1, layers=2, hidden=16, heads=4, ffn=32)
    models = [str(save_model(m, root / name)) for m, name in ((first, "m61"), (other, "m1"), (shuffled, "m61-shuffled"))]
    text = root / "text.txt"
    text.write_text(random_text(200))
    return {"models": models, "text": str(text), "root": root}


def spec(trio, cache, variants=None, models=None) -> grid.GridSpec:
    return grid.GridSpec(models or trio["models"], variants or [(grid.DEFAULT_VARIANT, SMALL)], match_data=trio["text"],
                         eval_data=trio["text"], cache_dir=str(cache))


def cli_grid(trio, out, *extra, models=None) -> int:
    return main(["grid", "--models", *(models or trio["models"]), "--match-data", trio["text"], "--eval-data", trio["text"],
                 *FLAGS, "--out", str(out), "--cache-dir", str(out / "cache"), "--quiet", *extra])


def test_every_cell_and_the_table_equal_align_for_its_pairs(trio, tmp_path, capsys):
    assert cli_grid(trio, tmp_path / "g") == 0
    result = json.loads((tmp_path / "g" / "grid.json").read_text())
    assert (result["engine"], result["workers"]) == ("local", 1)
    pairs = ((0, 1), (0, 2), (1, 2))
    assert [(c["a"], c["b"]) for c in result["pairs"]] == [(trio["models"][i], trio["models"][j]) for i, j in pairs]
    reports = []
    for cell in result["pairs"]:
        out = tmp_path / "align"
        assert main(["align", "--model-a", cell["a"], "--model-b", cell["b"], "--match-data", trio["text"], "--eval-data",
                     trio["text"], *FLAGS, "--no-cache", "--out", str(out), "--quiet"]) == 0
        reports.append(json.loads((out / "report.json").read_text()))
    planted = reports[1]["barrier"]  # the fixture's point: here a swapped number shows
    assert planted["permuted"] < 1e-4 and planted["vanilla"] > 0.5, planted
    for cell, report in zip(result["pairs"], reports):
        assert cell["barrier"] == report["barrier"] and cell["endpoint_loss"] == report["endpoint_loss"]
        assert cell["function_preserving"] is report["function_preserving"] is True and cell["seconds"] > 0
    rows = list(csv.DictReader((tmp_path / "g" / "grid.csv").open()))
    assert [(r["a"], r["b"]) for r in rows] == [(c["a"], c["b"]) for c in result["pairs"]]
    for r, report in zip(rows, reports):
        for which in ("vanilla", "permuted"):
            assert float(r[f"{which}_barrier"]) == pytest.approx(report["barrier"][which], abs=1e-6)
    square = list(csv.reader((tmp_path / "g" / "matrix.csv").open()))
    assert square[0][1:] == trio["models"]
    for (i, j), report in zip(pairs, reports):  # permuted above the diagonal, vanilla below it
        assert float(square[1 + i][1 + j]) == pytest.approx(report["barrier"]["permuted"], abs=1e-6)
        assert float(square[1 + j][1 + i]) == pytest.approx(report["barrier"]["vanilla"], abs=1e-6)
    (row,) = result["table"]
    assert row["pairs"] == 3 and row["function_preserving"] is True
    for which in ("vanilla", "permuted"):
        values = [report["barrier"][which] for report in reports]
        mean = sum(values) / 3
        assert row[f"{which}_mean"] == pytest.approx(mean, abs=1e-9)
        assert row[f"{which}_std"] == pytest.approx((sum((v - mean) ** 2 for v in values) / 2) ** 0.5, abs=1e-9)
    assert "3 of 3 pairs done" in capsys.readouterr().out


def test_a_failing_pair_keeps_its_message_and_the_grid_goes_on(trio, tmp_path, capsys):
    wide = str(save_model(random_model("bert", "mlm", seed=5, layers=2, hidden=32, heads=4, ffn=32), tmp_path / "wide"))
    models = trio["models"][:2] + [wide]
    assert cli_grid(trio, tmp_path / "g", models=models) == 1
    cells = json.loads((tmp_path / "g" / "grid.json").read_text())["pairs"]
    assert "error" not in cells[0] and cells[0]["barrier"]["permuted"] > -1
    assert all("error" in c and "hidden" in c["error"].lower() for c in cells[1:]), [c.get("error") for c in cells]
    assert "failed" in capsys.readouterr().err


class Interrupted(KeyboardInterrupt):
    pass


class CountingEngine(grid.LocalEngine):
    """The local engine, counting its tasks, and optionally stopping after `stop_after` cells."""

    def __init__(self, stop_after=None):
        super().__init__()
        self.ran, self.stop_after = [], stop_after

    def run(self, tasks):
        for k, cell, curves in super().run(tasks):
            self.ran.append((cell["a"], cell["b"]))
            yield k, cell, curves
            if self.stop_after and len(self.ran) >= self.stop_after:
                raise Interrupted


def test_a_rerun_after_an_interruption_computes_only_the_missing_pairs(trio, tmp_path):
    out = tmp_path / "g"
    with pytest.raises(Interrupted):
        grid.run_grid(spec(trio, tmp_path / "cache"), CountingEngine(stop_after=1), out, log=lambda m: None)
    first = json.loads((out / "grid.json").read_text())
    assert len(first["pairs"]) == 1  # written as soon as the cell finished
    again = CountingEngine()
    result = grid.run_grid(spec(trio, tmp_path / "cache"), again, out, log=lambda m: None)
    m = trio["models"]
    assert again.ran == [(m[0], m[2]), (m[1], m[2])] and result["computed_this_run"] == 2
    assert result["pairs"][0] == first["pairs"][0] and len(result["pairs"]) == 3
    # Other settings into the same folder: refused, not overwritten.
    with pytest.raises(grid.SettingsError, match="other settings"):
        grid.run_grid(spec(trio, tmp_path / "cache", [("x", replace(SMALL, eval_tokens=900))]), CountingEngine(), out)


def test_variants_share_the_pairs_statistics_and_equal_separate_runs(trio, tmp_path, monkeypatch):
    import permerge_core.pipeline as pipeline_mod

    passes = []
    real = pipeline_mod.collect_statistics
    monkeypatch.setattr(pipeline_mod, "collect_statistics", lambda *a, **k: passes.append(1) or real(*a, **k))
    variants = grid.parse_variants(["paper-attention"], SMALL)
    assert [label for label, _ in variants] == ["vanilla attention", "monotonic", "ignore-heads", "Head-Perm"]
    result = grid.run_grid(spec(trio, tmp_path / "cache", variants, trio["models"][:2]), grid.LocalEngine(), tmp_path / "g", log=lambda m: None)
    assert len(passes) == 1  # one statistics pass for four variants
    (cell,) = result["pairs"]
    alone = Pipeline(trio["models"][0], trio["models"][1], match_data=trio["text"], eval_data=trio["text"], cache_dir=None)
    for label, s in variants:
        assert cell["variants"][label]["barrier"] == alone.run(s)["barrier"], label
    assert cell["barrier"] == cell["variants"]["vanilla attention"]["barrier"]  # the first variant's, at the top
    assert cell["variants"]["ignore-heads"]["function_preserving"] is False
    assert [r["variant"] for r in result["table"]] == [label for label, _ in variants]


def test_variant_spelling_and_its_mistakes():
    (label, s), = grid.parse_variants(["mine:ffn=off,attention=monotonic"], SMALL)
    assert (label, s.ffn, s.attention, s.residual, s.lambdas) == ("mine", False, "monotonic", SMALL.residual, 3)
    for bad, needle in (("nolabel", "neither a preset"), ("x:lambdas=5", "not a merge setting"), ("x:attention=diagonal", "Unknown attention"),
                        ("x:ffn=maybe", "on or off")):
        with pytest.raises(grid.SettingsError, match=needle):
            grid.parse_variants([bad], SMALL)
    with pytest.raises(grid.SettingsError, match="repeat"):
        grid.parse_variants(["a:ffn=on", "a:ffn=off"], SMALL)


def test_bad_grid_requests_exit_with_one_line(trio, tmp_path, capsys, monkeypatch):
    assert cli_grid(trio, tmp_path / "g", models=trio["models"][:1]) == 2
    assert "at least two models" in capsys.readouterr().err
    assert cli_grid(trio, tmp_path / "g", models=[trio["models"][0]] * 2) == 2
    assert "more than once" in capsys.readouterr().err
    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name)) if name == "ray" else real_import(name, *a, **k))
    assert cli_grid(trio, tmp_path / "g", "--engine", "ray") == 2
    assert "requirements-ray.txt" in capsys.readouterr().err


def run_cli_grid(trio, out, *extra) -> subprocess.CompletedProcess:
    """`python -m permerge_core grid` on the first two models in a process of its own, given a
    minute: a Ray engine that hangs fails the test by its timeout instead of hanging it."""
    command = [sys.executable, "-m", "permerge_core", "grid", "--models", *trio["models"][:2], "--out", str(out), "--no-cache",
               "--quiet", *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_ray_address_where_nothing_listens_fails_at_once_naming_it_and_the_fix(trio, tmp_path):
    """ray.init retries such an address for about a quarter of an hour; the grid checks it first."""
    pytest.importorskip("ray")
    with socket.socket() as probe:  # a loopback port that nothing listens on: bound once, then released
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    done = run_cli_grid(trio, tmp_path / "g", "--engine", "ray", "--ray-address", address)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2, done.stderr
    assert last.startswith("permerge: error:") and f"Nothing answers at the Ray address {address}" in last
    assert "Fix:" in last and "--ray-address" in last and "ray start --head" in last
    assert not (tmp_path / "g" / "grid.json").exists()


def test_a_ray_address_where_something_else_listens_fails_naming_it_and_the_fix(trio, tmp_path):
    """A server that is not Ray's head node (here one that never says anything; the dashboard's
    HTTP port is the likely mistake) would keep ray.init waiting as long."""
    pytest.importorskip("ray")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        done = run_cli_grid(trio, tmp_path / "g", "--engine", "ray", "--ray-address", address)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2, done.stderr
    assert f"Something listens at the Ray address {address}" in last and "not a Ray head node" in last
    assert "Fix:" in last and "6379" in last


def test_the_ray_engine_on_a_local_ray_equals_the_local_engine(trio, tmp_path):
    pytest.importorskip("ray")
    local = grid.run_grid(spec(trio, tmp_path / "local-cache"), grid.LocalEngine(), tmp_path / "local", log=lambda m: None)
    lines = []
    with grid.RayEngine(num_cpus=2, include_dashboard=False, log_to_driver=False) as engine:
        result = grid.run_grid(spec(trio, tmp_path / "cache"), engine, tmp_path / "ray", log=lines.append)
        assert engine.ray.is_initialized()
        # A task no node can run (a GPU on this CPU-only Ray) is refused at once, not left waiting.
        with pytest.raises(grid.PermergeError, match="no node of this Ray cluster has any"):
            grid.RayEngine(gpus_per_task=1).__enter__()
        assert engine.ray.is_initialized()  # (it joined the running Ray, so it leaves it running)
        grid.check_ray_address(engine.ray.get_runtime_context().gcs_address)  # a real head node passes the address check
    assert (result["engine"], result["workers"]) == ("ray", 2)
    assert not engine.ray.is_initialized()  # the engine started Ray, so it shut it down
    assert [(c["a"], c["b"]) for c in result["pairs"]] == [(c["a"], c["b"]) for c in local["pairs"]]
    for cell, ref in zip(result["pairs"], local["pairs"]):
        assert "error" not in cell, cell.get("error")
        for which in ("vanilla", "permuted"):
            assert cell["barrier"][which] == pytest.approx(ref["barrier"][which], abs=1e-5)
    assert any("3 of 3 pairs done" in line and "left" in line for line in lines)
    # The workers' results are in the driver's cache: the pipeline finds both paths there.
    p = Pipeline(trio["models"][1], trio["models"][2], match_data=trio["text"], eval_data=trio["text"], cache_dir=tmp_path / "cache")
    status = p.stage_status(SMALL)
    assert status["vanilla path"] == status["permuted path"] == "cached"
