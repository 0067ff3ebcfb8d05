"""The `train` command: deterministic per seed, resumable, and continuable with --init-from.

Tiny models on a few hundred lines of the bundled corpus; a run is a few steps.
"""

from pathlib import Path

import pytest
import torch

from permerge_core.errors import SettingsError
from permerge_core import training
from permerge_core.training import TrainConfig, train

CORPUS = Path(__file__).resolve().parent.parent / "assets" / "corpus"


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("corpus")
    lines = (CORPUS / "train.txt").read_text().splitlines()
    (root / "train.txt").write_text("\n".join(lines[:300]) + "\n")
    (root / "eval.txt").write_text("\n".join((CORPUS / "eval.txt").read_text().splitlines()[:40]) + "\n")
    return {"train_data": str(root / "train.txt"), "eval_data": str(root / "eval.txt")}


def config(texts, out, **overrides) -> TrainConfig:
    settings = dict(
        seed=0, out=str(out), layers=1, hidden=32, heads=2, ffn=64, max_length=32, steps=6, batch_size=8,
        warmup=4, eval_every=3, save_every=2, eval_tokens=512, dropout=0.1, **texts,
    )
    return TrainConfig(**(settings | overrides))


def weights(out) -> dict:
    """The full-precision weights of the last saved training state."""
    return torch.load(Path(out) / "training_state.pt", weights_only=True)["model"]


def same(w1: dict, w2: dict) -> bool:
    return w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)


def test_a_seed_gives_the_same_model_twice_and_another_seed_does_not(texts, tmp_path):
    train(config(texts, tmp_path / "a"), log=lambda m: None)
    train(config(texts, tmp_path / "b"), log=lambda m: None)
    train(config(texts, tmp_path / "c", seed=1), log=lambda m: None)
    assert same(weights(tmp_path / "a"), weights(tmp_path / "b"))
    assert not same(weights(tmp_path / "a"), weights(tmp_path / "c"))


def test_resuming_an_interrupted_run_equals_the_uninterrupted_run(texts, tmp_path):
    # A run stopped at step 2 (inside warm-up, where the total may still change) and resumed
    # to 6 steps must land exactly where a fresh 6-step run does.
    train(config(texts, tmp_path / "whole"), log=lambda m: None)
    train(config(texts, tmp_path / "parts", steps=2), log=lambda m: None)
    info = train(config(texts, tmp_path / "parts"), log=lambda m: None)
    assert info["steps"] == 6
    assert same(weights(tmp_path / "whole"), weights(tmp_path / "parts"))


def test_resuming_with_other_settings_is_refused(texts, tmp_path):
    train(config(texts, tmp_path / "run"), log=lambda m: None)
    with pytest.raises(SettingsError, match="other settings"):
        train(config(texts, tmp_path / "run", lr=5e-4, steps=8), log=lambda m: None)


def test_init_from_continues_the_weights_and_reads_on_through_the_data(texts, tmp_path):
    first = config(texts, tmp_path / "first")
    train(first, log=lambda m: None)
    second = config(texts, tmp_path / "second", init_from=first.out, lr=5e-4, warmup=2, steps=4)
    info = train(second, log=lambda m: None)
    assert [run["steps"] for run in info["earlier_runs"]] == [6]
    assert info["earlier_runs"][0]["config"]["out"] == first.out
    # The same continuation from a fresh model would differ: the weights really came from `first`.
    train(config(texts, tmp_path / "fresh", lr=5e-4, warmup=2, steps=4), log=lambda m: None)
    assert not same(weights(tmp_path / "second"), weights(tmp_path / "fresh"))
    # Deterministic too.
    train(config(texts, tmp_path / "again", init_from=first.out, lr=5e-4, warmup=2, steps=4), log=lambda m: None)
    assert same(weights(tmp_path / "second"), weights(tmp_path / "again"))
    # A third stage reads on after both earlier ones (6 + 4 batches), and lists both.
    third = train(config(texts, tmp_path / "third", init_from=second.out, steps=2, warmup=1), log=lambda m: None)
    assert [run["config"]["out"] for run in third["earlier_runs"]] == [first.out, second.out]
    assert training._source_steps(config(texts, tmp_path / "x", init_from=second.out)) == 10


def test_init_from_a_model_of_another_shape_is_refused(texts, tmp_path):
    train(config(texts, tmp_path / "first"), log=lambda m: None)
    with pytest.raises(SettingsError, match="hidden"):
        train(config(texts, tmp_path / "wider", hidden=64, init_from=str(tmp_path / "first")), log=lambda m: None)
    with pytest.raises(SettingsError, match="no training_state.pt"):
        train(config(texts, tmp_path / "lost", init_from=str(tmp_path / "missing")), log=lambda m: None)


def test_a_tiny_gpt2_learns_and_exports_a_loadable_causal_lm(texts, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = config(texts, tmp_path / "gpt2", family="gpt2", steps=12, warmup=2, lr=3e-3, dropout=0.0, eval_every=12)
    assert cfg.tokenizer == str(training.ASSETS / "tokenizer-bpe")
    untrained = training.build_model(cfg, 4096, 0)
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    before, _ = training.OBJECTIVES["gpt2"].evaluate(untrained, training.OBJECTIVES["gpt2"].eval_set(cfg, tokenizer), "cpu")
    info = train(cfg, log=lambda m: None)
    assert info["held_out_loss_training_eval_set"] < before - 0.3  # from ~ln(4096) = 8.3 nats
    model = AutoModelForCausalLM.from_pretrained(cfg.out)
    loaded = AutoTokenizer.from_pretrained(cfg.out)
    assert type(model).__name__ == "GPT2LMHeadModel" and model.dtype == torch.float16
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied
    assert loaded.eos_token_id == model.config.eos_token_id == 0
    # The export is the trained model (in float16): its held-out loss matches the one recorded.
    eval_set = training.OBJECTIVES["gpt2"].eval_set(cfg, loaded)
    assert sum(len(b) for b in eval_set) == 512
    loss, _ = training.OBJECTIVES["gpt2"].evaluate(model.float(), eval_set, "cpu")
    assert abs(loss - info["held_out_loss_training_eval_set"]) < 0.02


def test_packing_ends_every_line_with_end_of_text(texts, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(training.ASSETS / "tokenizer-bpe")
    (tmp_path / "two.txt").write_text("In the beginning\n\nGod created\n")
    ids = training.packed_ids(tokenizer, tmp_path / "two.txt").tolist()
    assert ids.count(0) == 2 and ids[-1] == 0
    assert tokenizer.decode(ids) == "In the beginning<|endoftext|>God created<|endoftext|>"


def test_an_unknown_family_is_refused(texts, tmp_path):
    with pytest.raises(SettingsError, match="family"):
        config(texts, tmp_path / "x", family="t5")
