"""The ends of the loss paths are evaluated models, each checked against an independent one.

θ(1) is bitwise A and θ(0) bitwise B′ (interpolation.py). The pipeline evaluates both ends like
any other λ, and the report's L(A) comes from A's own model, so that "λ=1 is exactly A" in the
CLI, task and app tests compares two computations, not one stored number with itself.
"""

import pytest
import torch

from permerge_core import AlignSettings, Pipeline
from permerge_core.evaluation import mlm_loss
from permerge_core.interpolation import Interpolator
from permerge_core.permuting import permuted_model

SMALL = AlignSettings(match_tokens=1200, eval_tokens=1200, lambdas=3, batch_size=8)


def _pipeline(pair):
    return Pipeline(pair["a"], pair["b"], match_data=pair["text"], eval_data=pair["text"], cache_dir=None)


def _loss(p, model) -> float:
    _, masked = p.eval_set(SMALL)
    return mlm_loss(model, p.a.head.mlm_module, masked).loss


def _assert_same_tensors(model, reference, what):
    state, expected = model.state_dict(), reference.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), f"{what}: {name} differs"


def test_fresh_models_at_lambda_one_and_zero_are_a_and_b_prime_with_the_curves_end_losses(tiny_pair):
    p = _pipeline(tiny_pair)
    report = p.run(SMALL)
    b_prime = permuted_model(p.b.model, p.b.family, p.b.head, p.b.num_layers, p.matching(SMALL))
    assert any(not torch.equal(v, p.b.model.state_dict()[k]) for k, v in b_prime.state_dict().items())  # B′ is not B
    ends = {"vanilla": (p.b.model, "B"), "permuted": (b_prime, "B′")}
    for which, (far_end, name) in ends.items():
        curve = report["curves"][which]
        plan = p.permutation_plan(SMALL) if which == "permuted" else None
        # a new working model for each λ: nothing carried over from the pipeline's own
        at_one = Interpolator(p.a.model, p.b.model, plan=plan).set(1.0)
        _assert_same_tensors(at_one, p.a.model, f"{which} θ(1) vs A")
        assert curve[-1] == [1.0, _loss(p, at_one)], which
        at_zero = Interpolator(p.a.model, p.b.model, plan=plan).set(0.0)
        _assert_same_tensors(at_zero, far_end, f"{which} θ(0) vs {name}")
        assert curve[0] == [0.0, _loss(p, at_zero)], which
    assert report["endpoint_loss"]["a"] == _loss(p, p.a.model)
    assert report["endpoint_loss"]["b"] == _loss(p, p.b.model) and report["endpoint_loss"]["b_prime"] == _loss(p, b_prime)


def test_a_wrong_theta_one_shows_in_both_curves_and_not_in_the_report_of_a(tiny_pair, monkeypatch):
    """If the working model at λ=1 were not A, the curves' last points must say so: they are
    evaluations of θ(1), and the report's L(A) is A's own, so the two then disagree."""
    honest = _pipeline(tiny_pair)
    loss_a = _loss(honest, honest.a.model)
    set_lambda = Interpolator.set

    def wrong_at_one(self, lam):
        model = set_lambda(self, lam)
        if lam == 1.0:
            with torch.no_grad():
                model.get_input_embeddings().weight.mul_(2.0)  # θ(1) ≠ A
        return model

    monkeypatch.setattr(Interpolator, "set", wrong_at_one)
    p = _pipeline(tiny_pair)
    report = p.run(SMALL)
    assert report["endpoint_loss"]["a"] == loss_a
    for which in ("vanilla", "permuted"):
        lam, loss = report["curves"][which][-1]
        assert lam == 1.0 and loss != pytest.approx(loss_a, abs=1e-3), which
