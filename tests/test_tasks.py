"""Fine-tuned classifiers: metrics by hand, the loss path on a tiny pair, fine-tuning itself."""

import json
import random

import numpy as np
import pytest
import torch

from permerge_core import AlignSettings, Pipeline
from permerge_core.errors import DataError, SettingsError
from permerge_core.settings import TaskSpec
from permerge_core.tasks import f1_binary, load_labelled, matthews, pearson, accuracy
from fixtures import WORDS, random_model, save_model

SMALL = AlignSettings(match_tokens=1500, eval_tokens=1500, lambdas=5, batch_size=8)


def test_metrics_on_a_hand_checked_example():
    gold = torch.tensor([1, 1, 1, 0, 0, 0, 0, 1])
    pred = torch.tensor([1, 1, 0, 0, 0, 1, 0, 1])
    # TP=3 FP=1 FN=1 TN=3
    assert accuracy(pred, gold) == pytest.approx(6 / 8)
    assert f1_binary(pred, gold) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert matthews(pred, gold, 2) == pytest.approx((3 * 3 - 1 * 1) / ((4 * 4 * 4 * 4) ** 0.5))
    assert matthews(torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 0, 1]), 2) == 0.0  # undefined → 0
    # centred x = (-1, 0, 1), y = (-13/6, -1/6, 14/6): r = 4.5 / (√2 · √(61/6))
    assert pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 6.5])) == pytest.approx(4.5 / (2**0.5 * (61 / 6) ** 0.5))


def _labelled_file(path, n=80, seed=0, regression=False):
    rng = random.Random(seed)
    with open(path, "w") as handle:
        handle.write("sentence\tlabel\n")
        for _ in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
            label = rng.random() * 5 if regression else ("pos" if "king" in text or rng.random() < 0.3 else "neg")
            handle.write(f"{text}\t{label}\n")
    return path


@pytest.fixture(scope="module")
def classifier_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("clf")
    a = save_model(random_model("bert", "classification", seed=0, num_labels=2), root / "a")
    b = save_model(random_model("bert", "classification", seed=1, num_labels=2), root / "b")
    return a, b, _labelled_file(root / "task.tsv")


def test_classifier_loss_path_with_metrics(classifier_pair):
    a, b, data = classifier_pair
    p = Pipeline(a, b, match_data=data, eval_data=data, cache_dir=None, task=TaskSpec("sentence", "label"))
    report = p.run(SMALL)
    assert report["function_preserving"] and report["max_abs_logit_diff"] < 1e-4
    assert set(report["metric_curves"]["vanilla"]) == {"accuracy", "f1", "mcc"}
    vanilla, permuted = report["curves"]["vanilla"], report["curves"]["permuted"]
    assert vanilla[-1] == permuted[-1]  # λ=1 is exactly A
    assert permuted[0][1] == pytest.approx(vanilla[0][1], abs=1e-5)  # B′ is B on the task too
    assert report["eval"]["num_predictions"] == 80
    # The models have generic LABEL_i names, so string labels map to ids in sorted order, and the report says so.
    assert report["eval"]["label_names"] == ["neg", "pos"]
    assert any("label names mapped to ids" in n for n in report["notes"])


def test_classifier_without_labelled_data_is_refused(classifier_pair):
    a, b, _ = classifier_pair
    with pytest.raises(SettingsError, match="labelled"):
        Pipeline(a, b, cache_dir=None)


def test_labelled_file_problems(tmp_path, classifier_pair):
    path = _labelled_file(tmp_path / "t.tsv")
    with pytest.raises(DataError, match="no column 'text'"):
        load_labelled(path, "text", "label")
    data = load_labelled(path, "sentence", "label")
    assert data.label_names == ["neg", "pos"] and set(data.labels) == {0.0, 1.0}
    with pytest.raises(DataError, match="not among the model's labels"):
        load_labelled(path, "sentence", "label", label_names=["negative", "positive"])
    with pytest.raises(DataError, match="unknown format"):
        load_labelled(tmp_path / "t.xlsx", "a", "b") if (tmp_path / "t.xlsx").write_text("x") else None


def test_regression_uses_mse_and_pearson(tmp_path):
    a = save_model(random_model("bert", "classification", seed=3, num_labels=1), tmp_path / "a")
    b = save_model(random_model("bert", "classification", seed=4, num_labels=1), tmp_path / "b")
    data = _labelled_file(tmp_path / "sts.tsv", regression=True)
    p = Pipeline(a, b, match_data=data, eval_data=data, cache_dir=None, task=TaskSpec("sentence", "label"))
    curve = p.curve(SMALL, "vanilla")
    assert set(curve[0]) == {"lambda", "loss", "pearson"}
    # By hand at both ends (λ=1 is A, λ=0 is B): each example through the model on its own (no
    # padding, no batches), then the mean squared error and Pearson's r in float64.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = [line.split("\t") for line in data.read_text().splitlines()[1:]]
    gold = np.array([float(label) for _, label in rows])
    tokenizer = AutoTokenizer.from_pretrained(a)
    for point, folder in ((curve[-1], a), (curve[0], b)):
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        with torch.no_grad():
            pred = np.array([float(model(**tokenizer(text, return_tensors="pt")).logits[0, 0]) for text, _ in rows])
        assert point["loss"] == pytest.approx(np.mean((pred - gold) ** 2), rel=1e-5)
        assert point["pearson"] == pytest.approx(np.corrcoef(pred, gold)[0, 1], abs=1e-5)


def test_finetune_then_align_from_the_cli(tiny_pair, tmp_path):
    from permerge_core.cli import main

    data = _labelled_file(tmp_path / "task.tsv", n=64)
    for seed in (0, 1):
        mlm = tiny_pair["a"] if seed == 0 else tiny_pair["b"]
        assert main(["finetune", "--model", str(mlm), "--data", str(data), "--out", str(tmp_path / f"ft{seed}"),
                     "--text-column", "sentence", "--seed", str(seed), "--head-seed", "7", "--steps", "6", "--batch-size", "8"]) == 0
    c0 = json.loads((tmp_path / "ft0" / "config.json").read_text())
    assert c0["architectures"] == ["BertForSequenceClassification"] and c0["id2label"] == {"0": "neg", "1": "pos"}
    code = main(["align", "--model-a", str(tmp_path / "ft0"), "--model-b", str(tmp_path / "ft1"), "--match-data", str(data),
                 "--eval-data", str(data), "--text-column", "sentence", "--lambdas", "3", "--match-tokens", "800",
                 "--out", str(tmp_path / "out"), "--no-cache"])
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "metric_curves" in report and report["eval"]["label_names"] == ["neg", "pos"]


def test_only_an_evaluation_file_means_matching_on_its_texts(classifier_pair):
    a, b, data = classifier_pair
    p = Pipeline(a, b, eval_data=data, cache_dir=None, task=TaskSpec("sentence", "label"))
    assert p.match_path == str(data)
    assert any("evaluation file's input texts" in n for n in p.notes)
    assert p.match_passages[0] == p.objective.data.texts[0]


def test_bundled_classifiers_come_with_their_task(classifier_pair, tmp_path, monkeypatch):
    """A pair under assets/classifiers needs no data arguments: its task's files are used."""
    import shutil

    from permerge_core import checkpoints, objectives

    a, b, _ = classifier_pair
    bundled, task = tmp_path / "classifiers", tmp_path / "task"
    task.mkdir()
    for name in ("train", "eval"):
        text = _labelled_file(tmp_path / f"{name}.tsv", n=40, seed=len(name)).read_text()
        (task / f"{name}.tsv").write_text(text.replace("sentence\t", "text\t", 1))
    for src, name in ((a, "s0"), (b, "s1")):
        shutil.copytree(src, bundled / name)
    monkeypatch.setattr(checkpoints, "BUNDLED_CLASSIFIERS", bundled)
    monkeypatch.setattr(objectives, "BUNDLED_TASK", task)
    assert checkpoints.bundled_classifiers() == [bundled / "s0", bundled / "s1"]
    p = Pipeline(str(bundled / "s0"), str(bundled / "s1"), cache_dir=None)
    assert (p.eval_path, p.match_path) == (str(task / "eval.tsv"), str(task / "train.tsv"))
    assert len(p.objective.data.texts) == 40 and p.objective.task.text_column == "text"


def test_glue_by_name_needs_the_hub_and_says_so_offline(monkeypatch):
    from permerge_core import checkpoints
    from permerge_core.tasks import is_glue

    assert is_glue("glue:sst2") and is_glue("glue:mrpc:train") and not is_glue("dev.tsv")
    monkeypatch.setattr(checkpoints, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(DataError, match="Cannot reach the Hugging Face hub to fetch GLUE task 'sst2'") as err:
        load_labelled("glue:sst2", "sentence", "label")
    assert "give their path" in err.value.fix
    with pytest.raises(DataError, match="'sst3' is not a GLUE task"):
        load_labelled("glue:sst3", "sentence", "label")
