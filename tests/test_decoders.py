"""The GPT-2 family end to end on tiny random decoders: packed text, next-token loss, the
planted permutation recovered through the whole pipeline, checkpoints and mismatched pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fixtures import make_gpt2_tokenizer, random_head_perm, random_model, save_model, small_cli_align
from permerge_core import AlignSettings, Pipeline
from permerge_core.families import FAMILIES
from permerge_core.checkpoints import load_checkpoint, validate_pair
from permerge_core.data import next_token_batches, packed_blocks
from permerge_core.errors import IncompatiblePairError, SettingsError
from permerge_core.evaluation import max_abs_logit_diff, mlm_loss
from permerge_core.matching import Matching
from permerge_core.permuting import inverse, permuted_model
from permerge_core.weight_matching import WeightObjective

SHAPE = dict(layers=2, hidden=16, heads=4, ffn=32)
SMALL = dict(match_tokens=3000, eval_tokens=1000, lambdas=5, max_length=32, batch_size=8)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_gpt2_tokenizer(tmp_path_factory.mktemp("tok"))


def planted_matching(model, seed: int) -> Matching:
    """A random function-preserving matching: the residual stream, every FFN, every layer's
    heads and the features inside each head."""
    rng = np.random.default_rng(seed)
    shape = FAMILIES["gpt2"].shape(model.config)
    perms = {"residual": rng.permutation(shape.hidden)}
    for i in range(shape.layers):
        perms[f"layer.{i}.ffn"] = rng.permutation(shape.ffn)
        perms[f"layer.{i}.attention"] = random_head_perm(shape.hidden, shape.heads, rng)
    return Matching(perms, {}, {"ffn": True, "attention": "heads", "residual": "first", "absolute": False})


def test_packed_blocks_are_lines_with_end_of_text_cut_into_blocks(tokenizer):
    lines = ["the lord said unto him", "and he shall love thee", "sweet night"]
    batches = packed_blocks(tokenizer, lines, max_tokens=10**6, max_length=8, batch_size=2)
    stream = [tok for ids in tokenizer(lines, add_special_tokens=False)["input_ids"] for tok in ids + [0]]
    blocks = [ids[mask.bool()].tolist() for batch, masks in zip(batches.input_ids, batches.attention_mask) for ids, mask in zip(batch, masks)]
    assert [t for b in blocks for t in b] == stream  # the text in order, every line ended by <|endoftext|>
    assert all(len(b) == 8 for b in blocks[:-1]) and 1 <= len(blocks[-1]) <= 8
    assert batches.num_tokens == len(stream) and batches.num_sequences == len(blocks)
    assert any("has only" in n for n in batches.notes)
    cut = packed_blocks(tokenizer, lines, max_tokens=10, max_length=8)
    assert cut.num_tokens == 10 and [m.sum().item() for m in cut.attention_mask[0]] == [8, 2] and not cut.notes


def test_next_token_loss_is_the_causal_lm_loss_of_transformers(tokenizer, text):
    model = random_model("gpt2", "causal-lm", seed=4, **SHAPE)
    batches = packed_blocks(tokenizer, text.read_text().splitlines(), 700, max_length=32, batch_size=8)
    assert batches.attention_mask[-1][-1].sum() < 32  # a padded last block, which must not count
    scored = next_token_batches(batches)
    result = mlm_loss(model, "lm_head", scored)
    total, hits, count = 0.0, 0, 0
    with torch.no_grad():
        for ids, mask in batches:
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            keep = (mask[:, :-1] * mask[:, 1:]).bool()
            total += float(F.cross_entropy(logits[keep], ids[:, 1:][keep], reduction="sum"))
            hits += int((logits[keep].argmax(-1) == ids[:, 1:][keep]).sum())
            count += int(keep.sum())
        full = batches.input_ids[0]  # unpadded blocks: transformers' own shifted loss
        own = float(model(input_ids=full, labels=full).loss)
    assert result.num_predictions == count == batches.num_tokens - batches.num_sequences  # each block's last token predicts nothing
    assert result.loss == pytest.approx(total / count, rel=1e-5) and result.accuracy == hits / count
    assert float(mlm_loss(model, "lm_head", scored[:1]).loss) == pytest.approx(own, rel=1e-5)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, text):
    root = tmp_path_factory.mktemp("planted")
    a = random_model("gpt2", "causal-lm", seed=11, **SHAPE)
    fam = FAMILIES["gpt2"]
    q = planted_matching(a, seed=12)
    b = permuted_model(a, fam, fam.heads["GPT2LMHeadModel"], 2, q)  # B[i] = A[q[i]]
    return {"a": save_model(a, root / "a"), "b": save_model(b, root / "b"), "q": q, "root": root}


def test_planted_gpt2_permutations_are_recovered_with_a_flat_permuted_path(planted, text):
    p = Pipeline(planted["a"], planted["b"], match_data=str(text), eval_data=str(text), cache_dir=planted["root"] / "cache")
    report = p.run(AlignSettings(**SMALL))
    q = planted["q"].permutations
    assert set(report["permutations"]) == set(q)
    for name, perm in q.items():  # A's unit i is B's unit inverse(q)[i]
        np.testing.assert_array_equal(report["permutations"][name], inverse(perm), err_msg=name)
    for i in range(2):  # A's head j is where the planted permutation moved it
        expected = [int(np.where(q[f"layer.{i}.attention"] // 4 == j)[0][0] // 4) for j in range(4)]
        assert report["head_assignment"][f"layer.{i}"] == expected
    permuted = [loss for _, loss in report["curves"]["permuted"]]
    assert max(permuted) - min(permuted) < 1e-4 and abs(report["barrier"]["permuted"]) < 1e-4  # B′ is A
    vanilla = [loss for _, loss in report["curves"]["vanilla"]]
    assert max(vanilla) - min(vanilla) > 0.1  # ... while the unaligned path is not (random models: it dips)
    assert report["function_preserving"] and report["max_abs_logit_diff"] < 1e-4
    assert report["eval"]["loss"] == "next-token loss" and report["eval"]["num_predictions"] > 900
    assert report["models"]["a"]["family"] == "gpt2" and report["models"]["a"]["head"] == "causal-lm"


def test_report_keys_are_the_same_for_a_decoder_and_an_encoder(planted, tiny_pair, text, tmp_path):
    s = AlignSettings(**{**SMALL, "lambdas": 2})
    gpt2 = Pipeline(planted["a"], planted["b"], match_data=str(text), eval_data=str(text), cache_dir=planted["root"] / "cache").run(s)
    bert = Pipeline(tiny_pair["a"], tiny_pair["b"], match_data=str(text), eval_data=str(text), cache_dir=tmp_path).run(s)
    assert set(gpt2) == set(bert) and set(gpt2["eval"]) == set(bert["eval"])
    assert set(gpt2["permutations"]) == set(bert["permutations"]) and set(gpt2["head_assignment"]) == set(bert["head_assignment"])
    assert bert["eval"]["loss"] == "masked-LM loss"


def test_cli_align_on_a_decoder_pair_names_the_next_token_loss(planted, text, tmp_path):
    report = small_cli_align(planted["a"], planted["b"], text, tmp_path)
    assert report["eval"]["predicted"] == "predicted tokens" and report["models"]["b"]["architecture"] == "GPT2LMHeadModel"


def test_equivalence_check_holds_for_an_unrelated_gpt2_pair_in_every_preserving_mode(tmp_path, text):
    pair = [save_model(random_model("gpt2", "causal-lm", seed=s, **SHAPE), tmp_path / f"m{s}") for s in (5, 6)]
    p = Pipeline(*pair, match_data=str(text), eval_data=str(text), cache_dir=tmp_path / "cache")
    for residual in ("first", "last", "all", "none"):
        for attention in ("heads", "monotonic", "none"):
            assert p.equivalence(AlignSettings(**SMALL, attention=attention, residual=residual)) < 1e-4, (attention, residual)
    for attention, residual in (("ignore-heads", "first"), ("heads", "sep")):  # so the check itself can fail
        assert p.equivalence(AlignSettings(**SMALL, attention=attention, residual=residual)) > 1e-2, (attention, residual)


def test_hub_style_checkpoint_without_prefix_lm_head_and_with_old_buffers_loads(tmp_path):
    """The hub's gpt2 stores the bare transformer's tensors (no `transformer.` prefix, no
    lm_head) plus the causal-mask buffers older transformers saved."""
    from safetensors.torch import save_file

    model = random_model("gpt2", "causal-lm", seed=3, **SHAPE)
    folder = save_model(model, tmp_path / "hub")
    state = {k[len("transformer."):]: v.contiguous() for k, v in model.state_dict().items() if k.startswith("transformer.")}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 128, 128, dtype=torch.bool))
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(state, str(folder / "model.safetensors"))
    loaded = load_checkpoint(folder)
    assert loaded.architecture == "GPT2LMHeadModel" and loaded.stored_dtype == "float32"
    assert loaded.model.lm_head.weight.data_ptr() == loaded.model.transformer.wte.weight.data_ptr()
    ids = torch.randint(1, 300, (2, 10))
    assert max_abs_logit_diff(loaded.model, model, ids, torch.ones_like(ids)) == 0.0


def test_mismatched_pairs_name_the_difference(tmp_path, tiny_pair):
    gpt2 = load_checkpoint(save_model(random_model("gpt2", "causal-lm", seed=0, **SHAPE), tmp_path / "g"))
    bert = load_checkpoint(tiny_pair["a"])
    with pytest.raises(IncompatiblePairError, match="family: A has bert, B has gpt2"):
        validate_pair(bert, gpt2)
    short = load_checkpoint(save_model(random_model("gpt2", "causal-lm", seed=1, positions=64, **SHAPE), tmp_path / "s"))
    with pytest.raises(IncompatiblePairError, match="number of positions: A has 128, B has 64"):
        validate_pair(gpt2, short)


def test_blocks_longer_than_the_position_table_are_refused(tmp_path, text):
    pair = [save_model(random_model("gpt2", "causal-lm", seed=s, positions=16, **SHAPE), tmp_path / f"m{s}") for s in (0, 1)]
    p = Pipeline(*pair, match_data=str(text), eval_data=str(text), cache_dir=tmp_path / "cache")
    with pytest.raises(SettingsError, match="sequences of 32 tokens, but the models have only 16 positions") as err:
        p.statistics(AlignSettings(**SMALL))
    assert "16 or less" in err.value.fix
    assert p.equivalence(AlignSettings(**{**SMALL, "max_length": 16})) < 1e-4  # within the table it runs


def test_bare_gpt2_has_no_loss_path_but_an_equivalence_check(tmp_path, text):
    pair = [save_model(random_model("gpt2", "base", seed=s, **SHAPE), tmp_path / f"m{s}") for s in (0, 1)]
    p = Pipeline(*pair, match_data=str(text), eval_data=str(text), cache_dir=tmp_path / "cache")
    assert p.a.architecture == "GPT2Model"
    with pytest.raises(SettingsError, match="language-model heads"):
        p.curve(AlignSettings(**SMALL), "vanilla")
    assert p.equivalence(AlignSettings(**SMALL)) < 1e-4  # the last hidden state, in A's order


@pytest.fixture(scope="module")
def tie_mixed(tmp_path_factory):
    """Two valid GPT-2 checkpoints: one ties its head to the token embeddings (transformers'
    default), the other has an lm_head of its own (`tie_word_embeddings` false)."""
    root = tmp_path_factory.mktemp("ties")
    tied = random_model("gpt2", "causal-lm", seed=21, **SHAPE)
    untied = random_model("gpt2", "causal-lm", seed=22, tied=False, **SHAPE)
    assert not torch.equal(untied.lm_head.weight, untied.transformer.wte.weight)
    return {"tied": save_model(tied, root / "tied"), "untied": save_model(untied, root / "untied"), "root": root}


@pytest.mark.parametrize("ends", [("tied", "untied"), ("untied", "tied")], ids=["A-tied", "B-tied"])
def test_a_pair_tied_at_one_end_only_aligns_with_an_untied_working_model(tie_mixed, text, ends, tmp_path):
    """The working model (interpolation.working_model) holds a head of its own when either end
    does: θ(λ)'s head is λ·(A's head) + (1−λ)·(B′'s head), which is not θ(λ)'s embeddings, so it
    cannot be tied. A tied end's head is its token embeddings; B′ keeps an untied B's head,
    permuted like wte (the residual permutation on its columns), and so computes B's logits."""
    s = AlignSettings(**{**SMALL, "lambdas": 3})
    a_folder, b_folder = (tie_mixed[end] for end in ends)
    p = Pipeline(a_folder, b_folder, match_data=str(text), eval_data=str(text), cache_dir=tmp_path / "cache")
    report = p.run(s)
    a, b = p.a.model, p.b.model
    head = lambda m: m.lm_head.weight  # noqa: E731  (a tied model's is its wte)
    work = p._interpolator_for(s, "permuted").set(0.0)  # bitwise B′
    assert work.lm_head.weight is not work.transformer.wte.weight and work.config.tie_word_embeddings is False
    assert (a.lm_head.weight is a.transformer.wte.weight) == (ends[0] == "tied") == a.config.tie_word_embeddings  # A as loaded
    perm = torch.as_tensor(p.matching(s).residual_perm(p.a.family.residual_layout.count(2) - 1))
    assert torch.equal(work.lm_head.weight, head(b)[:, perm]) and torch.equal(work.transformer.wte.weight, b.transformer.wte.weight[:, perm])
    ids = torch.randint(1, 300, (3, 16))
    with torch.no_grad():
        assert torch.allclose(work(input_ids=ids).logits, b(input_ids=ids).logits, atol=1e-5, rtol=0)  # B′ computes B
    assert report["function_preserving"] and report["max_abs_logit_diff"] < 1e-5
    b_prime_head = work.lm_head.weight.detach().clone()
    work = p._interpolator_for(s, "permuted").set(0.5)
    assert torch.allclose(work.lm_head.weight, 0.5 * head(a) + 0.5 * b_prime_head, atol=1e-6)
    work = p._interpolator_for(s, "permuted").set(1.0)
    assert all(torch.equal(t, a.state_dict()[n]) for n, t in work.state_dict().items())  # θ(1) is A, head included
    assert report["curves"]["permuted"][-1][1] == report["curves"]["vanilla"][-1][1] == report["endpoint_loss"]["a"]  # ...evaluated
    # The plane's distances count the head as the working model holds it: B − A over every parameter.
    wanted = sum(float((b.state_dict()[n].double() - a.state_dict()[n].double()).square().sum()) for n, _ in work.named_parameters())
    assert p.plane_basis(s).distance_b == pytest.approx(wanted ** 0.5, rel=1e-9)
    assert p.equivalence(AlignSettings(**{**SMALL, "matcher": "weights"})) < 1e-5  # the weight matcher too
    # ...whose objective counts the head and the embeddings apart, as the working model holds them
    # (a tied pair: once).
    embeddings_and_head = {"transformer.wte.weight", "lm_head.weight"}
    assert embeddings_and_head <= set(WeightObjective(a, b, p.b.family, p.b.head, 2).tensors)
    tied = load_checkpoint(tie_mixed["tied"]).model
    assert len(embeddings_and_head & set(WeightObjective(tied, tied, p.b.family, p.b.head, 2).tensors)) == 1
    # The merged model is a valid checkpoint that reloads untied and computes θ(½).
    merged = load_checkpoint(p.save_merged(s, 0.5, tmp_path / "merged"))
    assert merged.model.lm_head.weight.data_ptr() != merged.model.transformer.wte.weight.data_ptr()
    with torch.no_grad():
        want = p._interpolator_for(s, "permuted").set(0.5)(input_ids=ids).logits
        assert torch.allclose(merged.model(input_ids=ids).logits, want, atol=1e-5, rtol=0)


def test_cli_align_on_a_pair_tied_at_one_end_only_exits_0(tie_mixed, text, tmp_path):
    from permerge_core.cli import main

    code = main(["align", "--model-a", str(tie_mixed["tied"]), "--model-b", str(tie_mixed["untied"]), "--match-data", str(text),
                 "--eval-data", str(text), "--match-tokens", "2000", "--eval-tokens", "600", "--max-length", "32", "--lambdas", "3",
                 "--out", str(tmp_path / "out"), "--no-cache", "--quiet", "--save-merged", str(tmp_path / "merged")])
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["function_preserving"] and report["max_abs_logit_diff"] < 1e-5
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["tie_word_embeddings"] is False


def test_an_untied_checkpoint_without_its_head_is_refused_not_given_a_random_one(tie_mixed, tmp_path):
    """`lm_head.weight` may be missing only where the config ties it to the token embeddings;
    an untied model would otherwise run with a randomly initialised head."""
    import shutil

    from safetensors.torch import load_file, save_file

    from permerge_core.errors import CheckpointError

    for name in ("tied", "untied"):
        folder = tmp_path / name
        shutil.copytree(tie_mixed[name], folder)
        state = {k: v.contiguous() for k, v in load_file(str(folder / "model.safetensors")).items() if k != "lm_head.weight"}
        save_file(state, str(folder / "model.safetensors"))
    tied = load_checkpoint(tmp_path / "tied").model  # lacks it too, and ties it: fine
    assert tied.lm_head.weight.data_ptr() == tied.transformer.wte.weight.data_ptr()
    with pytest.raises(CheckpointError, match="has no lm_head.weight.*would be random") as refused:
        load_checkpoint(tmp_path / "untied")
    assert "tie_word_embeddings" in refused.value.fix
