"""Text in, token batches out, and what a language model is scored on: masked-LM masks drawn
once from a seed, or every token's successor.

Text files hold one passage per line. Passages are tokenised, split where longer than the
model's maximum length (and the split is reported), cut to an exact token budget, sorted by
length so that batches carry little padding, and padded per batch. Sorting is safe because
every consumer (running sums, summed losses) is order-independent. Causal LMs read the text
packed instead (`packed_blocks`): every line followed by the end-of-text token, one stream cut
into blocks of the maximum length, as they are trained.

Masked LMs' evaluation text has two packings (`PACKINGS`, the `eval_packing` setting): `lines`,
each passage its own sequence, and `blocks`, the paper's protocol (transformers' `run_mlm`
way): all passages' ids concatenated and cut into full-length blocks, each wrapped in the
tokenizer's special tokens.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import DataError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CORPUS = ASSETS / "corpus"
DEFAULT_MATCH_DATA = CORPUS / "match.txt"
DEFAULT_EVAL_DATA = CORPUS / "eval.txt"


def read_passages(path: str | Path) -> list[str]:
    """Non-blank lines of a UTF-8 text file, with a clear error for every way that fails."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"Text file {path} does not exist.", "Give the path of a UTF-8 text file with one passage per line.")
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a text file.", "Give the path of a UTF-8 text file with one passage per line.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(
            f"Text file {path} is not UTF-8 (undecodable byte at offset {err.start}).",
            "Re-save it as UTF-8 text with one passage per line.",
        ) from None
    if not text.strip():
        what = "is empty" if not text else "has only blank lines"
        raise DataError(f"Text file {path} {what}.", "Give a file with at least one non-blank line of text.")
    return [line.strip() for line in text.splitlines() if line.strip()]


def text_fingerprint(passages: list[str]) -> str:
    digest = hashlib.sha256()
    for line in passages:
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass
class TokenBatches:
    """Padded batches of token ids and what was done to fit the request."""

    input_ids: list[torch.Tensor]
    attention_mask: list[torch.Tensor]
    num_tokens: int  # real (non-padding) tokens, special tokens included
    num_sequences: int
    notes: list[str] = field(default_factory=list)

    def __iter__(self):
        return iter(zip(self.input_ids, self.attention_mask))

    def __len__(self):
        return len(self.input_ids)


PACKINGS = ("blocks", "lines")


def tokenize(
    tokenizer,
    passages: list[str],
    max_tokens: int,
    max_length: int = 128,
    batch_size: int = 32,
    packing: str = "lines",
) -> TokenBatches:
    """Tokenise passages into at most `max_tokens` real tokens, in padded batches (`packing`:
    see `token_sequences`)."""
    sequences, used, notes = token_sequences(tokenizer, passages, max_tokens, max_length, packing)
    if used < max_tokens:
        notes.append(f"Asked for {max_tokens:,} tokens; the text has only {used:,}, so all of them are used.")
    return batch_sequences(sequences, tokenizer, batch_size, notes)


def token_sequences(tokenizer, passages: list[str], max_tokens: int, max_length: int = 128,
                    packing: str = "lines") -> tuple[list[list[int]], int, list[str]]:
    """The first `max_tokens` tokens of the text as model inputs, in text order, the last one
    cut to fit. Returns (sequences, tokens used, notes).

    `lines`: each passage wrapped in the tokenizer's special tokens ([CLS] … [SEP]) and split
    where longer than `max_length`. `blocks`: the passages' ids, without special tokens,
    concatenated and cut into blocks of `max_length` − (number of special tokens) ids, each
    wrapped in the special tokens ([CLS] … [SEP] for BERT, <s> … </s> for RoBERTa, nothing for
    a tokenizer that adds none); only the last block can be shorter."""
    if max_tokens <= 0:
        raise DataError(f"Token budget must be positive, got {max_tokens}.", "Ask for at least a few hundred tokens.")
    if max_length < 3:
        raise DataError(f"Maximum sequence length {max_length} leaves no room for text.", "Use a length of at least 8.")
    if packing not in PACKINGS:
        raise DataError(f"Unknown packing {packing!r}.", f"Use one of: {', '.join(PACKINGS)}.")
    prefix, suffix = special_wrapping(tokenizer)
    body = max_length - len(prefix) - len(suffix)
    encoded = tokenizer(passages, add_special_tokens=False, verbose=False)["input_ids"]  # (long ones are split here)
    if packing == "blocks":
        stream = [i for ids in encoded for i in ids]
        encoded = [stream[k : k + body] for k in range(0, len(stream), body)]
    sequences: list[list[int]] = []
    split_lines = 0
    used = 0
    for ids in encoded:
        if not ids:
            continue
        chunks = [ids[k : k + body] for k in range(0, len(ids), body)]
        split_lines += len(chunks) > 1
        for chunk in chunks:
            room = max_tokens - used - len(prefix) - len(suffix)
            if room <= 0:
                break
            seq = prefix + chunk[:room] + suffix
            sequences.append(seq)
            used += len(seq)
        if max_tokens - used - len(prefix) - len(suffix) <= 0:
            break
    if not sequences:
        raise DataError("The text contains no tokens the tokenizer can use.", "Give text in the model's language.")
    notes = []
    if split_lines:
        notes.append(f"{split_lines} passage(s) longer than {max_length} tokens were split into several sequences.")
    return sequences, used, notes


def batch_sequences(sequences: list[list[int]], tokenizer, batch_size: int = 32, notes: list[str] | None = None) -> TokenBatches:
    """Sequences sorted by length (little padding) and padded per batch."""
    sequences = sorted(sequences, key=len)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids, attention_mask = _padded(sequences, pad, batch_size)
    return TokenBatches(input_ids, attention_mask, sum(map(len, sequences)), len(sequences), list(notes or []))


def _padded(sequences: list[list[int]], pad: int, batch_size: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(input ids, attention masks) of consecutive groups of `batch_size` sequences, each group
    right-padded with `pad` to its longest sequence."""
    input_ids, attention_mask = [], []
    for start in range(0, len(sequences), batch_size):
        group = sequences[start : start + batch_size]
        width = max(len(s) for s in group)
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, seq in enumerate(group):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        input_ids.append(ids)
        attention_mask.append(mask)
    return input_ids, attention_mask


def packed_blocks(tokenizer, passages: list[str], max_tokens: int, max_length: int = 128, batch_size: int = 32) -> TokenBatches:
    """The standard causal-LM layout: each passage tokenised without special tokens and
    followed by the end-of-text token, all concatenated, cut to `max_tokens` and into blocks
    of `max_length` (the last block may be shorter, and is padded), in text order."""
    blocks, used, notes = packed_sequences(tokenizer, passages, max_tokens, max_length)
    if used < max_tokens:
        notes.append(f"Asked for {max_tokens:,} tokens; the text has only {used:,}, so all of them are used.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids, attention_mask = _padded(blocks, pad, batch_size)
    return TokenBatches(input_ids, attention_mask, used, len(blocks), notes)


def packed_sequences(tokenizer, passages: list[str], max_tokens: int, max_length: int = 128) -> tuple[list[list[int]], int, list[str]]:
    """The blocks of `packed_blocks`, in text order, unpadded: (blocks, tokens used, notes)."""
    if max_tokens <= 0:
        raise DataError(f"Token budget must be positive, got {max_tokens}.", "Ask for at least a few hundred tokens.")
    if max_length < 2:
        raise DataError(f"Blocks of {max_length} token(s) leave nothing to predict.", "Use a length of at least 8.")
    stream = packed_stream(tokenizer, passages, max_tokens)[:max_tokens]
    return [stream[k : k + max_length] for k in range(0, len(stream), max_length)], len(stream), []


def packed_stream(tokenizer, passages: list[str], max_tokens: int | None = None) -> list[int]:
    """The causal-LM id stream: each passage's ids followed by the end-of-text token, in text
    order; tokenising stops once `max_tokens` ids are in hand (None: all of the text). Training
    and evaluation of decoders both read text this way."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("The tokenizer has no end-of-text (eos) token, so the text cannot be packed into blocks.",
                        "Use the tokenizer the decoder was trained with, or a GPT-2 style one such as assets/tokenizer-bpe.")
    stream: list[int] = []
    for ids in tokenizer(passages, add_special_tokens=False, verbose=False)["input_ids"]:
        if ids:
            stream += ids + [eos]
        if max_tokens is not None and len(stream) >= max_tokens:
            break
    if not stream:
        raise DataError("The text contains no tokens the tokenizer can use.", "Give text in the model's language.")
    return stream


def length_limit(tokenizer) -> int | None:
    """The longest sequence the tokenizer was made for (its `model_max_length`: 512 for BERT
    and RoBERTa, 1024 for GPT-2), or None where it does not say (transformers then stores a
    huge placeholder)."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 10**6 else None


def special_wrapping(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a single text ([CLS] … [SEP])."""
    probe = "hello world"
    body = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(body) + 1):
        if full[start : start + len(body)] == body:
            return full[:start], full[start + len(body) :]
    return [], []


@dataclass
class MaskedBatch:
    """One batch prepared for masked-LM loss: corrupted inputs, where to predict, what."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor  # bool, same shape as input_ids
    targets: torch.Tensor  # original ids at the masked positions, in row-major order


def draw_mlm_masks(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special_ids: list[int],
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator,
    probability: float = 0.15,
) -> MaskedBatch:
    """BERT's scheme: 15% of non-special tokens; of those 80% [MASK], 10% random, 10% kept."""
    special = torch.isin(input_ids, torch.tensor(special_ids, dtype=torch.long)) | (attention_mask == 0)
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & ~special
    roll = torch.rand(input_ids.shape, generator=generator)
    to_mask = chosen & (roll < 0.8)
    to_random = chosen & (roll >= 0.8) & (roll < 0.9)
    corrupted = input_ids.clone()
    corrupted[to_mask] = mask_id
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[[i for i in special_ids if i < vocab_size]] = False
    candidates = allowed.nonzero().squeeze(1)
    picks = torch.randint(len(candidates), input_ids.shape, generator=generator)
    corrupted[to_random] = candidates[picks[to_random]]
    return MaskedBatch(corrupted, attention_mask, chosen, input_ids[chosen])


def special_token_ids(tokenizer) -> list[int]:
    """The tokenizer's special ids ([CLS], [SEP], [PAD], [MASK], ...), sorted, each once: the
    tokens that masks never pick and that statistics can leave out."""
    return sorted(set(tokenizer.all_special_ids))


def masked_batches(batches: TokenBatches, tokenizer, vocab_size: int, seed: int = 0, probability: float = 0.15) -> list[MaskedBatch]:
    """Masks for a whole evaluation set, drawn once so every λ and method sees the same ones."""
    if tokenizer.mask_token_id is None:
        raise DataError("The tokenizer has no mask token, so masked-LM loss is undefined.", "Use the tokenizer the model was trained with.")
    generator = torch.Generator().manual_seed(seed)
    special_ids = special_token_ids(tokenizer)
    out = [
        draw_mlm_masks(ids, mask, special_ids, tokenizer.mask_token_id, vocab_size, generator, probability)
        for ids, mask in batches
    ]
    if sum(int(b.positions.sum()) for b in out) == 0:
        raise DataError("No token was selected for masking: the evaluation text is too short.", "Give more evaluation text or a larger token budget.")
    return out


def next_token_batches(batches: TokenBatches) -> list[MaskedBatch]:
    """Causal-LM scoring: every real token that has a real successor predicts it. The inputs
    are the text itself; `positions` marks the predicting tokens, `targets` their successors."""
    out = []
    for ids, mask in batches:
        real = mask.bool()
        positions = torch.zeros_like(real)
        positions[:, :-1] = real[:, :-1] & real[:, 1:]  # right-padded rows: the last real token predicts nothing
        out.append(MaskedBatch(ids, mask, positions, ids[:, 1:][positions[:, :-1]]))
    if sum(int(b.positions.sum()) for b in out) == 0:
        raise DataError("No token has a successor to predict: the evaluation text is too short.", "Give more evaluation text or a larger token budget.")
    return out


def prediction_batches(targets: str, batches: TokenBatches, tokenizer, vocab_size: int, seed: int = 0) -> list[MaskedBatch]:
    """The positions a language model is scored at, and their targets, for a head's
    `Prediction.targets`: "masked" (BERT's masks, drawn once from `seed`) or "next"."""
    if targets == "next":
        return next_token_batches(batches)
    if targets == "masked":
        return masked_batches(batches, tokenizer, vocab_size, seed=seed)
    raise ValueError(f"unknown prediction targets {targets!r}")
