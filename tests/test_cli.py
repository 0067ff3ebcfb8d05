"""The CLI end to end on a tiny pair: files written, contract kept, bad input refused."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from permerge_core.cli import main
from fixtures import random_model, save_model

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "permerge_core", *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )


def tiny_args(pair, out, cache):
    return [
        "--model-a", pair["a"], "--model-b", pair["b"], "--match-data", pair["text"], "--eval-data", pair["text"],
        "--match-tokens", 1500, "--eval-tokens", 1500, "--lambdas", 5, "--out", out, "--cache-dir", cache,
    ]


def test_align_end_to_end_writes_the_report_contract(tiny_pair, tmp_path):
    out = tmp_path / "out"
    merged = tmp_path / "merged"
    proc = run_cli("align", *tiny_args(tiny_pair, out, tmp_path / "cache"), "--save-merged", merged, "--merge-lambda", 0.5)
    assert proc.returncode == 0, proc.stderr
    assert "barrier: vanilla" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    for key in ("permutations", "head_assignment", "curves", "barrier", "endpoint_loss", "function_preserving", "max_abs_logit_diff", "settings", "models"):
        assert key in report, key
    assert set(report["permutations"]) == {"layer.0.ffn", "layer.0.attention", "layer.1.ffn", "layer.1.attention", "residual"}
    for name, perm in report["permutations"].items():
        assert sorted(perm) == list(range(len(perm))), name
    assert all(sorted(v) == [0, 1, 2, 3] for v in report["head_assignment"].values())
    vanilla, permuted = report["curves"]["vanilla"], report["curves"]["permuted"]
    assert [p[0] for p in vanilla] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert vanilla[-1][1] == permuted[-1][1] == report["endpoint_loss"]["a"]  # λ=1 is exactly A on both paths
    losses = [p[1] for p in permuted]
    assert report["barrier"]["permuted"] == pytest.approx(max(losses) - (losses[0] + losses[-1]) / 2)
    assert report["function_preserving"] is True and report["max_abs_logit_diff"] < 1e-4
    assert permuted[0][1] == pytest.approx(report["endpoint_loss"]["b"], abs=1e-4)  # B′ is B
    csv = (out / "curve.csv").read_text().splitlines()
    assert csv[0].startswith("lambda,vanilla_loss,permuted_loss") and len(csv) == 6
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(merged)
    AutoTokenizer.from_pretrained(merged)
    assert model.config.num_hidden_layers == 2


def test_rerun_reuses_the_cache_and_gives_identical_results(tiny_pair, tmp_path, capsys):
    args = tiny_args(tiny_pair, tmp_path / "o1", tmp_path / "cache")
    assert main(["align", *map(str, args)]) == 0
    assert main(["align", *map(str, tiny_args(tiny_pair, tmp_path / "o2", tmp_path / "cache"))]) == 0
    assert main(["align", *map(str, tiny_args(tiny_pair, tmp_path / "o3", tmp_path / "cache")), "--no-cache"]) == 0
    r1, r2, r3 = (json.loads((tmp_path / o / "report.json").read_text()) for o in ("o1", "o2", "o3"))
    assert any("reused cached" in n for n in r2["notes"])
    assert not any("reused cached" in n for n in r3["notes"])
    for r in (r2, r3):
        assert r["permutations"] == r1["permutations"]
        assert r["curves"] == r1["curves"]


def test_mismatched_pair_fails_naming_both_values(tiny_pair, tmp_path):
    other = save_model(random_model("bert", "mlm", seed=2, layers=3, hidden=16, heads=4, ffn=32), tmp_path / "c")
    proc = run_cli("align", "--model-a", tiny_pair["a"], "--model-b", other, "--out", tmp_path / "o", "--no-cache")
    assert proc.returncode == 2
    assert "number of layers: A has 2, B has 3" in proc.stderr
    not_progress = [line for line in proc.stderr.splitlines() if not line.startswith("[")]
    assert "Traceback" not in proc.stderr and len(not_progress) == 1


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--lambdas", "1"], "at least 2"),
        (["--match-tokens", "0"], "must be positive"),
        (["--attention", "sideways"], "invalid choice"),
        (["--residual", "middle"], "invalid choice"),
        (["--merge-lambda", "1.5"], "[0, 1]"),
    ],
)
def test_bad_arguments_exit_nonzero_with_one_line(extra, needle, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["align", *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_cuda_requested_without_gpu_is_refused(tiny_pair, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code = main(["align", *map(str, tiny_args(tiny_pair, tmp_path / "o", tmp_path / "c")), "--device", "cuda"])
    assert code == 2
    assert "CUDA was requested but no GPU" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["file", "below a file"])
def test_out_path_that_cannot_be_a_folder_is_refused_before_any_work(tiny_pair, tmp_path, capsys, where):
    taken = tmp_path / "report.txt"
    taken.write_text("someone's file\n")
    out = taken if where == "file" else taken / "run"
    code = main(["align", *map(str, tiny_args(tiny_pair, out, tmp_path / "cache"))])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{taken} is a file" in err and "--out" in err and "internal error" not in err
    assert "[load]" not in err  # refused before the models were loaded
    assert taken.read_text() == "someone's file\n"


@pytest.mark.parametrize("where", ["below a file", "in /proc"])
def test_unusable_cache_folder_gives_one_warning_and_the_run_completes(tiny_pair, tmp_path, capsys, monkeypatch, where):
    if where == "in /proc" and not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    cache = blocker / "cache" if where == "below a file" else Path("/proc/permerge-cache-test")
    monkeypatch.setenv("PERMERGE_CACHE", str(cache))
    args = tiny_args(tiny_pair, tmp_path / "out", "unused")[:-2]  # no --cache-dir: the default cache, PERMERGE_CACHE
    code = main(["align", *map(str, args)])
    err = capsys.readouterr().err
    assert code == 0, err
    warnings = [line for line in err.splitlines() if str(cache) in line]
    assert len(warnings) == 1, err
    assert "cache" in warnings[0] and "PERMERGE_CACHE" in warnings[0]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert sum(str(cache) in note for note in report["notes"]) == 1


def test_ablate_writes_json_and_csv_and_prints_a_row_per_budget(tiny_pair, tmp_path):
    out = tmp_path / "abl"
    proc = run_cli("ablate", *tiny_args(tiny_pair, out, tmp_path / "cache"), "--start-tokens", 128, "--stop-tokens", 512, "--resamples", 2)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "ablation.json").read_text())
    assert result["budgets"] == [128, 256, 512] and result["resamples"] == 2
    assert [line.split(",")[0] for line in (out / "ablation.csv").read_text().splitlines()] == ["budget", "128", "256", "512"]
    assert "512 tokens: barrier" in proc.stdout and "[ablation]" in proc.stderr  # a row per budget; progress


def test_ablate_refuses_weights_and_bad_budgets_in_one_line(tiny_pair, tmp_path, capsys):
    code = main(["ablate", *map(str, tiny_args(tiny_pair, tmp_path / "o", tmp_path / "c")), "--matcher", "weights", "--quiet"])
    assert code == 2 and "weight matching reads no text" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["ablate", "--start-tokens", "0"])
    assert exit_info.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_align_matcher_both_reports_the_comparison(tiny_pair, tmp_path):
    proc = run_cli("align", *tiny_args(tiny_pair, tmp_path / "o", tmp_path / "cache"), "--matcher", "both")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["settings"]["matcher"] == "both" and report["matching"]["matcher"] == "activations"
    comparison = report["comparison"]
    assert set(comparison["agreement"]) == set(report["permutations"]) and set(comparison["barrier"]) == {"vanilla", "activations", "weights"}
    assert comparison["barrier"]["activations"] == pytest.approx(report["barrier"]["permuted"])
    assert "weight matching:" in proc.stdout and "matchers compared:" in proc.stdout
