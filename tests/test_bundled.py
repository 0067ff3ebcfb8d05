"""The bundled seed models: present, loadable, as the model card says, reproducing its numbers."""

import json
from pathlib import Path

import pytest

from permerge_core import AlignSettings, Pipeline
from permerge_core.checkpoints import BUNDLED_CLASSIFIERS, BUNDLED_MODELS, bundled_classifiers, bundled_seeds, load_checkpoint

CARD = BUNDLED_MODELS / "card.json"
pytestmark = pytest.mark.skipif(not CARD.exists(), reason="no bundled models yet (assets/models/card.json missing)")


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads(CARD.read_text())


def test_shipped_files_load_and_match_the_card(card):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    assert [p.name for p in bundled_seeds()] == sorted(card["models"])
    total = sum(f.stat().st_size for f in BUNDLED_MODELS.rglob("*") if f.is_file())
    assert total <= 45 * 2**20, f"assets/models is {total / 2**20:.1f} MB"
    for name, entry in card["models"].items():
        folder = BUNDLED_MODELS / name
        model = AutoModelForMaskedLM.from_pretrained(folder)
        AutoTokenizer.from_pretrained(folder)
        cfg = entry["config"]
        assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.num_attention_heads, model.config.intermediate_size) == (
            cfg["layers"], cfg["hidden"], cfg["heads"], cfg["ffn"])
        ckpt = load_checkpoint(folder)
        assert ckpt.stored_dtype == "float16"


# The card's entry for the permuted path under its own (the default) settings.
DEFAULT_VARIANT = ("FFN + Head-Perm + residual first", dict(ffn=True, attention="heads", residual="first"))


def test_the_default_pair_reproduces_the_card_losses_curves_and_barriers(card):
    settings = AlignSettings(**card["settings"])
    # The card's numbers are those of today's defaults, and it says which evaluation protocol made them.
    assert settings == AlignSettings()
    assert f"--eval-packing {settings.eval_packing}" in (BUNDLED_MODELS / "MODEL_CARD.md").read_text()
    (pair_name, pair), = card["pairs"].items()
    name_a, name_b = pair_name.split("/")
    variant, merge = DEFAULT_VARIANT
    assert {k: card["settings"][k] for k in merge} == merge
    p = Pipeline(str(BUNDLED_MODELS / name_a), str(BUNDLED_MODELS / name_b), cache_dir=None)
    report = p.run(settings)
    vanilla, permuted = ([loss for _, loss in report["curves"][which]] for which in ("vanilla", "permuted"))
    assert vanilla[-1] == pytest.approx(card["models"][name_a]["held_out_loss"], abs=0.01)
    assert vanilla[0] == pytest.approx(card["models"][name_b]["held_out_loss"], abs=0.01)
    for which, curve, entry in (("vanilla", vanilla, pair["vanilla"]), ("permuted", permuted, pair[variant])):
        assert curve == pytest.approx(entry["curve"], abs=0.01), which
        assert report["barrier"][which] == pytest.approx(entry["barrier"], abs=0.01), which


CLASSIFIER_CARD = BUNDLED_CLASSIFIERS / "card.json"


@pytest.mark.skipif(not CLASSIFIER_CARD.exists(), reason="no bundled classifiers yet (assets/classifiers/card.json missing)")
def test_bundled_classifiers_load_reproduce_their_card_and_beat_the_majority_class():
    from dataclasses import replace

    from transformers import AutoModelForSequenceClassification

    card = json.loads(CLASSIFIER_CARD.read_text())
    assert [p.name for p in bundled_classifiers()] == sorted(card["models"])
    for name in card["models"]:
        model = AutoModelForSequenceClassification.from_pretrained(BUNDLED_CLASSIFIERS / name)
        assert model.config.id2label == {0: "bible", 1: "shakespeare"}
    a, b = (str(p) for p in bundled_classifiers())
    p = Pipeline(a, b, cache_dir=None)  # no data arguments: the bundled task's files
    assert p.eval_path.endswith("tasks/source/eval.tsv") and p.match_path.endswith("tasks/source/train.tsv")
    ends = p.curve(replace(AlignSettings(**card["settings"]), lambdas=2), "vanilla")
    baseline = card["task"]["majority_baseline"]
    for point, name in ((ends[-1], Path(a).name), (ends[0], Path(b).name)):
        assert point["loss"] == pytest.approx(card["models"][name]["held_out_loss"], abs=0.01)
        assert point["accuracy"] == pytest.approx(card["models"][name]["held_out_accuracy"], abs=0.005)
        assert point["accuracy"] >= baseline + 0.10, f"{name}: {point['accuracy']:.3f} vs majority {baseline:.3f}"
