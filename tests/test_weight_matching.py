"""Weight matching (docs/method.md §9) and the comparison of the two matchers, on tiny random
models: planted shuffles come back exactly without any data, B′ computes B in every
function-preserving mode, and agreement is counted in the report's convention."""

import json

import numpy as np
import pytest
import torch

from permerge_core import AlignSettings, Pipeline
from permerge_core.comparison import head_agreement, space_agreement, unit_agreement
from permerge_core.evaluation import max_abs_logit_diff
from permerge_core.modes import ATTENTION, RESIDUAL
from permerge_core.permuting import inverse, permuted_model
from permerge_core.weight_matching import match_weights

from fixtures import merge, random_ids, random_model, random_text, save_model, spaces_of
from test_invariants import LM, SHAPES, head_for, random_matching

PRESERVING = [(att, res) for att, a in ATTENTION.items() if a.preserves_function for res, r in RESIDUAL.items() if r.preserves_function]


@pytest.mark.parametrize("shape", SHAPES, ids=["2x16h4", "1x8h1", "2x6h6", "2x9h3"])
@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2"])
def test_a_planted_shuffle_is_recovered_exactly_from_the_weights_alone(family, shape):
    a = random_model(family, LM[family], seed=41, **shape)
    fam, head = head_for(a)
    layers, heads = shape["layers"], shape["heads"]
    # Residual stream, every FFN, every layer's heads and the features within each head.
    planted = random_matching(a.config, "heads", "first", seed=42)
    b = permuted_model(a, fam, head, layers, planted)  # B[i] = A[q[i]]
    found = match_weights(a, b, fam, head, spaces_of(a), merge(ffn=True, attention="heads", residual="first"))
    for name, q in planted.permutations.items():
        np.testing.assert_array_equal(found.permutations[name], inverse(q), err_msg=name)
    dk = shape["hidden"] // heads
    for i in range(layers):
        q = planted.permutations[f"layer.{i}.attention"]
        # A's head j sits where the shuffle moved it: B head q⁻¹(j·dk) // dk.
        assert [int(x) for x in found.heads[i].assignment] == [int(inverse(q)[j * dk] // dk) for j in range(heads)]
    b_prime = permuted_model(b, fam, head, layers, found)
    for k, v in a.state_dict().items():
        assert torch.equal(b_prime.state_dict()[k], v), k
    info = found.info
    assert info["matcher"] == "weights" and info["converged"] and len(info["objective"]) == info["sweeps"] + 1
    # At the optimum B′ = A, so J = Σ‖W_A‖² over the touched tensors; it started lower.
    assert info["objective"][-1] == pytest.approx(info["objective"][-2]) and info["objective"][0] < info["objective"][-1]


@pytest.mark.parametrize("ffn", [True, False], ids=["ffn", "no-ffn"])
@pytest.mark.parametrize("attention,residual", PRESERVING)
@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2"])
def test_b_prime_computes_b_under_the_weights_matcher(family, attention, residual, ffn):
    a = random_model(family, LM[family], seed=51, layers=2, hidden=16, heads=4, ffn=32)
    b = random_model(family, LM[family], seed=52, layers=2, hidden=16, heads=4, ffn=32)
    fam, head = head_for(b)
    found = match_weights(a, b, fam, head, spaces_of(a), merge(ffn=ffn, attention=attention, residual=residual))
    assert found.function_preserving
    b_prime = permuted_model(b, fam, head, 2, found)
    ids, mask = random_ids(vocab=b.config.vocab_size)
    assert max_abs_logit_diff(b_prime, b, ids, mask) < 1e-4
    # The modes decide what moves: switched-off spaces stay in place, the others were solved.
    moved = {k for k, v in found.permutations.items() if not np.array_equal(v, np.arange(len(v)))}
    assert any(k.endswith(".ffn") for k in moved) == ffn
    assert any(k.endswith(".attention") for k in moved) == (attention != "none")
    assert ("residual" in moved) == (residual != "none")


def test_b_prime_computes_b_for_a_classifier_under_the_weights_matcher():
    a = random_model("bert", "classification", seed=53, layers=2, hidden=16, heads=4, ffn=32)
    b = random_model("bert", "classification", seed=54, layers=2, hidden=16, heads=4, ffn=32)
    fam, head = head_for(b)
    b_prime = permuted_model(b, fam, head, 2, match_weights(a, b, fam, head, spaces_of(a), merge()))
    ids, mask = random_ids(vocab=b.config.vocab_size)
    assert max_abs_logit_diff(b_prime, b, ids, mask) < 1e-4


def test_sep_gives_every_residual_node_its_own_permutation():
    a = random_model("bert", "mlm", seed=55, layers=2, hidden=16, heads=4, ffn=32)
    fam, head = head_for(a)
    planted = random_matching(a.config, "heads", "sep", seed=56)
    b = permuted_model(a, fam, head, 2, planted)
    found = match_weights(a, b, fam, head, spaces_of(a), merge(attention="heads", residual="sep"))
    assert sorted(k for k in found.permutations if k.startswith("residual")) == [f"residual.{n}" for n in range(5)]
    assert not found.function_preserving


@pytest.fixture
def planted_pair(tmp_path) -> dict:
    """A tiny model, a copy of it with everything shuffled, text, and the shuffle."""
    a = random_model("bert", "mlm", seed=61, layers=2, hidden=16, heads=4, ffn=32)
    fam, head = head_for(a)
    planted = random_matching(a.config, "heads", "first", seed=62)
    b = permuted_model(a, fam, head, 2, planted)
    text = tmp_path / "text.txt"
    text.write_text(random_text(200, seed=3))
    return {"a": save_model(a, tmp_path / "a"), "b": save_model(b, tmp_path / "b"), "text": text, "planted": planted.permutations}


def test_the_weights_matcher_reads_no_text_and_reports_its_sweeps(planted_pair, tmp_path, monkeypatch):
    p = Pipeline(planted_pair["a"], planted_pair["b"], match_data=planted_pair["text"], eval_data=planted_pair["text"], cache_dir=tmp_path / "c")

    def no_statistics(*args, **kwargs):
        raise AssertionError("weight matching must not collect activation statistics")

    monkeypatch.setattr(Pipeline, "statistics", no_statistics)
    report = p.run(AlignSettings(matcher="weights", eval_tokens=800, lambdas=3))
    assert report["matching"]["matcher"] == "weights" and report["settings"]["matcher"] == "weights"
    assert len(report["matching"]["objective"]) == report["matching"]["sweeps"] + 1 and report["matching"]["seconds"] >= 0
    assert report["data"]["match"]["tokens"] == 0 and report["matched_correlation"] is None
    assert report["max_abs_logit_diff"] < 1e-4
    assert "statistics" not in p.stage_status(AlignSettings(matcher="weights"))
    # Its cache key holds no text setting; `both` applies, and so shares, the activation matching.
    weights = lambda **k: p.matching_fields(AlignSettings(matcher="weights", **k))  # noqa: E731
    assert weights(match_tokens=1000) == weights(match_tokens=2000) != weights(attention="monotonic")
    assert p.matching_fields(AlignSettings(matcher="both")) == p.matching_fields(AlignSettings()) != weights()
    json.dumps(report)  # the report stays plain JSON


def test_both_matchers_agree_on_a_planted_pair_in_the_reports_convention(planted_pair, tmp_path):
    p = Pipeline(planted_pair["a"], planted_pair["b"], match_data=planted_pair["text"], eval_data=planted_pair["text"], cache_dir=tmp_path / "c")
    report = p.run(AlignSettings(matcher="both", match_tokens=3000, eval_tokens=800, lambdas=3))
    comparison = report["comparison"]
    truth = {space: inverse(q) for space, q in planted_pair["planted"].items()}  # A's unit i ↔ B's unit truth[i]
    for space, q in planted_pair["planted"].items():
        assert np.array_equal(report["permutations"][space], truth[space]), space  # activations, as reported
        assert np.array_equal(comparison["weights"]["permutations"][space], truth[space]), space
        # The inverse convention would not count as agreement: q itself is far from its inverse.
        assert unit_agreement(report["permutations"][space], q) < 0.5, space
    assert comparison["agreement"] == {space: 1.0 for space in report["permutations"]}
    assert comparison["agreement_by_kind"] == {"ffn": 1.0, "attention": 1.0, "residual": 1.0}
    for layer, heads in comparison["head_assignment"].items():
        assert heads["activations"] == heads["weights"] == report["head_assignment"][layer] and heads["agreement"] == 1.0
    # B′ = A for both, so both permuted paths are flat: no barrier.
    assert comparison["barrier"]["activations"] == pytest.approx(0.0, abs=1e-4)
    assert comparison["barrier"]["weights"] == pytest.approx(0.0, abs=1e-4)
    assert comparison["barrier"]["vanilla"] > 0.1


def test_space_and_head_agreement_count_units_paired_alike_in_one_convention():
    """3-cycles, not swaps: a swap is its own inverse, so comparing p with q's inverse (a mixed
    convention) would give the same numbers; a 3-cycle's inverse is another permutation."""
    cycle, back = np.array([1, 2, 0, 3]), np.array([2, 0, 1, 3])  # back = inverse(cycle) ≠ cycle
    assert np.array_equal(inverse(cycle), back) and not np.array_equal(cycle, back)
    p = {"layer.0.ffn": cycle, "residual": back, "layer.0.attention": np.array([0, 1, 2, 3])}
    q = {"layer.0.ffn": cycle, "residual": cycle, "layer.1.ffn": cycle}
    # Same pairs: 1; back vs cycle: only unit 3 paired alike (against its inverse it would be 1).
    assert space_agreement(p, q) == {"layer.0.ffn": 1.0, "residual": 0.25}
    assert head_agreement({0: [1, 2, 0], 1: [2, 0, 1]}, {0: [1, 2, 0], 1: [1, 2, 0], 2: [0, 1, 2]}) == {0: 1.0, 1: 0.0}
