"""What interpolation does to activations: each unit's spread along a path (docs/method.md §11).

Averaging two networks' weights can shrink their activations' spread: Jordan et al. (2022,
REPAIR) measured this "variance collapse" in CNNs, where the midpoint's units vary far less
than either endpoint's. Transformers renormalise their residual stream with LayerNorm, so
whether (and where) it happens here is a question to measure, not to assume.

For θ(λ) on the evaluation text, every unit of each FFN intermediate (the input of the
FFN's second Linear) and each residual node (the LayerNorm outputs the statistics read) gets
its standard deviation σ_i(λ) over the real tokens. The ratio

    r_i(λ) = σ_i(λ) / (λ·σ_i(A) + (1 − λ)·σ_i(B or B′))

is 1 where θ(λ) spreads as much as the interpolation of its endpoints, below 1 where the
spread collapses. Each space is summarised by the mean and median of r_i over its units
(units whose interpolated endpoint spread is ~0 are left out).
"""

from __future__ import annotations

import torch

from . import spaces as sp
from .families.schema import Family
from .evaluation import encoder_of
from .statistics import DEAD_UNIT_STD, captures, register_captures


def spread_spaces(family: Family, num_layers: int) -> list[tuple[str, str, str]]:
    """The capture points measured: every FFN intermediate and every residual node."""
    return [c for c in captures(family, num_layers) if sp.parse(c[0]).kind in (sp.FFN, sp.RESIDUAL)]


@torch.no_grad()
def unit_spreads(model: torch.nn.Module, family: Family, num_layers: int, inputs, device: str = "cpu") -> dict[str, torch.Tensor]:
    """σ_i of every unit of every measured space over the real tokens of `inputs`, an
    iterable of keyword dicts for the encoder (input_ids, attention_mask, …), float64."""
    encoder = encoder_of(model)
    points = spread_spaces(family, num_layers)
    sums: dict[str, list] = {}
    keep: dict[str, torch.Tensor] = {}

    def on_activation(space, act):
        x = act.reshape(-1, act.shape[-1])[keep["rows"]].double()
        if space not in sums:
            # Sums of values minus a fixed shift (the first batch's mean): the variance is
            # shift-invariant, and the shift keeps Σx² − (Σx)²/n from cancelling.
            sums[space] = [x.mean(0), 0, torch.zeros_like(x[0]), torch.zeros_like(x[0])]
        shift, n, s1, s2 = sums[space]
        x = x - shift
        sums[space] = [shift, n + x.shape[0], s1 + x.sum(0), s2 + x.square().sum(0)]

    handles = register_captures(encoder, points, on_activation)
    model.eval()
    try:
        for batch in inputs:
            batch = {k: v.to(device) for k, v in batch.items()}
            keep["rows"] = batch["attention_mask"].reshape(-1).bool().nonzero().squeeze(1)
            encoder(**batch)
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for space, (_, n, s1, s2) in sums.items():
        mean = s1 / n
        out[space] = (s2 / n - mean.square()).clamp_min(0).sqrt().cpu()
    return out


def spread_ratios(spreads: list[dict[str, torch.Tensor]], lambdas: list[float]) -> dict:
    """Per space and λ, the mean and median of r_i(λ) over the units (see the module doc).

    `spreads[k]` are θ(lambdas[k])'s unit spreads; the grid must start at λ = 0 (B or B′) and
    end at λ = 1 (A), whose spreads are the endpoints'."""
    if lambdas[0] != 0.0 or lambdas[-1] != 1.0:
        raise ValueError("the λ grid must run from 0 to 1")
    far, near = spreads[0], spreads[-1]
    spaces = sp.depth_order(far)  # FFNs, then residual nodes, in depth order
    out = {"lambdas": list(lambdas), "spaces": spaces, "mean": {}, "median": {}, "units": {}}
    for space in spaces:
        means, medians = [], []
        for lam, spread in zip(lambdas, spreads):
            expected = lam * near[space] + (1.0 - lam) * far[space]
            alive = expected > DEAD_UNIT_STD
            ratio = spread[space][alive] / expected[alive]
            means.append(float(ratio.mean()) if ratio.numel() else float("nan"))
            medians.append(float(ratio.median()) if ratio.numel() else float("nan"))
        out["mean"][space], out["median"][space] = means, medians
        out["units"][space] = int(far[space].numel())
    return out
