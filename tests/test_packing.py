"""Evaluation packing: `blocks` (the paper's protocol) and `lines`, and what each keys."""

from dataclasses import replace

import pytest
import torch

from fixtures import make_tokenizer, random_text
from permerge_core import AlignSettings, Pipeline, data
from permerge_core.settings import BY_NAME

SMALL = AlignSettings(match_tokens=1500, eval_tokens=1500, lambdas=3)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def passages(n=40, seed=0):
    return random_text(n, seed).splitlines()


def real_rows(batches):
    return [ids[mask.bool()].tolist() for ids_b, mask_b in batches for ids, mask in zip(ids_b, mask_b)]


def test_blocks_are_the_concatenated_text_cut_to_length_and_wrapped(tok):
    texts = passages()
    batches = data.tokenize(tok, texts, max_tokens=10**6, max_length=32, batch_size=4, packing="blocks")
    rows = real_rows(batches)
    cls, sep = tok.cls_token_id, tok.sep_token_id
    assert all(r[0] == cls and r[-1] == sep and cls not in r[1:-1] and sep not in r[1:-1] for r in rows)
    assert sorted(map(len, rows))[1:] == [32] * (len(rows) - 1)  # only one block (the text's end) is shorter
    stream = [i for ids in tok(texts, add_special_tokens=False)["input_ids"] for i in ids]
    bodies = sorted(r[1:-1] for r in rows)
    expected = sorted(stream[k : k + 30] for k in range(0, len(stream), 30))
    assert bodies == expected  # every id once, in its order, across passage boundaries
    assert batches.num_tokens == len(stream) + 2 * len(rows)


def test_blocks_keep_to_the_token_budget_and_lines_keep_passages_apart(tok):
    texts = passages()
    cut = data.tokenize(tok, texts, max_tokens=100, max_length=32, packing="blocks")
    assert cut.num_tokens == 100 and sorted(map(len, real_rows(cut))) == [4, 32, 32, 32]
    lines = data.tokenize(tok, texts, max_tokens=10**6, max_length=64, packing="lines")
    assert lines.num_sequences == len(texts)  # every random passage is shorter than 64 tokens
    with pytest.raises(data.DataError, match="Unknown packing"):
        data.tokenize(tok, texts, 100, packing="pages")


def test_a_tokenizer_without_special_tokens_gets_bare_blocks(tmp_path):
    """Decoders (GPT-2) add no special tokens: their blocks are max_length ids of text."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from fixtures import WORDS

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>"] + sorted(set(WORDS)))}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    bare = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")
    assert data.special_wrapping(bare) == ([], [])
    batches = data.tokenize(bare, passages(), max_tokens=10**6, max_length=16, packing="blocks")
    stream = [i for ids in bare(passages(), add_special_tokens=False)["input_ids"] for i in ids]
    assert sorted(real_rows(batches)) == sorted(stream[k : k + 16] for k in range(0, len(stream), 16))


def test_the_setting_lists_what_the_data_module_packs():
    assert BY_NAME["eval_packing"].choices == data.PACKINGS
    assert AlignSettings().eval_packing == "blocks"


def test_packing_is_part_of_the_evaluation_key_and_masks_are_drawn_once(tiny_pair, monkeypatch):
    drawn = []
    real = data.prediction_batches
    monkeypatch.setattr("permerge_core.objectives.prediction_batches", lambda *a, **k: drawn.append(1) or real(*a, **k))
    p = Pipeline(tiny_pair["a"], tiny_pair["b"], match_data=tiny_pair["text"], eval_data=tiny_pair["text"], cache_dir=None)
    blocks, lines = SMALL, replace(SMALL, eval_packing="lines")
    assert p.curve_fields(blocks, "vanilla") != p.curve_fields(lines, "vanilla")
    curve = p.curve(blocks, "vanilla")
    p.curve(blocks, "permuted")
    assert len(drawn) == 1  # one draw of masks for every λ of both paths
    assert p.stage_status(lines)["vanilla path"] != "computed"
    other = p.curve(lines, "vanilla")
    assert len(drawn) == 2 and other[0]["loss"] != curve[0]["loss"]
    b, _ = p.eval_set(blocks)
    l, _ = p.eval_set(lines)
    assert b.num_sequences < l.num_sequences and b.num_tokens == l.num_tokens == 1500


def test_sequences_stop_at_the_tokenizer_limit(tiny_pair):
    """The tiny models take 64 positions; max length 128 with blocks must not run past them."""
    p = Pipeline(tiny_pair["a"], tiny_pair["b"], match_data=tiny_pair["text"], eval_data=tiny_pair["text"], cache_dir=None)
    assert p.sequence_length(SMALL) == 64 and SMALL.max_length == 128
    batches, _ = p.eval_set(SMALL)
    assert max(ids.shape[1] for ids in batches.input_ids) == 64
    assert any("cut at 64 tokens" in n for n in batches.notes)
    assert p.eval_fields(SMALL)["sequence_length"] == 64
    assert "sequence_length" not in p.eval_fields(replace(SMALL, max_length=64))
    assert torch.isfinite(torch.tensor(p.curve(SMALL, "vanilla")[1]["loss"]))


def test_classifiers_ignore_the_packing(tmp_path):
    from fixtures import random_model, save_model
    from permerge_core import TaskSpec

    a = save_model(random_model("bert", "classification", seed=0), tmp_path / "a")
    b = save_model(random_model("bert", "classification", seed=1), tmp_path / "b")
    rows = ["sentence\tlabel"] + [f"{line}\t{k % 2}" for k, line in enumerate(passages(20))]
    (tmp_path / "task.tsv").write_text("\n".join(rows) + "\n")
    p = Pipeline(a, b, eval_data=tmp_path / "task.tsv", cache_dir=None, task=TaskSpec("sentence", "label"))
    assert p.curve_fields(SMALL, "permuted") == p.curve_fields(replace(SMALL, eval_packing="lines"), "permuted")


def test_passages_longer_than_the_tokenizer_limit_are_cut_without_its_warning(tmp_path, capfd):
    """The text is tokenised whole and cut by permerge, which says so in its notes; the
    tokenizer's own "sequence length is longer than the specified maximum" line (printed once
    per tokenizer, even under --quiet) would only alarm the user."""
    from fixtures import make_gpt2_tokenizer

    long_passage = " ".join(random_text(40, seed=1).split())  # hundreds of tokens; the limits are 64 and 128
    for packing in data.PACKINGS:
        sequences, used, _ = data.token_sequences(make_tokenizer(tmp_path / packing), [long_passage], 10**6, 32, packing)
        assert used > 128 and max(map(len, sequences)) == 32
    assert len(data.packed_stream(make_gpt2_tokenizer(tmp_path / "bpe"), [long_passage])) > 128
    assert "longer than the specified maximum" not in capfd.readouterr().err
