"""REPAIR-style correction of the permuted path's FFN units (docs/method.md §11).

Jordan et al. (2022, REPAIR) found that averaging two aligned CNNs shrinks the spread of the
merged units' activations, and that rescaling each unit back to the interpolation of its
endpoints' statistics removes much of the barrier. Here the same correction is applied to the
FFN intermediate of θ(λ) = λ·A + (1−λ)·B′ (`activations.py` measures the collapse itself).

What is corrected: each FFN unit's *pre-activation*, the output of the Linear (GPT-2: Conv1D)
that produces it. That output is affine in the Linear's weights, so the correction is exact
and costs nothing at inference: with μ, σ the unit's mean and std under θ(λ) and
μ_t = λ·μ_A + (1−λ)·μ_B′, σ_t = λ·σ_A + (1−λ)·σ_B′ its targets,

    y′ = (y − μ)·σ_t/σ + μ_t   ⇔   W′ = diag(σ_t/σ)·W,   b′ = (b − μ)·σ_t/σ + μ_t.

Statistics come from the matching text only (never the evaluation text), over every real
token, and layers are corrected in order: layer l's statistics are measured on the model whose
layers < l are already corrected (its FFN input depends on them; nothing of layer l's FFN or
later does). A unit whose σ under θ(λ) is ~0 (`DEAD_UNIT_STD`) cannot be rescaled: it is only
shifted to its target mean.

Which tensors produce the FFN space is read from the family data (`families/`): the
FFN touches' one bias belongs to the producer, and its weight's touch gives the unit axis.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from .families.schema import Family
from .errors import SettingsError
from .evaluation import chunk_sizes, encoder_of, row_slices
from .parallel import map_chunks
from .statistics import DEAD_UNIT_STD

# The extra curve's name in curves, caches and reports, and how the app labels it.
REPAIRED = "permuted_repair"
LABEL = "permuted + REPAIR"
# The correction's statistics read at most this many tokens of the matching text (fewer when
# the matching budget is smaller): every λ needs about L/2 + 1 forward passes over them.
REPAIR_TOKENS = 16384
VERSION = 1  # part of the curve's cache key: bump when the correction's arithmetic changes


def budget(match_tokens: int) -> int:
    """Tokens of the matching text the correction reads."""
    return min(match_tokens, REPAIR_TOKENS)


@dataclass(frozen=True)
class Producer:
    """The module that writes a layer's FFN pre-activation (name template relative to the base
    model, `{i}` the layer) and the axis of its weight that indexes the units."""

    module: str
    axis: int


def ffn_producer(family: Family) -> Producer:
    """The FFN space's producer, from the family's touches: the one whose bias is touched."""
    touches = family.encoder.ffn
    biases = [t for t in touches if t.name.endswith(".bias") and t.part is None]
    module = biases[0].name.removesuffix(".bias") if len(biases) == 1 else None
    weight = next((t for t in touches if t.name == f"{module}.weight"), None)
    if weight is None:
        raise SettingsError(f"The REPAIR correction needs an FFN Linear with a bias; the {family.name} family data names none.",
                            "Turn the REPAIR correction off for these models.")
    return Producer(module, weight.axis)


@dataclass
class _Moments:
    """Per-unit count, mean and sum of squared deviations (float64), of one chunk of rows or of
    several merged in order (Chan et al.'s pairwise update): no Σx² − (Σx)²/n to cancel."""

    n: int
    mean: torch.Tensor
    m2: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor) -> "_Moments":
        """Of the rows of x, [tokens, d]; x is used as scratch space. Within a chunk (a few
        thousand rows) float32 keeps ~6 digits of the std, far below the 1e-4 the tests ask."""
        mean = x.mean(0)
        m2 = x.sub_(mean).square_().sum(0)
        return cls(x.shape[0], mean.double(), m2.double())

    def merge(self, other: "_Moments") -> "_Moments":
        n = self.n + other.n
        delta = other.mean - self.mean
        return _Moments(n, self.mean + delta * (other.n / n), self.m2 + other.m2 + delta.square() * (self.n * other.n / n))

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std), population std, on the CPU."""
        return self.mean.cpu(), (self.m2 / self.n).clamp_min(0).sqrt().cpu()


class _Stop(Exception):
    """Raised after the deepest layer asked for: the rest of the forward pass is not needed."""


# What the hooks write to, per thread: the chunks of a pass run side by side (`map_chunks`).
_chunk = threading.local()


@torch.no_grad()
def ffn_moments(model, family: Family, inputs, layers, device: str = "cpu") -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per-unit (mean, std), float64, of each of `layers`' FFN pre-activation over the real
    tokens of `inputs` (keyword dicts with input_ids and attention_mask).

    The batches run in row chunks side by side, one per core, each on one intra-op thread,
    as the evaluation does (`parallel.py`): on two cores shared with other work, whole batches
    on the OpenMP team took about three times as long as on one thread (measured). Each chunk's
    moments are merged in chunk order, so the result does not depend on which thread ran what."""
    layers = sorted(layers)
    producer = ffn_producer(family)
    encoder = encoder_of(model)
    modules = dict(encoder.named_modules())

    def on_output(layer):
        def hook(module, args, output):
            rows = output.reshape(-1, output.shape[-1]).index_select(0, _chunk.rows)
            _chunk.moments[layer] = _Moments.of(rows.float())
            if layer == layers[-1]:
                raise _Stop
        return hook

    ffn_width, budget = chunk_sizes(model, device)
    chunks = [(ids[rows, :width], mask[rows, :width]) for batch in inputs
              for ids, mask in [(batch["input_ids"], batch["attention_mask"])]
              for rows, width in row_slices(mask, ffn_width, budget)]

    @torch.no_grad()  # (grad mode is per thread)
    def run(chunk):
        ids, mask = (x.to(device) for x in chunk)
        _chunk.rows = mask.reshape(-1).bool().nonzero().squeeze(1)
        _chunk.moments = {}
        try:
            encoder(input_ids=ids, attention_mask=mask)
        except _Stop:
            pass
        return _chunk.moments

    # Hooks are added before and removed after the chunks run, never while threads use the model.
    handles = [modules[producer.module.format(i=layer)].register_forward_hook(on_output(layer)) for layer in layers]
    model.eval()
    try:
        parts = [p for p in map_chunks(run, chunks, device, cost=lambda c: c[0].numel()) if p]
    finally:
        for handle in handles:
            handle.remove()
    if not parts:
        raise ValueError("no token reached the FFN")
    out = {}
    for layer in layers:
        total = parts[0][layer]
        for part in parts[1:]:
            total = total.merge(part[layer])
        out[layer] = total.result()
    return out


def targets(ends: dict, lam: float) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the interpolated (mean, std): λ·A's + (1−λ)·B′'s. `ends` is
    {"a": ffn_moments(A), "far": ffn_moments(B′)}."""
    return {layer: (lam * ma + (1.0 - lam) * mf, lam * sa + (1.0 - lam) * sf)
            for layer, ((ma, sa), (mf, sf)) in ((k, (ends["a"][k], ends["far"][k])) for k in ends["a"])}


@torch.no_grad()
def repair(model, family: Family, num_layers: int, inputs, lam: float, ends: dict, device: str = "cpu") -> dict:
    """Correct θ(λ) (`model`, changed in place) so that every FFN unit's pre-activation has its
    target mean and std on `inputs` (see the module doc). Returns how many units were only
    shifted because their spread under θ(λ) was ~0."""
    producer = ffn_producer(family)
    modules = dict(encoder_of(model).named_modules())
    goals = targets(ends, lam)
    shifted_only = 0
    for layer in range(num_layers):  # in order: each layer's statistics see the earlier corrections
        mean, std = ffn_moments(model, family, inputs, [layer], device)[layer]
        mean_t, std_t = goals[layer]
        alive = std > DEAD_UNIT_STD
        shifted_only += int((~alive).sum())
        scale = torch.where(alive, std_t / std.clamp_min(DEAD_UNIT_STD), torch.ones_like(std))
        module = modules[producer.module.format(i=layer)]
        shape = [1] * module.weight.dim()
        shape[producer.axis] = -1
        device_of = module.weight.device
        module.weight.copy_(module.weight.double() * scale.to(device_of).view(shape))
        module.bias.copy_((module.bias.double() - mean.to(device_of)) * scale.to(device_of) + mean_t.to(device_of))
    return {"shifted_only": shifted_only}
