"""The GPT-NeoX family (Pythia's shape) on tiny random models: its rotary features stay in place,
and that rule is tested, not assumed; B′ computes B in every function-preserving mode; planted
shuffles come back exactly through both matchers and the CLI; what it cannot align is refused."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from fixtures import random_ids, random_model, random_move, save_model, small_cli_align, spaces_of
from permerge_core import AlignSettings, Pipeline
from permerge_core import spaces as sp
from permerge_core.checkpoints import load_checkpoint, validate_pair
from permerge_core.errors import CheckpointError, IncompatiblePairError, SettingsError
from permerge_core.evaluation import max_abs_logit_diff
from permerge_core.matching import Matching, compute_matching, identity
from permerge_core.modes import ATTENTION, RESIDUAL
from permerge_core.permuting import inverse, permuted_model
from permerge_core.statistics import collect_statistics
from permerge_core.weight_matching import match_weights
from test_invariants import _batches, head_for

CAUSAL, BASE = "causal-lm", "base"
# (shape, rotary fraction): features per head, of which the rotary embedding fixes the first few.
SHAPES = {
    "2x16h4-r.5": (dict(layers=2, hidden=16, heads=4, ffn=32), 0.5),  # head 4: 2 fixed, 2 free
    "1x8h1-r.5": (dict(layers=1, hidden=8, heads=1, ffn=12), 0.5),  # one head: 4 fixed, 4 free
    "2x8h4-r.5": (dict(layers=2, hidden=8, heads=4, ffn=10), 0.5),  # heads of size 2, both fixed: heads move whole
    "2x9h3-r.5": (dict(layers=2, hidden=9, heads=3, ffn=13), 0.5),  # odd: int(1.5) = 1 rounds up to one pair
    "2x24h3-r.25": (dict(layers=2, hidden=24, heads=3, ffn=40), 0.25),  # Pythia's fraction: 2 of 8 fixed
}
FIXED = {"2x16h4-r.5": (0, 1), "1x8h1-r.5": (0, 1, 2, 3), "2x8h4-r.5": (0, 1), "2x9h3-r.5": (0, 1), "2x24h3-r.25": (0, 1)}
PRESERVING = [(att, res) for att, a in ATTENTION.items() if a.preserves_function for res, r in RESIDUAL.items() if r.preserves_function]
SMALL = dict(match_tokens=3000, eval_tokens=1000, lambdas=5, max_length=32, batch_size=8)


def _neox(kind=CAUSAL, seed=0, shape="2x16h4-r.5", **extra):
    dims, rotary = SHAPES[shape]
    return random_model("gpt_neox", kind, seed=seed, rotary=rotary, **{**dims, **extra})


def _moved(model, spaces, attention: str, residual: str, seed: int) -> Matching:
    """Random permutations of the kinds the modes make: every FFN, each attention space by the
    mode's move (its fixed positions kept), the stream by the residual mode's."""
    rng = np.random.default_rng(seed)
    perms = {}
    for name, space in spaces.items():
        if space.kind == sp.FFN:
            perms[name] = random_move(space, sp.PERMUTATION, rng)
        elif space.kind == sp.ATTENTION:
            perms[name] = random_move(space, ATTENTION[attention].move, rng)
    perms[sp.STREAM] = random_move(sp.stream(spaces), RESIDUAL[residual].move, rng)
    return Matching(perms, {}, {"ffn": True, "attention": attention, "residual": residual, "absolute": False})


def _swap_in_head(space: sp.Space, head: int, i: int, j: int) -> np.ndarray:
    perm = identity(space.width)
    perm[[head * space.head_dim + i, head * space.head_dim + j]] = perm[[head * space.head_dim + j, head * space.head_dim + i]]
    return perm


def _only_attention(spaces, layer: int, perm: np.ndarray) -> Matching:
    """Everything in place but one layer's attention features (q, k and v of each head alike)."""
    perms = {name: identity(s.width) for name, s in spaces.items() if s.kind != sp.RESIDUAL}
    perms[sp.STREAM] = identity(sp.stream(spaces).width)
    perms[sp.attention(layer)] = perm
    return Matching(perms, {}, {"ffn": True, "attention": "heads", "residual": "first", "absolute": False})


# ---- the declaration --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_attention_spaces_fix_the_rotary_features_of_every_head(shape):
    model = _neox(shape=shape)
    spaces = spaces_of(model)
    dims, _ = SHAPES[shape]
    assert list(spaces) == [*(f"layer.{i}.{k}" for i in range(dims["layers"]) for k in ("ffn", "attention")),
                            *(f"residual.{n}" for n in range(dims["layers"] + 1))]  # one node per layer, after the embeddings'
    for i in range(dims["layers"]):
        attention = spaces[sp.attention(i)]
        assert attention.fixed == FIXED[shape] and attention.heads == dims["heads"]
        assert model.gpt_neox.rotary_emb.inv_freq.numel() * 2 == len(FIXED[shape])  # what transformers rotates


def test_a_sequential_residual_checkpoint_is_refused_at_load(tmp_path):
    folder = save_model(_neox(parallel=False), tmp_path / "sequential")
    with pytest.raises(CheckpointError, match="use_parallel_residual") as err:
        load_checkpoint(folder)
    assert "parallel residual" in str(err.value) and err.value.fix


def test_pairs_with_other_rotary_fractions_are_refused(tmp_path):
    a = load_checkpoint(save_model(_neox(), tmp_path / "a"))
    b = load_checkpoint(save_model(random_model("gpt_neox", CAUSAL, seed=1, rotary=1.0, layers=2, hidden=16, heads=4, ffn=32), tmp_path / "b"))
    with pytest.raises(IncompatiblePairError, match="rotary dimensions per head: A has 2, B has 4"):
        validate_pair(a, b)


# ---- the rule, tested ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape,head,swap,keeps", [
    ("2x16h4-r.5", 1, (0, 1), False),  # the two halves of head 1's only rotary pair: the rotation turns into its inverse
    ("2x16h4-r.5", 1, (2, 3), True),  # two features the rotary embedding leaves alone
    ("1x8h1-r.5", 0, (0, 1), False),  # two pairs' first halves: each now turns at the other's frequency
    ("1x8h1-r.5", 0, (0, 2), False),  # one pair's halves (i and i + rotary/2)
    ("1x8h1-r.5", 0, (5, 6), True),
    ("2x9h3-r.5", 2, (1, 2), False),  # feature 1 is rotated although int(3 × 0.5) = 1: transformers rounds up to a pair
], ids=["r-pair-halves", "free", "r-two-pairs", "r-i-and-i+half", "free-1-head", "r-rounded-up"])
def test_moving_a_rotary_feature_changes_the_function_and_moving_a_free_one_does_not(shape, head, swap, keeps):
    model = _neox(seed=2, shape=shape)
    family, arch = head_for(model)
    spaces = spaces_of(model)
    layer = SHAPES[shape][0]["layers"] - 1
    perm = _swap_in_head(spaces[sp.attention(layer)], head, *swap)
    assert sp.fits(perm, spaces[sp.attention(layer)], sp.WITHIN_HEADS) == keeps  # what the declaration says ...
    b_prime = permuted_model(model, family, arch, layer + 1, _only_attention(spaces, layer, perm))
    ids, mask = random_ids(vocab=model.config.vocab_size, length=16)
    diff = max_abs_logit_diff(b_prime, model, ids, mask)
    assert (diff < 1e-4) if keeps else (diff > 1e-2), f"swap {swap} in head {head}: max |Δlogit| {diff:.2e}"  # ... is what the model does


# ---- function preservation ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("kind", [CAUSAL, BASE])
@pytest.mark.parametrize("attention,residual", PRESERVING)
def test_b_prime_computes_b_under_every_function_preserving_mode(shape, kind, attention, residual):
    model = _neox(kind, seed=1, shape=shape)
    family, arch = head_for(model)
    spaces = spaces_of(model)
    layers = SHAPES[shape][0]["layers"]
    matching = _moved(model, spaces, attention, residual, seed=3)
    assert matching.function_preserving
    b_prime = permuted_model(model, family, arch, layers, matching)
    ids, mask = random_ids(vocab=model.config.vocab_size)
    last = matching.residual_perm(layers) if kind == BASE else None  # a bare model's output: the last node, reindexed
    assert max_abs_logit_diff(b_prime, model, ids, mask, hidden_perm=last) < 1e-4
    changed = {k for k, v in b_prime.state_dict().items() if not torch.equal(v, model.state_dict()[k])}
    assert any(".mlp." in k for k in changed)  # the test would pass trivially if nothing moved
    heads_moved = any(not np.array_equal(matching.permutations[n], identity(s.width)) for n, s in spaces.items() if s.kind == sp.ATTENTION)
    free = spaces[sp.attention(0)].head_dim - len(FIXED[shape])  # monotonic moves nothing in heads with one free feature or none
    assert heads_moved == (attention == "heads" or (attention == "monotonic" and free >= 2))
    assert any("query_key_value" in k for k in changed) == (heads_moved or residual != "none")


# ---- planted shuffles come back ------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A and B = A shuffled: the stream, every FFN, every layer's heads and each head's free
    (non-rotary) features, saved as checkpoints."""
    root = tmp_path_factory.mktemp("neox")
    a = _neox(seed=11, shape="2x24h3-r.25")
    family, arch = head_for(a)
    q = _moved(a, spaces_of(a), "heads", "first", seed=13)
    for i in range(2):  # the shuffle really moves heads and free features: it is not only a head order
        perm = q.permutations[sp.attention(i)]
        assert not sp.fits(perm, spaces_of(a)[sp.attention(i)], sp.WITHIN_HEADS) and (perm % 8 != np.arange(24) % 8).any()
    b = permuted_model(a, family, arch, 2, q)  # B[i] = A[q[i]]
    return {"a": save_model(a, root / "a"), "b": save_model(b, root / "b"), "q": q, "root": root, "model_a": a, "model_b": b}


def _assert_recovered(permutations: dict, q: Matching, heads: dict | None = None):
    assert set(permutations) == set(q.permutations)
    for name, perm in q.permutations.items():  # A's unit i is B's unit inverse(q)[i]
        np.testing.assert_array_equal(permutations[name], inverse(perm), err_msg=name)
    for i in range(2) if heads is not None else ():
        perm = q.permutations[sp.attention(i)]
        assert list(heads[sp.layer_name(i)]) == [int(np.where(perm // 8 == j)[0][0] // 8) for j in range(3)]


def test_activation_matching_recovers_a_planted_shuffle_with_a_flat_permuted_path(planted, text):
    p = Pipeline(planted["a"], planted["b"], match_data=str(text), eval_data=str(text), cache_dir=planted["root"] / "cache")
    report = p.run(AlignSettings(**SMALL))
    _assert_recovered(report["permutations"], planted["q"], report["head_assignment"])
    permuted = [loss for _, loss in report["curves"]["permuted"]]
    assert max(permuted) - min(permuted) < 1e-5 and abs(report["barrier"]["permuted"]) < 1e-5  # B′ is A
    vanilla = [loss for _, loss in report["curves"]["vanilla"]]
    assert max(vanilla) - min(vanilla) > 0.05  # ... while the unaligned path is not flat
    assert report["function_preserving"] and report["max_abs_logit_diff"] < 1e-4
    assert report["models"]["a"]["family"] == "gpt_neox" and report["eval"]["loss"] == "next-token loss"
    b = load_checkpoint(planted["b"])
    b_prime = permuted_model(b.model, b.family, b.head, 2, p.matching(AlignSettings(**SMALL)))
    for key, value in planted["model_a"].state_dict().items():
        assert torch.equal(b_prime.state_dict()[key], value), key


def test_weight_matching_recovers_a_planted_shuffle_from_the_weights_alone(planted):
    a, b = planted["model_a"], planted["model_b"]
    family, arch = head_for(b)
    found = match_weights(a, b, family, arch, spaces_of(a), AlignSettings(attention="heads", residual="first"))
    _assert_recovered(found.permutations, planted["q"], {sp.layer_name(i): h.assignment for i, h in found.heads.items()})
    b_prime = permuted_model(b, family, arch, 2, found)
    for key, value in a.state_dict().items():
        assert torch.equal(b_prime.state_dict()[key], value), key
    assert found.info["converged"]


def test_cli_align_runs_end_to_end_on_a_neox_pair(planted, text, tmp_path):
    report = small_cli_align(planted["a"], planted["b"], text, tmp_path)
    assert report["function_preserving"] is True and report["max_abs_logit_diff"] < 1e-4
    assert report["models"]["b"]["architecture"] == "GPTNeoXForCausalLM" and abs(report["barrier"]["permuted"]) < 1e-4


# ---- what would move a rotary feature is refused ---------------------------------------------------


def test_both_matchers_refuse_ignore_heads_on_rotary_heads(planted):
    a, b = planted["model_a"], planted["model_b"]
    family, arch = head_for(b)
    settings = AlignSettings(attention="ignore-heads", residual="first")
    with pytest.raises(SettingsError, match=r"ignore-heads.*rotary features 0–1 of every attention head of gpt_neox") as err:
        match_weights(a, b, family, arch, spaces_of(a), settings)
    assert "heads" in err.value.fix and "monotonic" in err.value.fix
    stats = collect_statistics(a, b, family, a.config, _batches(a.config.vocab_size))
    with pytest.raises(SettingsError, match="ignore-heads"):
        compute_matching(stats, spaces_of(a), settings, family=family.name)
    assert compute_matching(stats, spaces_of(a), AlignSettings(attention="heads", residual="first")).function_preserving
