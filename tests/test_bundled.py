"""The bundled seed models: present, loadable, as the model card says, reproducing its numbers."""

import json
from pathlib import Path

import pytest

from permerge_core import AlignSettings, Pipeline
from permerge_core.checkpoints import BUNDLED_MODELS, bundled_seeds, load_checkpoint

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


def test_the_default_pair_reproduces_the_card_losses(card):
    settings = AlignSettings(**card["settings"])
    (pair_name, pair), = card["pairs"].items()
    name_a, name_b = pair_name.split("/")
    p = Pipeline(str(BUNDLED_MODELS / name_a), str(BUNDLED_MODELS / name_b), cache_dir=None)
    vanilla = [pt["loss"] for pt in p.curve(settings, "vanilla")]
    assert vanilla[-1] == pytest.approx(card["models"][name_a]["held_out_loss"], abs=0.01)
    assert vanilla[0] == pytest.approx(card["models"][name_b]["held_out_loss"], abs=0.01)
    assert max(vanilla) == pytest.approx(max(pair["vanilla"]["curve"]), abs=0.01)
