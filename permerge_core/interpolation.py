"""θ(λ) = λ·θ_A + (1−λ)·θ_B′, written in place into one preallocated model.

No reloading, no copies per λ: each point costs one fused multiply-add per parameter,
next to nothing beside the forward pass that follows. The formula is exact at the ends
(1·a + 0·b = a, 0·a + 1·b = b), so λ=1 is bitwise A and λ=0 bitwise B′; nothing is scaled.
"""

from __future__ import annotations

import copy

import torch


class Interpolator:
    """Holds the endpoints' parameters and one working model that takes any θ(λ)."""

    def __init__(self, model_a: torch.nn.Module, model_b: torch.nn.Module, work: torch.nn.Module | None = None):
        self.work = work if work is not None else copy.deepcopy(model_a)
        self.work.eval()
        self._targets = dict(self.work.named_parameters())
        self.set_endpoints(model_a, model_b)

    def set_endpoints(self, model_a: torch.nn.Module, model_b: torch.nn.Module) -> None:
        params_a = dict(model_a.named_parameters())
        params_b = dict(model_b.named_parameters())
        if params_a.keys() != self._targets.keys() or params_b.keys() != self._targets.keys():
            raise ValueError("the endpoints do not have the working model's parameters")
        self._pairs = [(self._targets[n], params_a[n].detach(), params_b[n].detach()) for n in self._targets]
        self.lam: float | None = None

    @torch.no_grad()
    def set(self, lam: float) -> torch.nn.Module:
        """Make the working model θ(lam) and return it."""
        lam = float(lam)
        for target, a, b in self._pairs:
            torch.mul(a, lam, out=target)
            target.add_(b, alpha=1.0 - lam)
        self.lam = lam
        return self.work


def lambda_grid(points: int) -> list[float]:
    """`points` evenly spaced λ in [0, 1], with exact 0.0 and 1.0 at the ends."""
    if points < 2:
        raise ValueError("a λ grid needs at least its two endpoints")
    return [k / (points - 1) for k in range(points)]
