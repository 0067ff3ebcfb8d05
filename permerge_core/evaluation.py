"""Masked-LM loss and accuracy, computing vocabulary logits only where they are needed.

For a small model the vocabulary projection is most of a forward pass; only the ~15% masked
positions need it, so the encoder output is gathered at those positions first. The same
holds one step earlier: after the last layer's attention, every module acts on each position
alone, so that tail (attention output, FFN, LayerNorms) also runs at the masked positions
only, and in that layer's attention only the masked positions ask queries (the keys and
values still come from every position). On the 3-layer default pair that is about a fifth
of the encoder's arithmetic.

On a CPU, the chunks of an evaluation run side by side, one per core (`parallel.map_chunks`).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import MaskedBatch
from .parallel import map_chunks, worker_count


def encoder_of(model):
    """The bare encoder inside a head model (or the model itself if it is bare)."""
    return getattr(model, "base_model", model)


def mlm_logits_at(model, mlm_module: str, input_ids, attention_mask, positions, tail_at_positions: bool = True) -> torch.Tensor:
    """Vocabulary logits at the selected positions only, shape [n_selected, vocab].

    `tail_at_positions=False` runs the whole last layer everywhere: the same function, with
    other rounding (training uses it, so that the bundled models stay reproducible bit for bit).
    """
    tail = _position_wise_tail(model) if tail_at_positions else None
    with tail_stop(tail):
        return _logits_at(model, mlm_module, input_ids, attention_mask, positions, tail)


def _logits_at(model, mlm_module: str, input_ids, attention_mask, positions, tail) -> torch.Tensor:
    """As `mlm_logits_at`; with a tail, only inside `tail_stop(tail)`."""
    if tail is None:
        hidden = encoder_of(model)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[positions]
    else:
        hidden = _last_layer_at(encoder_of(model), tail, input_ids, attention_mask, positions)
    return getattr(model, mlm_module)(hidden)


class _TailReached(Exception):
    """Raised by the hook to stop the encoder where the last layer's masked-only part begins."""


# Which module the current thread wants to stop at, and what the hook caught there. Per
# thread: evaluation chunks run in parallel on one model, and a thread that did not ask
# (another computation on the same model) must run the encoder whole.
_tail_request = threading.local()


def _stop_at_tail(module, args, kwargs):
    if getattr(_tail_request, "module", None) is not module:
        return None
    _tail_request.caught = list(args) + [kwargs[k] for k in ("hidden_states", "input_tensor") if k in kwargs]
    raise _TailReached


@dataclass(frozen=True)
class _Tail:
    """The last layer's modules from where only the masked positions are needed."""

    self_attention: torch.nn.Module | None  # None: stop after the attention instead
    attention_output: torch.nn.Module
    intermediate: torch.nn.Module
    output: torch.nn.Module

    @property
    def stop(self) -> torch.nn.Module:
        return self.self_attention if self.self_attention is not None else self.attention_output


@contextmanager
def tail_stop(tail: _Tail | None):
    """The stopping hook on the tail's first module, for the whole block (not per chunk: hooks
    must not be added or removed while other threads run the model and iterate over them)."""
    if tail is None:
        yield
        return
    handle = tail.stop.register_forward_pre_hook(_stop_at_tail, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _position_wise_tail(model) -> _Tail | None:
    """The last layer's modules for the fast path its family declares (`FastPath`), None where
    the family declares none or this config rules it out."""
    from .families import family_for_model_type

    config = getattr(model, "config", None)
    family = family_for_model_type(getattr(config, "model_type", ""))
    fast = family.fast_path if family is not None else None
    if fast is None or getattr(config, "add_cross_attention", False):
        return None  # (cross-attention would sit between the self-attention and the tail)
    modules = dict(encoder_of(model).named_modules())
    last = family.shape(config).layers - 1

    def module(template: str) -> torch.nn.Module:  # a missing one is wrong family data: the KeyError names it
        return modules[template.format(i=last)]

    self_attention = module(fast.self_attention) if fast.self_attention is not None else None
    if self_attention is not None and not _queries_at_positions_supported(self_attention, config):
        self_attention = None
    return _Tail(self_attention, *(module(name) for name in fast.tail))


def _queries_at_positions_supported(module, config) -> bool:
    """Whether `_attention_at` computes exactly what this self-attention module computes: the
    family declares a BERT-style module; this config must make it bidirectional, with
    absolute positions only."""
    return (
        not getattr(module, "is_causal", False)
        and not getattr(config, "is_decoder", False)
        and getattr(config, "position_embedding_type", "absolute") in (None, "absolute")
    )


def _last_layer_at(encoder, tail: _Tail, input_ids, attention_mask, positions) -> torch.Tensor:
    """The encoder's output at `positions`: the full encoder up to the last layer, whose
    attention then answers the selected positions' queries only (or, where the family does
    not allow that, up to that layer's attention output), and whose position-wise tail runs
    on the selected rows only."""
    _tail_request.module, _tail_request.caught = tail.stop, None
    try:
        encoder(input_ids=input_ids, attention_mask=attention_mask)
    except _TailReached:
        pass
    finally:
        _tail_request.module = None
    if _tail_request.caught is None:
        raise RuntimeError("the encoder never reached its last layer")
    caught, _tail_request.caught = _tail_request.caught, None
    if tail.self_attention is not None:
        hidden = caught[0]
        context, residual = _attention_at(tail.self_attention, hidden, attention_mask, positions), hidden[positions]
    else:
        context, residual = caught[0][positions], caught[1][positions]
    after_attention = tail.attention_output(context, residual)
    return tail.output(tail.intermediate(after_attention), after_attention)


def _attention_at(module, hidden: torch.Tensor, attention_mask, positions) -> torch.Tensor:
    """The self-attention's context vectors at `positions` ([n_selected, d], row-major order
    like `hidden[positions]`): queries from the selected positions, keys and values from every
    real token. Each row's selected positions are packed to the front of a [batch, most
    selected in a row] query block; the empty slots are computed and dropped."""
    batch, length, _ = hidden.shape
    counts = positions.sum(1)
    width = max(int(counts.max()), 1)
    # A stable descending sort of the 0/1 mask lists each row's selected positions first, in order.
    order = positions.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :width]
    asked = hidden[torch.arange(batch, device=hidden.device).unsqueeze(1), order]
    heads, size = module.num_attention_heads, module.attention_head_size
    query = module.query(asked).view(batch, width, heads, size).transpose(1, 2)
    key = module.key(hidden).view(batch, length, heads, size).transpose(1, 2)
    value = module.value(hidden).view(batch, length, heads, size).transpose(1, 2)
    keys = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
    context = F.scaled_dot_product_attention(query, key, value, attn_mask=keys, scale=module.scaling)
    filled = torch.arange(width, device=hidden.device).unsqueeze(0) < counts.unsqueeze(1)
    return context.transpose(1, 2).reshape(batch, width, heads * size)[filled]


@dataclass(frozen=True)
class MlmResult:
    loss: float  # mean cross-entropy over the predicted (masked, or next-token) positions, nats
    accuracy: float  # fraction of those positions predicted exactly
    num_predictions: int


# Rows of a batch go through the model in chunks whose widest activations (the FFN's) stay
# under this, all chunks running at once together: BERT-base's transients for a whole 32×128
# batch are ~0.5 GB, while a small model's chunks are half batches (smaller ones would only
# make its matrix products less efficient).
EVAL_CHUNK_BYTES = 16 * 2**20


def chunk_sizes(model, device: str = "cpu") -> tuple[int, int]:
    """(FFN width, memory budget per chunk) for `row_slices`: the budget is shared by the
    chunks that run side by side."""
    ffn_width = getattr(getattr(model, "config", None), "intermediate_size", 0) or 4096
    return ffn_width, EVAL_CHUNK_BYTES // worker_count(device)


def row_slices(attention_mask: torch.Tensor, ffn_width: int, budget: int | None = None):
    """(rows, width) for consecutive row chunks of a padded batch: as many rows as keep the
    chunk's FFN activations under `budget`, and the columns up to the chunk's longest row
    (rows are sorted by length, so an early chunk of a batch is narrower than the batch:
    padding columns that no row of it needs are dropped; that computes the same function)."""
    batch, length = attention_mask.shape
    step = max(1, (budget or EVAL_CHUNK_BYTES) // (length * ffn_width * 4))
    used = attention_mask.bool()
    for start in range(0, batch, step):
        rows = slice(start, start + step)
        columns = used[rows].any(0).nonzero()  # the columns some row of the chunk uses
        yield rows, (int(columns.max()) + 1 if len(columns) else 1)


def row_chunks(batch: MaskedBatch, ffn_width: int, budget: int | None = None):
    """The batch as `row_slices` chunks, each with its own slice of the row-major targets."""
    per_row = batch.positions.sum(1).tolist()
    first_target = 0
    for rows, width in row_slices(batch.attention_mask, ffn_width, budget):
        count = sum(per_row[rows])
        yield MaskedBatch(
            batch.input_ids[rows, :width], batch.attention_mask[rows, :width], batch.positions[rows, :width],
            batch.targets[first_target : first_target + count],
        )
        first_target += count


@torch.no_grad()
def mlm_loss(model, mlm_module: str, batches: list[MaskedBatch], device: str = "cpu") -> MlmResult:
    """Mean cross-entropy and accuracy at fixed positions: masked-LM masks drawn once, or for
    a causal LM every token that predicts its successor (`data.prediction_batches`)."""
    model.eval()
    ffn_width, budget = chunk_sizes(model, device)
    chunks = [chunk for whole in batches for chunk in row_chunks(whole, ffn_width, budget) if chunk.positions.any()]
    tail = _position_wise_tail(model)  # looked up once, not per batch

    @torch.no_grad()  # (grad mode is per thread)
    def chunk_result(batch: MaskedBatch) -> tuple[torch.Tensor, int, int]:
        logits = _logits_at(
            model,
            mlm_module,
            batch.input_ids.to(device),
            batch.attention_mask.to(device),
            batch.positions.to(device),
            tail,
        ).float()
        targets = batch.targets.to(device)
        loss = F.cross_entropy(logits, targets, reduction="sum").double().cpu()
        return loss, argmax_hits(logits, targets), int(targets.numel())

    with tail_stop(tail):
        results = map_chunks(chunk_result, chunks, device, cost=lambda c: c.input_ids.numel())
    total_loss = torch.zeros((), dtype=torch.float64)
    correct = count = 0
    for loss, hits, n in results:  # in chunk order: the float64 sum does not depend on timing
        total_loss += loss
        correct += hits
        count += n
    return MlmResult(float(total_loss / count), correct / count, count)


def argmax_hits(logits: torch.Tensor, targets: torch.Tensor) -> int:
    """How many rows have argmax == target, argmax's tie rule (first maximal index) included.

    A row can only be a hit where its target's logit is the row's maximum, so the max comes
    first (a vectorised amax, ~10× faster than argmax over a 4096-word vocabulary, measured)
    and argmax runs on those rows only; rows with a NaN go to argmax too, as it ranks NaN highest.
    """
    best = logits.amax(-1)
    candidates = ((logits.gather(1, targets.unsqueeze(1)).squeeze(1) == best) | best.isnan()).nonzero().squeeze(1)
    if candidates.numel() == 0:
        return 0
    return int((logits.index_select(0, candidates).argmax(-1) == targets.index_select(0, candidates)).sum())


@torch.no_grad()
def max_abs_logit_diff(model_x, model_y, input_ids, attention_mask, device: str = "cpu", hidden_perm=None) -> float:
    """max |logits(x) − logits(y)| over the real tokens of a batch: the equivalence check.

    For a bare encoder the outputs are the pooler output (not permuted) and the last hidden
    state, which lives in the residual space: pass `hidden_perm` (the final residual
    permutation of x) to compare it with y's hidden state reindexed the same way.
    """
    model_x.eval()
    model_y.eval()
    ids, mask = input_ids.to(device), attention_mask.to(device)
    # A few sequences at a time: a masked LM's logits for a whole batch are
    # batch × length × vocabulary floats (500 MB for BERT-base), and two models' worth.
    worst = 0.0
    for start in range(0, ids.shape[0], _ROWS_PER_CHECK):
        rows = slice(start, start + _ROWS_PER_CHECK)
        worst = max(worst, _max_abs_diff(model_x, model_y, ids[rows], mask[rows], hidden_perm))
    return worst


_ROWS_PER_CHECK = 4


def _max_abs_diff(model_x, model_y, ids, mask, hidden_perm) -> float:
    out_x = model_x(input_ids=ids, attention_mask=mask)
    out_y = model_y(input_ids=ids, attention_mask=mask)
    keep = mask.bool()
    pairs = []
    if hasattr(out_x, "logits"):
        pairs.append((out_x.logits, out_y.logits))
    else:
        if getattr(out_x, "pooler_output", None) is not None:
            pairs.append((out_x.pooler_output, out_y.pooler_output))
        if hidden_perm is not None:
            index = torch.as_tensor(hidden_perm, device=ids.device)
            pairs.append((out_x.last_hidden_state, out_y.last_hidden_state.index_select(-1, index)))
    if not pairs:
        raise ValueError("nothing to compare: a bare encoder without pooler needs hidden_perm")
    worst = 0.0
    for a, b in pairs:
        if a.dim() >= 2 and a.shape[:2] == keep.shape:
            a, b = a[keep], b[keep]
        if a.numel():
            worst = max(worst, float((a.float() - b.float()).abs().max()))
    return worst


def barrier(losses: list[float]) -> float:
    """Loss barrier of a path (Frankle et al.): max over the path minus the endpoints' mean.

    `losses` are ordered along λ, so losses[0] and losses[-1] are the endpoints.
    """
    if len(losses) < 2:
        raise ValueError("a path needs at least its two endpoints")
    return max(losses) - 0.5 * (losses[0] + losses[-1])
