"""The app's display computations (permerge_app/views.py), without Streamlit: correlation
overviews, label balance, the curves' CSV, the command line of a view."""

import shlex

import numpy as np
import pytest

from permerge_app import views
from permerge_core import AlignSettings
from permerge_core.tasks import load_labelled
from test_tasks import _labelled_file


def test_views_block_average_and_alignment():
    rng = np.random.default_rng(0)
    m = rng.uniform(-1, 1, (300, 300))
    bv = views.block_average(m, 96)
    assert bv.block == 4 and bv.values.shape == (75, 75)
    assert bv.values[0, 0] == pytest.approx(m[:4, :4].mean()) and bv.values[-1, -1] == pytest.approx(m[-4:, -4:].mean())
    odd = views.block_average(rng.uniform(-1, 1, (10, 10)), 4)  # 3×3-blocks, a smaller last block
    assert odd.values.shape == (4, 4) and odd.row_labels[-1] == "9"
    perm = rng.permutation(300)
    diag, matched = views.matched_pair(m, perm)
    assert np.allclose(np.diag(views.aligned(m, perm)), matched) and np.allclose(diag, np.diag(m))
    rows, cols = views.zoom_window(300, 300, 290, 0, 64)
    assert (rows.start, rows.stop, cols.start) == (236, 300, 0)


def test_views_cli_command_round_trips_through_the_cli_parser():
    from permerge_core.cli import build_parser

    s = AlignSettings(match_tokens=4096, ffn=False, attention="monotonic", residual="sep", absolute=True, lambdas=11, mask_seed=3)
    command = views.cli_command("/m/a b", "org/model", s, match_data="/d/m.txt", save_merged="/o", merge_lambda=0.25)
    args = build_parser().parse_args(shlex.split(command)[3:])
    rebuilt = AlignSettings(match_tokens=args.match_tokens, eval_tokens=args.eval_tokens, batch_size=args.batch_size, ffn=args.ffn,
                            attention=args.attention, residual=args.residual, absolute=args.absolute, drop_special=args.drop_special,
                            lambdas=args.lambdas, mask_seed=args.mask_seed, device=args.device)
    assert rebuilt == s and args.model_a == "/m/a b" and args.merge_lambda == 0.25 and args.eval_data is None


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
