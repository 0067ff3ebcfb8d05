"""The method's invariants, tested directly on tiny random models (docs/method.md §5, §6)."""

from dataclasses import astuple
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from permerge_core.families import FAMILIES
from permerge_core.families.schema import BASE, CAUSAL_LM, MLM
from permerge_core.checkpoints import _choose_head
from permerge_core.data import TokenBatches
from permerge_core.evaluation import barrier, max_abs_logit_diff
from permerge_core.interpolation import Interpolator, lambda_grid
from permerge_core.matching import Matching, compute_matching
from permerge_core import spaces as sp
from permerge_core.spaces import model_spaces
from permerge_core.permuting import inverse, permutation_plan, permute_state_dict, permuted_model
from permerge_core.statistics import collect_statistics

from fixtures import FAMILY_CLASSES, merge, random_head_perm, random_ids, random_model, random_move, spaces_of

SHAPES = [
    dict(layers=2, hidden=16, heads=4, ffn=32),
    dict(layers=1, hidden=8, heads=1, ffn=12),  # a single head
    dict(layers=2, hidden=6, heads=6, ffn=10),  # heads of size 1
    dict(layers=2, hidden=9, heads=3, ffn=13),  # odd widths
]
LM = {"bert": MLM, "roberta": MLM, "gpt2": CAUSAL_LM, "gpt_neox": CAUSAL_LM}  # each family's language-model head


def head_for(model):
    family = FAMILIES[model.config.model_type].for_config(model.config)  # as load_checkpoint gives it
    return family, _choose_head(family, [type(model).__name__], set())


def random_matching(cfg, attention="heads", residual="first", seed=0) -> Matching:
    rng = np.random.default_rng(seed)
    L, d, H, f, *_ = astuple(FAMILIES[cfg.model_type].shape(cfg))
    spaces = sp.of_model(FAMILIES[cfg.model_type], cfg)  # they carry the rotary features that stay in place
    perms = {}
    for i in range(L):
        perms[f"layer.{i}.ffn"] = rng.permutation(f)
        if attention == "ignore-heads":
            perms[f"layer.{i}.attention"] = rng.permutation(d)
        elif attention == "monotonic":
            perms[f"layer.{i}.attention"] = random_move(spaces[sp.attention(i)], sp.WITHIN_HEADS, rng)
        elif attention == "none":
            perms[f"layer.{i}.attention"] = np.arange(d)
        else:
            perms[f"layer.{i}.attention"] = random_move(spaces[sp.attention(i)], sp.HEADS, rng)
    if residual == "sep":
        for n in range(2 * L + 1):
            perms[f"residual.{n}"] = rng.permutation(d)
    elif residual == "none":
        perms["residual"] = np.arange(d)
    else:
        perms["residual"] = rng.permutation(d)
    return Matching(perms, {}, {"ffn": True, "attention": attention, "residual": residual, "absolute": False})


@pytest.mark.parametrize("shape", SHAPES, ids=["2x16h4", "1x8h1", "2x6h6", "2x9h3"])
@pytest.mark.parametrize("family,kind", sorted(FAMILY_CLASSES))
@pytest.mark.parametrize("attention,residual", [("heads", "first"), ("monotonic", "all"), ("none", "last"), ("heads", "none")])
def test_permuted_model_computes_the_same_function(family, kind, shape, attention, residual):
    model = random_model(family, kind, seed=1, **shape)
    fam, head = head_for(model)
    matching = random_matching(model.config, attention, residual, seed=2)
    assert matching.function_preserving
    b_prime = permuted_model(model, fam, head, model.config.num_hidden_layers, matching)
    ids, mask = random_ids(vocab=model.config.vocab_size)
    final = matching.residual_perm(2 * model.config.num_hidden_layers)  # a bare model's output: the last node
    assert max_abs_logit_diff(b_prime, model, ids, mask, hidden_perm=final if kind == BASE else None) < 1e-4
    # ... and the permutation really moved weights (the test would pass trivially otherwise).
    changed = [k for k, v in b_prime.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    assert len(changed) >= 6 * model.config.num_hidden_layers  # every layer's FFN and attention tensors at least


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2"])
@pytest.mark.parametrize("attention,residual", [("ignore-heads", "none"), ("heads", "sep")])
def test_non_preserving_modes_change_the_function(family, attention, residual):
    model = random_model(family, LM[family], seed=3, layers=2, hidden=16, heads=4, ffn=32)
    fam, head = head_for(model)
    matching = random_matching(model.config, attention, residual, seed=4)
    assert not matching.function_preserving
    b_prime = permuted_model(model, fam, head, 2, matching)
    ids, mask = random_ids(vocab=model.config.vocab_size)
    assert max_abs_logit_diff(b_prime, model, ids, mask) > 1e-2


def test_tied_decoder_stays_tied_and_equivalent_with_residual_permutation():
    model = random_model("bert", "mlm", seed=5)
    fam, head = head_for(model)
    b_prime = permuted_model(model, fam, head, 2, random_matching(model.config, "heads", "first", seed=6))
    assert b_prime.cls.predictions.decoder.weight.data_ptr() == b_prime.bert.embeddings.word_embeddings.weight.data_ptr()
    ids, mask = random_ids()
    assert max_abs_logit_diff(b_prime, model, ids, mask) < 1e-4


def test_gpt2_lm_head_stays_tied_to_the_token_embeddings():
    model = random_model("gpt2", "causal-lm", seed=5)
    fam, head = head_for(model)
    b_prime = permuted_model(model, fam, head, 2, random_matching(model.config, "heads", "first", seed=6))
    assert b_prime.lm_head.weight.data_ptr() == b_prime.transformer.wte.weight.data_ptr()
    assert not torch.equal(b_prime.lm_head.weight, model.lm_head.weight)
    ids, mask = random_ids(vocab=model.config.vocab_size)
    assert max_abs_logit_diff(b_prime, model, ids, mask) < 1e-4


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2"])
def test_permutation_then_inverse_is_identity_on_every_tensor(family):
    model = random_model(family, LM[family], seed=7)
    fam, head = head_for(model)
    m = random_matching(model.config, "ignore-heads", "sep", seed=8)
    plan = permutation_plan(fam, head, 2, m.permutations, m.residual_perm)
    inv = {k: inverse(v) for k, v in m.permutations.items()}
    inv_plan = permutation_plan(fam, head, 2, inv, lambda n: inv.get(f"residual.{n}", inv.get("residual")))
    state = model.state_dict()
    back = permute_state_dict(permute_state_dict(state, plan), inv_plan)
    for k, v in state.items():
        assert torch.equal(back[k], v), k


def _batches(vocab, n=8, length=24, seed=0):
    ids, masks = [], []
    for b in range(n):
        i, m = random_ids(batch=4, length=length, seed=seed + b, vocab=vocab)
        ids.append(i)
        masks.append(m)
    return TokenBatches(ids, masks, int(sum(m.sum() for m in masks)), 4 * n)


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2"])
@pytest.mark.parametrize("residual", ["first", "last", "all"])
def test_planted_permutation_is_recovered_exactly(family, residual):
    a = random_model(family, LM[family], seed=11, layers=2, hidden=16, heads=4, ffn=32)
    fam, head = head_for(a)
    planted = random_matching(a.config, "heads", residual, seed=12)
    b = permuted_model(a, fam, head, 2, planted)  # B[i] = A[q[i]]
    stats = collect_statistics(a, b, fam, a.config, _batches(a.config.vocab_size))
    found = compute_matching(stats, spaces_of(a), merge(ffn=True, attention="heads", residual=residual))
    for name, q in planted.permutations.items():
        np.testing.assert_array_equal(found.permutations[name], inverse(q), err_msg=name)
    b_prime = permuted_model(b, fam, head, 2, found)
    for k, v in a.state_dict().items():
        assert torch.allclose(b_prime.state_dict()[k], v), k
    # heads: A head j matched to the B head the planted permutation moved it to
    dk = 4
    for i in range(2):
        q = planted.permutations[f"layer.{i}.attention"]
        expected = [int(np.where(q // dk == j)[0][0] // dk) for j in range(4)]
        assert list(found.heads[i].assignment) == expected


def _anti_correlated_statistics(layers=1, hidden=8, heads=2, ffn=12, tokens=400, seed=0):
    """Statistics built from activations, not a model: every B unit j is A's unit q[j] (a
    head-respecting q per space), negated for the first two units of each block of 4 (so two
    per attention head), plus a little noise. Returns (stats, q per space, negated B units)."""
    from permerge_core.statistics import SpaceStats, Statistics

    rng = np.random.default_rng(seed)
    dims = {f"layer.{i}.{k}": d for i in range(layers) for k, d in (("ffn", ffn), ("attention", hidden))}
    dims.update({f"residual.{n}": hidden for n in range(2 * layers + 1)})
    spaces, planted, negated = {}, {}, {}
    for name, d in dims.items():
        q = random_head_perm(d, heads, rng) if name.endswith("attention") else rng.permutation(d)
        sign = np.where(np.arange(d) % 4 < 2, -1.0, 1.0)
        xa = rng.standard_normal((tokens, d))
        xb = xa[:, q] * sign + 0.05 * rng.standard_normal((tokens, d))
        spaces[name] = SpaceStats.zeros(d)
        spaces[name].add(torch.tensor(xa, dtype=torch.float32), torch.tensor(xb, dtype=torch.float32))
        planted[name], negated[name] = q, sign < 0
    return Statistics(spaces, layers, tokens), planted, negated


def test_signed_matching_never_pairs_anti_correlated_units_and_absolute_does():
    stats, planted, negated = _anti_correlated_statistics()
    shape = model_spaces(SimpleNamespace(layers=1, hidden=8, heads=2, ffn=12), residual_nodes=3)  # as built above
    signed = compute_matching(stats, shape, merge(attention="heads", residual="first"))
    absolute = compute_matching(stats, shape, merge(attention="heads", residual="first", absolute=True))
    again = compute_matching(stats, shape, merge(attention="heads", residual="first"))  # not |corr| remembered
    for name, space in (("layer.0.ffn", "layer.0.ffn"), ("layer.0.attention", "layer.0.attention"), ("residual", "residual.0")):
        partner = inverse(planted[space])  # A's unit i is B's unit partner[i], up to sign
        anti = negated[space][partner]  # rows whose partner is negated (correlation ≈ −1)
        corr = stats.spaces[space].correlation().numpy()
        assert anti.sum() >= 2 and (corr[np.arange(len(partner)), partner][anti] < -0.9).all()
        np.testing.assert_array_equal(absolute.permutations[name], partner, err_msg=name)
        for m in (signed, again):
            perm = m.permutations[name]
            assert not np.any(perm[anti] == partner[anti]), f"{name}: signed matching paired anti-correlated units"
            np.testing.assert_array_equal(perm[~anti], partner[~anti], err_msg=name)  # the positive pairs still found
            assert corr[np.arange(len(perm)), perm].min() > -0.5, name


def test_matched_correlation_is_one_for_a_planted_pair_and_monotonic_reports_head_perm_choice():
    a = random_model("bert", "mlm", seed=13, layers=1, hidden=16, heads=4, ffn=32)
    fam, head = head_for(a)
    b = permuted_model(a, fam, head, 1, random_matching(a.config, "heads", "none", seed=14))
    stats = collect_statistics(a, b, fam, a.config, _batches(a.config.vocab_size))
    mono = compute_matching(stats, spaces_of(a), merge(attention="monotonic", residual="none"))
    full = compute_matching(stats, spaces_of(a), merge(attention="heads", residual="none"))
    assert list(mono.heads[0].assignment) == [0, 1, 2, 3]
    assert list(mono.heads[0].head_perm_assignment) == list(full.heads[0].assignment)
    corr = stats.spaces["layer.0.ffn"].correlation().numpy()
    np.testing.assert_allclose(corr[np.arange(32), full.permutations["layer.0.ffn"]], 1.0, atol=1e-6)


def test_lambda_endpoints_are_exact():
    a = random_model("bert", "mlm", seed=21)
    b = random_model("bert", "mlm", seed=22)
    interp = Interpolator(a, b)
    model = interp.set(1.0)
    for name, p in model.named_parameters():
        assert torch.equal(p, dict(a.named_parameters())[name]), name
    model = interp.set(0.0)
    for name, p in model.named_parameters():
        assert torch.equal(p, dict(b.named_parameters())[name]), name
    model = interp.set(0.25)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    for name, p in model.named_parameters():
        assert torch.allclose(p, 0.25 * pa[name] + 0.75 * pb[name]), name


def test_lambda_grid_and_barrier_arithmetic():
    assert lambda_grid(21)[0] == 0.0 and lambda_grid(21)[-1] == 1.0 and len(lambda_grid(21)) == 21
    assert lambda_grid(5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert barrier([1.0, 3.0, 2.0]) == pytest.approx(1.5)
    assert barrier([2.0, 1.0, 2.0]) == pytest.approx(0.0)  # a convex path: the max is an endpoint
    assert barrier([1.0, 1.5, 3.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        barrier([1.0])


def test_statistics_exclude_padding_and_match_a_direct_computation():
    a = random_model("bert", "mlm", seed=31, layers=1, hidden=8, heads=2, ffn=12)
    b = random_model("bert", "mlm", seed=32, layers=1, hidden=8, heads=2, ffn=12)
    fam, _ = head_for(a)
    batches = _batches(a.config.vocab_size, n=3)
    stats = collect_statistics(a, b, fam, a.config, batches)
    xa, xb = [], []
    with torch.no_grad():
        for ids, mask in batches:
            ha = a.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
            hb = b.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
            xa.append(ha[mask.bool()])
            xb.append(hb[mask.bool()])
    xa, xb = torch.cat(xa).double(), torch.cat(xb).double()
    direct = np.corrcoef(xa.T.numpy(), xb.T.numpy())[:8, 8:]
    np.testing.assert_allclose(stats.spaces["residual.2"].correlation().numpy(), direct, atol=1e-5)
    assert stats.spaces["residual.2"].n == batches.num_tokens


def test_dead_units_get_zero_correlation_not_nan():
    from permerge_core.statistics import SpaceStats

    s = SpaceStats.zeros(3)
    xa = torch.randn(50, 3)
    xa[:, 1] = 2.0  # a constant (dead) unit
    s.add(xa, torch.randn(50, 3))
    corr = s.correlation()
    assert torch.isfinite(corr).all()
    assert torch.all(corr[1] == 0)
