"""Tiny random models, tokenizers and text for tests: built in milliseconds, no downloads."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from permerge_core.families import FAMILIES

WORDS = (
    "the of and to in that he shall unto for his lord they be is him not them it with all thou thy "
    "was god which my me said but ye their have will thee from as are when this out were upon man by "
    "king love sir good come now what our your here there night day heart fair sweet death life"
).split()

# (family, head kind) → the transformers class of every head of every registered family.
FAMILY_CLASSES = {(family.name, head.kind): head.model_class for family in FAMILIES.values() for head in family.heads.values()}
GPT2_VOCAB = 300  # the tiny byte-level BPE below: 256 bytes, <|endoftext|> and 43 merges
EOT = "<|endoftext|>"


def make_tokenizer(folder: Path):
    """A WordPiece tokenizer over WORDS, saved so AutoTokenizer can load it."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(WORDS)) + list("abcdefghijklmnopqrstuvwxyz.,"))}
    core = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok = BertTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(folder)
    return tok


def make_gpt2_tokenizer(folder: Path):
    """A GPT-2 style byte-level BPE (GPT2_VOCAB entries, <|endoftext|> = id 0 as bos, eos and
    padding) trained on WORDS in milliseconds, saved so AutoTokenizer can load it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=GPT2_VOCAB, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator([random_text(100, seed=99)], trainer)
    tok = GPT2TokenizerFast(tokenizer_object=core, bos_token=EOT, eos_token=EOT, unk_token=EOT, pad_token=EOT, model_max_length=128)
    assert len(tok) == GPT2_VOCAB and tok.eos_token_id == 0
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(folder)
    return tok


DECODERS = ("gpt2", "gpt_neox")  # families that read text through the byte-level BPE below


def vocab_size(family: str = "bert") -> int:
    return GPT2_VOCAB if family in DECODERS else 5 + len(set(WORDS)) + 28


def tiny_config(family="bert", layers=2, hidden=16, heads=4, ffn=32, vocab=None, num_labels=2, positions=128, tied=None,
                rotary=0.5, parallel=True):
    from transformers import BertConfig, GPT2Config, GPTNeoXConfig, RobertaConfig

    if family == "gpt2":  # `tied` False: an lm_head of its own, not the token embeddings
        return GPT2Config(
            vocab_size=vocab or GPT2_VOCAB, n_positions=positions, n_embd=hidden, n_layer=layers, n_head=heads, n_inner=ffn,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0,
            tie_word_embeddings=tied is not False,
        )
    if family == "gpt_neox":  # Pythia's shape; `rotary` of each head's q/k rotated (Pythia: 0.25), untied unless `tied`
        return GPTNeoXConfig(
            vocab_size=vocab or GPT2_VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=ffn, max_position_embeddings=positions, use_parallel_residual=parallel,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": rotary},
            hidden_dropout=0.0, attention_dropout=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=bool(tied),
        )

    cls = BertConfig if family == "bert" else RobertaConfig
    extra = {"max_position_embeddings": 72, "pad_token_id": 0} if family == "roberta" else {"max_position_embeddings": 64}
    return cls(
        vocab_size=vocab or vocab_size(), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, num_labels=num_labels, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **extra,
    )


def random_model(family="bert", kind="mlm", seed=0, **shape):
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, FAMILY_CLASSES[(family, kind)])(tiny_config(family, **shape)).eval()
    # Random LayerNorm affine parameters and biases, and weights large enough for attention to
    # be far from uniform, so that no symmetry hides a wrong index.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                fan_in = p.shape[0] if ".c_" in name else p.shape[1]  # GPT-2's Conv1D stores [in, out]
                p.copy_(torch.randn_like(p) / (fan_in ** 0.5 if "embeddings" not in name else 1.0))
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if any(n in name for n in ("LayerNorm.weight", "layer_norm.weight", "layernorm.weight", "ln_")) and name.endswith("weight") else 0.0))
    return model


def random_ids(batch=3, length=12, seed=0, vocab=None):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab or vocab_size(), (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    mask = torch.ones_like(ids)
    mask[0, length // 2 :] = 0  # some padding, which must not matter
    ids[0, length // 2 :] = 0
    return ids, mask


def random_text(lines=200, seed=0) -> str:
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30))) for _ in range(lines)) + "\n"


def save_model(model, folder: Path, tokenizer_folder: Path | None = None, dtype=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (model.to(dtype) if dtype else model).save_pretrained(folder)
    (make_gpt2_tokenizer if model.config.model_type in DECODERS else make_tokenizer)(folder)
    return folder


def random_inner(dk: int, rng: np.random.Generator, fixed=()) -> np.ndarray:
    """A random order of a head's `dk` features that keeps the `fixed` ones in place (the
    same draw as rng.permutation(dk) where none is fixed)."""
    movable = np.setdiff1d(np.arange(dk), np.asarray(fixed, dtype=np.int64))
    order = np.arange(dk)
    order[movable] = movable[rng.permutation(len(movable))]
    return order


def random_head_perm(hidden: int, heads: int, rng: np.random.Generator, fixed=()) -> np.ndarray:
    """A function-preserving attention permutation: shuffle heads, then features within heads
    (all but the `fixed` positions of each head, rotary features)."""
    dk = hidden // heads
    order = rng.permutation(heads)
    return np.concatenate([order[j] * dk + random_inner(dk, rng, fixed) for j in range(heads)])


def spaces_of(model) -> dict:
    """The spaces (permerge_core.spaces) of a tiny model, as Checkpoint.spaces gives them."""
    from permerge_core import spaces
    from permerge_core.checkpoints import family_for_model_type

    return spaces.of_model(family_for_model_type(model.config.model_type), model.config)


def merge(**fields):
    """Settings with these merge fields (ffn, attention, residual, absolute) and defaults elsewhere."""
    from permerge_core.settings import AlignSettings

    return AlignSettings(**fields)


def random_move(space, move: str, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of `space` of kind `move` (permerge_core.spaces), never the identity
    where the move allows another: heads shuffled as wholes and features inside them (HEADS),
    features inside each head only (WITHIN_HEADS), anything (PERMUTATION and the stream's moves).
    Head moves keep the space's fixed positions in place."""
    from permerge_core import spaces

    if move == spaces.IDENTITY:
        return np.arange(space.width)
    movable = space.head_dim - len(space.fixed)
    only_identity = {spaces.HEADS: space.heads == 1 and movable <= 1, spaces.WITHIN_HEADS: movable <= 1}.get(move, space.width == 1)
    while True:
        if move == spaces.HEADS:
            perm = random_head_perm(space.width, space.heads, rng, space.fixed)
        elif move == spaces.WITHIN_HEADS:
            dk = space.head_dim
            perm = np.concatenate([j * dk + random_inner(dk, rng, space.fixed) for j in range(space.heads)])
        else:
            perm = rng.permutation(space.width)
        if only_identity or not np.array_equal(perm, np.arange(space.width)):
            return perm


def small_cli_align(model_a, model_b, text, tmp_path) -> dict:
    """`python -m permerge_core align` on a tiny pair with small budgets (through cli.main, in
    this process); its exit code must be 0. Returns report.json."""
    import json

    from permerge_core.cli import main

    out = tmp_path / "out"
    code = main(["align", "--model-a", str(model_a), "--model-b", str(model_b), "--match-data", str(text), "--eval-data", str(text),
                 "--match-tokens", "2000", "--eval-tokens", "600", "--max-length", "32", "--lambdas", "3", "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert code == 0
    return json.loads((out / "report.json").read_text())
