"""Streaming cross-correlation between the units of A and B (docs/method.md §3).

Both models read the same token batches. For every permutable space we keep running sums
Σx_A, Σx_B, Σx_A², Σx_B² in float64 and the cross product X_Aᵀ X_B as a float32 pair (see
`SpaceStats`); memory is fixed by the widths, not by the number of tokens. Only the A×B block
is computed: the full joint covariance would be 4× the arithmetic for nothing.

A's activations are held only until B produces the same space: B's hooks fold each pair
into the sums and release A's copy, so at most one model's activations are alive at once,
and batches are run in slices of rows small enough that those stay under HELD_BYTES
(BERT-base holds 255 kB per token: a whole 32×128 batch would be a gigabyte). Activations
are gathered into buffers reused from slice to slice and consumed in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection

import torch

from . import spaces as sp
from .families import family_for_model_type
from .families.schema import Family
from .data import TokenBatches

# At most about this much of A's activations is held while B runs. Small slices keep every
# transient tensor small enough that the allocator reuses its memory: with whole 32×128
# batches the default pair spent a quarter of the statistics time in page faults (measured).
# At 32 MiB the default pair's peak grew with the length of the pass (65,536 tokens peaked
# 30 to 130 MiB above 4,096; the C heap was measured to fragment as slice shapes change). At
# 16 MiB, 65,536 tokens peaked 20 MiB above 4,096 in isolated runs (up to 80 in some
# benchmark runs), at the same speed (docs/history.md).
HELD_BYTES = 16 * 2**20
# ...but a slice has at least this many tokens (of padded width): a d×d product over a
# 128-token row runs well below the matrix unit's speed for BERT-base's 3072-wide spaces.
MIN_SLICE_TOKENS = 512
# Products are summed in float32 over at most this many tokens (like one float32 matrix
# product with an inner dimension of FOLD_TOKENS), then folded into the running total.
FOLD_TOKENS = 4096
DEAD_UNIT_STD = 1e-6  # below this a unit is treated as constant: its correlation is 0, not NaN

ProgressFn = Callable[[str, float, str], None]


@dataclass
class SpaceStats:
    """Running sums for one space; `correlation()` turns them into the A×B matrix.

    The sums are of activations minus a fixed shift (the first batch's mean). Covariance is
    shift-invariant, and shifting keeps E[xy] − E[x]E[y] from cancelling catastrophically
    when a unit's mean is large next to its spread (LayerNorm outputs with a large β).

    The cross sum is the d×d part that costs: while accumulating it is held as two float32
    matrices, `cross` (the running total) and `cross_low` (its rounding error plus the
    products not yet folded in). Each slice's product is added into `cross_low` in place
    (one addmm, no temporary); every FOLD_TOKENS tokens Knuth's TwoSum moves it into `cross`
    without rounding error. That keeps about 48 significant bits, close to float64's 53, in
    float64's memory, and at the cost of the products alone: adding each slice's float32
    product into a float64 sum took longer than the product itself for 3072-wide spaces
    (measured). The finished sum is kept in float32 (`compact`).
    """

    n: int
    sum_a: torch.Tensor
    sum_b: torch.Tensor
    sumsq_a: torch.Tensor
    sumsq_b: torch.Tensor
    cross: torch.Tensor  # Σ (x_A − shift_A)(x_B − shift_B)ᵀ, [d_A, d_B]
    shift_a: torch.Tensor
    shift_b: torch.Tensor
    cross_low: torch.Tensor | None = None  # only while accumulating (see above)
    pending_tokens: int = 0  # tokens in cross_low not yet folded into cross

    PARTS = ("sum_a", "sum_b", "sumsq_a", "sumsq_b", "cross", "shift_a", "shift_b")

    @classmethod
    def zeros(cls, dim: int, device: str = "cpu") -> "SpaceStats":
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        cross = torch.zeros(dim, dim, dtype=torch.float32, device=device)
        return cls(0, z(dim), z(dim), z(dim), z(dim), cross, z(dim), z(dim))  # cross_low: made by the first add_

    @property
    def dim(self) -> int:
        return self.sum_a.numel()

    def add(self, xa: torch.Tensor, xb: torch.Tensor) -> None:
        """Fold in one batch of paired activations, [tokens, d] each; the inputs are left as they are."""
        self.add_(xa.clone(), xb.clone())

    def add_(self, xa: torch.Tensor, xb: torch.Tensor, scratch: dict | None = None) -> None:
        """`add` that uses xa and xb as scratch space: they hold garbage afterwards.

        The hot path: activations are gathered into reused buffers and consumed here in place,
        because allocating fresh multi-megabyte temporaries per space per batch cost as much
        as the cross product (page faults and heap growth, measured). `scratch` is a dict the
        caller keeps across calls, for the two d×d temporaries of each fold.
        """
        if xa.shape[0] == 0:
            return
        if xa.dtype != torch.float32:  # half precision is too coarse for batch sums; the pair is float32
            xa, xb = xa.float(), xb.float()
        if self.n == 0:  # any shift is exact (covariance is shift-invariant); near the mean is well conditioned
            self.shift_a = xa.mean(0).double()
            self.shift_b = xb.mean(0).double()
        xa.sub_(self.shift_a.to(xa.dtype))
        xb.sub_(self.shift_b.to(xb.dtype))
        self.n += xa.shape[0]
        # Each batch's sums and products run in float32 (fast; the shift keeps them well
        # conditioned); the sums across batches are float64 or the float32 pair. Upcasting
        # whole activation matrices instead cost as much as the cross product itself.
        self.sum_a += xa.sum(0)
        self.sum_b += xb.sum(0)
        if self.cross_low is None:  # the first add, or finished (compacted) sums growing again
            self.cross_low = torch.zeros_like(self.cross)
        self.cross_low.addmm_(xa.t(), xb)
        self.pending_tokens += xa.shape[0]
        if self.pending_tokens >= FOLD_TOKENS:
            self._fold(scratch if scratch is not None else {})
        self.sumsq_a += xa.mul_(xa).sum(0)
        self.sumsq_b += xb.mul_(xb).sum(0)

    def _fold(self, scratch: dict) -> None:
        """cross + cross_low → cross (rounded sum) + cross_low (its exact rounding error)."""
        high, low = self.cross, self.cross_low
        key = (tuple(high.shape), high.device)
        if key not in scratch:
            scratch[key] = (torch.empty_like(high), torch.empty_like(high))
        total, part = scratch[key]
        torch.add(high, low, out=total)
        torch.sub(total, high, out=part)  # the part of `low` that made it into `total`
        low.sub_(part)  # what of `low` did not
        part.neg_().add_(total)  # the part of `high` that made it into `total`
        high.sub_(part)  # what of `high` did not
        low.add_(high)
        high.copy_(total)
        self.pending_tokens = 0

    def compact(self) -> None:
        """Keep the finished cross sum as one float32 matrix: each entry keeps 7 significant
        digits, and since the sums are of shifted values the covariances derived from it do
        too, far finer than any correlation shown or matched."""
        if self.cross_low is not None:  # IEEE addition rounds hi + lo correctly: no float64 temporary needed
            self.cross.add_(self.cross_low)
        self.cross_low, self.pending_tokens = None, 0

    def snapshot(self) -> "SpaceStats":
        """A finished copy of the sums so far (as `compact` would leave them), while these keep
        accumulating: the statistics of a prefix of the pass, at the cost of one copy."""
        cross = self.cross.clone() if self.cross_low is None else self.cross + self.cross_low
        return SpaceStats(self.n, *(getattr(self, p).clone() for p in ("sum_a", "sum_b", "sumsq_a", "sumsq_b")), cross,
                          self.shift_a.clone(), self.shift_b.clone())

    def cross_sum(self) -> torch.Tensor:
        """Σ (x_A − shift_A)(x_B − shift_B)ᵀ as exactly as it is held (float64 while accumulating)."""
        return self.cross if self.cross_low is None else self.cross.double() + self.cross_low.double()

    def moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cross-covariance and the two variance vectors."""
        mean_a, mean_b = self.sum_a / self.n, self.sum_b / self.n
        cov = self.cross_sum() / self.n - torch.outer(mean_a, mean_b)
        var_a = (self.sumsq_a / self.n - mean_a.square()).clamp_min(0)
        var_b = (self.sumsq_b / self.n - mean_b.square()).clamp_min(0)
        return cov, var_a, var_b

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.shift_a + self.sum_a / self.n, self.shift_b + self.sum_b / self.n

    def _factors(self) -> tuple[torch.Tensor, ...]:
        """float32 vectors (r_A, r_B, p_A, p_B) with corr_ij = Σ_ij·r_A,i·r_B,j − p_A,i·p_B,j.

        corr_ij = (Σ_ij/n − m_i m_j) / (σ_i σ_j), with r = 1/(√n σ) and p = m/σ; dead units
        (σ ≈ 0) get r = p = 0, so correlation 0. The means are of shifted activations, so the
        difference does not cancel badly in float32, the precision the finished sum has.
        """
        mean_a, mean_b = self.sum_a / self.n, self.sum_b / self.n
        out = []
        for mean, sumsq in ((mean_a, self.sumsq_a), (mean_b, self.sumsq_b)):
            std = (sumsq / self.n - mean.square()).clamp_min(0).sqrt()
            inv = torch.where(std > DEAD_UNIT_STD, 1.0 / std.clamp_min(DEAD_UNIT_STD), 0.0)
            out.append((inv, mean * inv))
        (inv_a, p_a), (inv_b, p_b) = out
        root_n = float(self.n) ** 0.5
        return (inv_a / root_n).float(), (inv_b / root_n).float(), p_a.float(), p_b.float()

    def correlation(self) -> torch.Tensor:
        """The A×B correlation matrix, float32, formed in one d×d buffer (the float64 route
        through cov, outer products and a division spent 0.46 s per 3072-wide space on
        temporaries alone, measured)."""
        r_a, r_b, p_a, p_b = self._factors()
        corr = self.cross_sum().to(torch.float32, copy=True)
        corr.mul_(r_a.unsqueeze(1)).mul_(r_b)
        for a in range(0, corr.shape[0], 256):  # row blocks keep the outer product's temporary small
            corr[a : a + 256].sub_(torch.outer(p_a[a : a + 256], p_b))
        return corr.clamp_(-1.0, 1.0)

    def correlation_at(self, rows, cols) -> torch.Tensor:
        """correlation()[rows[k], cols[k]] for every k, with the same arithmetic, without
        forming the d×d matrix (summaries need only d entries of it)."""
        device = self.cross.device
        rows, cols = (torch.as_tensor(x, dtype=torch.long, device=device) for x in (rows, cols))
        r_a, r_b, p_a, p_b = self._factors()
        cross = self.cross[rows, cols] if self.cross_low is None else self.cross[rows, cols].double() + self.cross_low[rows, cols]
        corr = cross.float().mul_(r_a[rows]).mul_(r_b[cols])
        return corr.sub_(p_a[rows] * p_b[cols]).clamp_(-1.0, 1.0)

    def to(self, device: str) -> "SpaceStats":
        low = None if self.cross_low is None else self.cross_low.to(device)
        return SpaceStats(self.n, *(getattr(self, p).to(device) for p in self.PARTS), cross_low=low, pending_tokens=self.pending_tokens)


def correlation_from_moments(cov: torch.Tensor, var_a: torch.Tensor, var_b: torch.Tensor) -> torch.Tensor:
    """corr = cov / (σ_A σ_Bᵀ), with dead units (σ≈0) given correlation 0."""
    std_a, std_b = var_a.sqrt(), var_b.sqrt()
    alive_a, alive_b = std_a > DEAD_UNIT_STD, std_b > DEAD_UNIT_STD
    denom = torch.outer(torch.where(alive_a, std_a, 1.0), torch.where(alive_b, std_b, 1.0))
    corr = cov / denom
    corr[~alive_a, :] = 0.0
    corr[:, ~alive_b] = 0.0
    return corr.clamp_(-1.0, 1.0)


@dataclass
class Statistics:
    """Running sums for every space of a pair, keyed by space name."""

    spaces: dict[str, SpaceStats]
    num_layers: int
    num_tokens: int = 0
    notes: list[str] = field(default_factory=list)

    def residual_nodes(self) -> list[str]:
        """The residual nodes' space names, in depth order."""
        return sp.depth_order(name for name in self.spaces if sp.is_node(name))


def space_dims(config, family: Family | None = None) -> dict[str, int]:
    """Every space of a model with this config, with its width."""
    family = family or family_for_model_type(getattr(config, "model_type", ""))
    return {name: space.width for name, space in sp.of_model(family, config).items()}


def captures(family: Family, num_layers: int) -> list[tuple[str, str, str]]:
    """(space name, module name, 'input'|'output') for every space of the family (also the
    activation spreads along a path read them, `activations.py`)."""
    enc = family.encoder
    out = []
    for i in range(num_layers):
        out.append((sp.ffn(i), enc.capture_ffn.module.format(i=i), enc.capture_ffn.io))
        out.append((sp.attention(i), enc.capture_attention.module.format(i=i), enc.capture_attention.io))
    for rule, cap in enc.capture_residual:
        layers = range(num_layers) if family.residual_layout.in_every_layer(rule) else [None]
        for i in layers:
            node = family.residual_node(rule, i, num_layers)
            out.append((sp.node(node), cap.module if i is None else cap.module.format(i=i), cap.io))
    return out


def register_captures(encoder: torch.nn.Module, points, on_activation) -> list:
    """Hooks calling on_activation(space, tensor) at each of `points` (from `captures`);
    returns their handles, for the caller to remove."""
    modules = dict(encoder.named_modules())
    handles = []
    for space, module_name, io in points:
        module = modules[module_name]
        if io == "input":
            handles.append(module.register_forward_pre_hook(lambda m, args, s=space: on_activation(s, args[0])))
        else:
            handles.append(module.register_forward_hook(lambda m, args, output, s=space: on_activation(s, output)))
    return handles


@torch.no_grad()
def collect_statistics(
    model_a: torch.nn.Module,
    model_b: torch.nn.Module,
    family: Family,
    config,
    batches: TokenBatches,
    special_ids: list[int] | None = None,
    drop_special: bool = False,
    device: str = "cpu",
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    snapshot_after: Collection[int] = (),
    on_snapshot: Callable[[int, Statistics], None] | None = None,
) -> Statistics:
    """Run A and B over the same batches and accumulate the statistics of every space.

    After each batch index in `snapshot_after`, `on_snapshot(index, statistics so far)` gets a
    finished copy of the running sums: one pass yields the statistics of several prefixes of
    the batches (the data ablation's budgets, `ablation.py`)."""
    num_layers = family.shape(config).layers
    stats = {name: SpaceStats.zeros(dim, device) for name, dim in space_dims(config, family).items()}
    points = captures(family, num_layers)
    enc_a = getattr(model_a, "base_model", model_a)
    enc_b = getattr(model_b, "base_model", model_b)
    held_a: dict[str, torch.Tensor] = {}
    held_per_token = _held_per_token(config, family)
    rows: torch.Tensor | None = None  # flat indices of the kept tokens of the current slice
    # Gather targets, reused from slice to slice: one per space for A (held until B runs), one
    # per width for B (consumed at once). Fresh ones per slice cost as much as the arithmetic.
    # Sized once for the largest slice (batches grow in width: they are sorted by length).
    buffers: dict[object, torch.Tensor] = {}
    scratch: dict = {}  # the folds' temporaries, shared by every space of one width
    capacity = max((min(len(ids), _slice_rows(held_per_token, ids.shape[1])) * ids.shape[1] for ids, _ in batches), default=0)

    def kept(act, key):  # [batch, length, d] → [kept tokens, d], into buffer `key`
        flat = act.reshape(-1, act.shape[-1])
        n = rows.numel()
        buf = buffers.get(key)
        if buf is None or buf.shape[0] < n or buf.dtype != flat.dtype:
            buf = buffers[key] = torch.empty(max(n, capacity), flat.shape[1], dtype=flat.dtype, device=flat.device)
        return torch.index_select(flat, 0, rows, out=buf[:n])

    def on_a(space, act):
        held_a[space] = kept(act, space)

    def on_b(space, act):
        stats[space].add_(held_a.pop(space), kept(act, act.shape[-1]), scratch)

    handles = register_captures(enc_a, points, on_a) + register_captures(enc_b, points, on_b)
    model_a.eval()
    model_b.eval()
    total = len(batches)
    tokens = 0
    try:
        for step, (ids, mask) in enumerate(batches):
            if should_stop is not None and should_stop():
                raise InterruptedError("statistics collection stopped")
            for ids_part, mask_part, rows in _slices(ids, mask, held_per_token, special_ids if drop_special else None, device):
                enc_a(input_ids=ids_part, attention_mask=mask_part)
                enc_b(input_ids=ids_part, attention_mask=mask_part)
                held_a.clear()
                tokens += int(rows.numel())
            if on_snapshot is not None and step in snapshot_after:
                on_snapshot(step, Statistics({k: v.snapshot() for k, v in stats.items()}, num_layers, tokens, list(batches.notes)))
            if progress:
                progress("statistics", (step + 1) / total, f"{tokens:,} tokens")
    finally:
        for handle in handles:
            handle.remove()
    if tokens == 0:
        from .errors import DataError

        raise DataError("No tokens were left for statistics (all were padding or special tokens).", "Give more text, or keep special tokens.")
    for space in stats.values():
        space.compact()
    return Statistics(stats, num_layers, tokens, list(batches.notes))


def _slice_rows(held_per_token: int, width: int) -> int:
    return max(1, HELD_BYTES // (held_per_token * width), MIN_SLICE_TOKENS // width)


def _held_per_token(config, family: Family | None = None) -> int:
    """Bytes of A's float32 activations per token, over every space."""
    return 4 * sum(space_dims(config, family).values())


def _slices(ids, mask, held_per_token: int, drop_ids: list[int] | None, device: str = "cpu"):
    """(ids, mask, kept flat token indices) for each slice of rows of one batch.

    A's activations of every space wait for B's: the batch runs in slices of rows small
    enough that they stay under HELD_BYTES (the sums do not depend on it)."""
    ids, mask = ids.to(device), mask.to(device)
    keep = mask.bool()
    if drop_ids:
        keep &= ~torch.isin(ids, torch.tensor(drop_ids, device=device))
    step_rows = _slice_rows(held_per_token, ids.shape[1])
    for start in range(0, ids.shape[0], step_rows):
        part = slice(start, start + step_rows)
        yield ids[part], mask[part], keep[part].reshape(-1).nonzero().squeeze(1)


def slice_token_counts(config, batches: TokenBatches, special_ids: list[int] | None = None, drop_special: bool = False) -> list[int]:
    """How many tokens each slice of `collect_statistics` folds in, in its order: every space
    gets one d×d cross product per slice (the benchmark times those products alone)."""
    held = _held_per_token(config)
    drop = special_ids if drop_special else None
    return [int(rows.numel()) for ids, mask in batches for _, _, rows in _slices(ids, mask, held, drop)]
