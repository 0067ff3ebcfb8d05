"""θ(λ) = λ·θ_A + (1−λ)·θ_B′, written in place into one preallocated model.

No reloading, no copies per λ: each point costs one fused multiply-add per parameter,
next to nothing beside the forward pass that follows. The formula is exact at the ends
(1·a + 0·b = a, 0·a + 1·b = b), so λ=1 is bitwise A and λ=0 bitwise B′; nothing is scaled.

B′ is never held as a model of its own: given the permutation plan, each point gathers B's
tensors through the permutations straight into the working model (B′[..i..] = B[..perm[i]..]).
That is one model less in memory (438 MB for BERT-base) for a gather per point, which costs a
few percent of the forward pass that follows (docs/performance.md).
"""

from __future__ import annotations

import copy

import torch

from .parallel import one_thread
from .permuting import reindex, touches_by_tensor


class Interpolator:
    """Holds the endpoints' parameters and one working model that takes any θ(λ)."""

    def __init__(self, model_a: torch.nn.Module, model_b: torch.nn.Module, work: torch.nn.Module | None = None, plan=None):
        self.work = work if work is not None else copy.deepcopy(model_a)
        self.work.eval()
        self._targets = dict(self.work.named_parameters())
        self.set_endpoints(model_a, model_b, plan)

    def set_endpoints(self, model_a: torch.nn.Module, model_b: torch.nn.Module, plan=None) -> None:
        """A and B; `plan` (permuting's [(Touch, perm)]) makes the far end B′ = P(B), else B."""
        params_a = dict(model_a.named_parameters())
        params_b = dict(model_b.named_parameters())
        if params_a.keys() != self._targets.keys() or params_b.keys() != self._targets.keys():
            raise ValueError("the endpoints do not have the working model's parameters")
        gathers = _gathers(model_b, plan) if plan is not None else {}
        self._pairs = [(self._targets[n], params_a[n].detach(), params_b[n].detach(), gathers.get(n, ())) for n in self._targets]
        self.lam: float | None = None

    @torch.no_grad()
    def set(self, lam: float) -> torch.nn.Module:
        """Make the working model θ(lam) and return it."""
        lam = float(lam)
        with one_thread():  # the evaluation that follows runs its own threads (parallel.one_thread)
            for target, a, b, gather in self._pairs:
                if gather:
                    reindex(b, gather, out=target)
                    target.mul_(1.0 - lam)
                else:
                    torch.mul(b, 1.0 - lam, out=target)
                target.add_(a, alpha=lam)
        self.lam = lam
        return self.work


def _gathers(model: torch.nn.Module, plan) -> dict[str, list[tuple[int, torch.Tensor]]]:
    """Parameter name → [(axis, index)] from a permutation plan.

    Tied aliases (decoder ↔ word embeddings) are one parameter; where the plan permutes them
    differently (residual mode `sep`), the later name in state-dict order wins, exactly as
    when the permuted state dict is loaded (`permuting.permuted_model`).
    """
    canonical = {id(p): name for name, p in model.named_parameters()}
    state = model.state_dict(keep_vars=True)
    touches = touches_by_tensor(state, plan)
    out: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for name, tensor in state.items():
        if name in touches:
            if id(tensor) not in canonical:
                raise ValueError(f"{name} is a buffer, not a parameter: it cannot be interpolated")
            out[canonical[id(tensor)]] = touches[name]
    return out


def lambda_grid(points: int) -> list[float]:
    """`points` evenly spaced λ in [0, 1], with exact 0.0 and 1.0 at the ends."""
    if points < 2:
        raise ValueError("a λ grid needs at least its two endpoints")
    return [k / (points - 1) for k in range(points)]
