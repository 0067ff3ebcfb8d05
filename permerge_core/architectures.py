"""Model families described as data.

A permutation acts on a *space* (the units of one hidden layer). For each space we list every
tensor that touches it and the axis along which it does: producers have the space on their
output rows (axis 0 of a Linear weight, the bias, LayerNorm gamma/beta), consumers on their
input columns (axis 1 of a Linear weight, axis 1 of an Embedding table). Applying a
permutation is then one generic loop (`permuting.py`), and supporting a new family is a new
`Family` value here, not new code.

Names are templates: `{i}` is the layer index. Names in `encoder` are relative to the base
model (`bert.`, `roberta.` or nothing for a bare encoder); names in a `Head` are absolute.

Residual tensors also say which *residual node* they sit at, so that the non-function-
preserving `sep` mode (a different permutation per node) is described by the same data. The
family's `ResidualLayout` numbers the nodes; for BERT, node 0 is the embedding LayerNorm,
node 2i+1 the LayerNorm after layer i's attention, node 2i+2 the LayerNorm after layer i's FFN;
for the pre-LayerNorm GPT-2 the nodes are the un-normalised stream at the same places.

The axis of a touch is data, not a convention: a Linear stores [out, in] (a producer's space on
axis 0), GPT-2's Conv1D stores [in, out] (on axis 1). A touch may also address one of several
equal blocks of a fused tensor (`part`): GPT-2's `c_attn` holds q | k | v in one matrix.

What a family reads from its config (`ConfigKeys`), which tensors a checkpoint may lack, how
a head is recognised from tensor names, old tensor names, what a language-model head predicts
(`Prediction`) and how text is laid out for it are all data here too: to add a family, add one
`Family` value to `FAMILIES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# Where a residual tensor sits, as a rule the family's ResidualLayout turns into a node index.
EMBED = "embed"  # the first node: what the embeddings write
LAYER_INPUT = "layer_input"  # the node layer i reads (the last node before layer i)
AFTER_ATTENTION = "after_attention"  # layer i's first node
AFTER_FFN = "after_ffn"  # layer i's second node
FINAL = "final"  # the last node: what the head reads


@dataclass(frozen=True)
class ResidualLayout:
    """The residual stream's nodes, in depth order: `before` the layers, `per_layer` in each
    layer, and `after` them, each as (name, reader's label), `{i}` being the layer. A node is a
    place where the stream is read for statistics; `sep` gives each node its own permutation."""

    before: tuple[tuple[str, str], ...] = (("embeddings", "after the embeddings"),)
    per_layer: tuple[tuple[str, str], ...] = (
        ("layer.{i}.attention_out", "after layer {i} attention"),
        ("layer.{i}.ffn_out", "after layer {i} FFN"),
    )
    after: tuple[tuple[str, str], ...] = ()

    def count(self, num_layers: int) -> int:
        return len(self.before) + len(self.per_layer) * num_layers + len(self.after)

    def nodes(self, num_layers: int) -> list[tuple[str, str]]:
        """(name, label) of every node, in depth order."""
        inner = [(n.format(i=i), lab.format(i=i)) for i in range(num_layers) for n, lab in self.per_layer]
        return [*self.before, *inner, *self.after]

    def index(self, rule: str, layer: int | None, num_layers: int) -> int:
        """Index of the node a tensor at `rule` (in layer `layer`) touches."""
        first_of = lambda i: len(self.before) + len(self.per_layer) * i  # noqa: E731
        if rule == EMBED:
            return 0
        if rule == FINAL:
            return self.count(num_layers) - 1
        if rule == LAYER_INPUT:
            return first_of(layer) - 1
        if rule == AFTER_ATTENTION:
            return first_of(layer)
        if rule == AFTER_FFN:
            return first_of(layer) + 1
        raise ValueError(f"unknown residual rule {rule!r}")


@dataclass(frozen=True)
class ConfigKeys:
    """Where a family's config keeps the model's shape (transformers' attribute names)."""

    layers: str = "num_hidden_layers"
    hidden: str = "hidden_size"
    heads: str = "num_attention_heads"
    ffn: str = "intermediate_size"
    ffn_multiple: int | None = None  # an unset FFN size means hidden × this (GPT-2's n_inner)
    positions: str = "max_position_embeddings"  # the length of the learned position table
    position_offset: int = 0  # table rows no token position uses (RoBERTa starts after the padding id)


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    heads: int
    ffn: int
    positions: int  # rows of the position table (config value; see ConfigKeys.position_offset)


@dataclass(frozen=True)
class Touch:
    """One tensor touched by a permutation: its name template and the permuted axis.

    `part=(k, n)` narrows the touch to the k-th of n equal blocks along that axis (the q, k or v
    third of a fused projection); the other blocks are left to other touches, or alone."""

    name: str
    axis: int
    node: str | None = None  # residual tensors only: which residual node
    optional: bool = False  # e.g. a pooler that some checkpoints do not have
    part: tuple[int, int] | None = None  # (index, count) of an equal block along `axis`


@dataclass(frozen=True)
class Capture:
    """Where the activation defining a space is read: a module's input or output."""

    module: str
    io: str  # "input" or "output"


@dataclass(frozen=True)
class Encoder:
    """The base model's layer stack (a BERT-style encoder or a GPT-2-style decoder): what each
    space touches and where it is read."""

    embeddings: tuple[Touch, ...]
    ffn: tuple[Touch, ...]  # per layer; intermediate (d_ff) space
    attention: tuple[Touch, ...]  # per layer; concatenated head context (d_model) space
    residual_per_layer: tuple[Touch, ...]
    capture_ffn: Capture
    capture_attention: Capture
    capture_residual: tuple[tuple[str, Capture], ...]  # (node rule, capture)
    # The position-wise end of a layer: (attention output, intermediate, output) modules,
    # called as a = m1(context, residual); out = m3(m2(a), a). Everything after the attention
    # mixing acts on each position alone, so the last layer can run it at the masked
    # positions only (evaluation.py). None: the family always runs the whole encoder.
    position_wise_tail: tuple[str, str, str] | None = None
    # The layer's self-attention module (query, key and value Linears, num_attention_heads,
    # attention_head_size, scaling, as in transformers' BERT): in the last layer only the
    # masked positions' queries are needed, the keys and values of every position.
    # None: the last layer's attention runs at every position.
    self_attention: str | None = None
    # Residual tensors of the base model after its last layer (a pre-LN model's final LayerNorm).
    final: tuple[Touch, ...] = ()


@dataclass(frozen=True)
class Prediction:
    """What a language-model head is scored on along the path, and how the app names it.

    `targets` picks how the evaluation batches are turned into (positions, targets)
    (`data.prediction_batches`): "masked" draws BERT's masks once from the mask seed; "next"
    makes every real token predict the token after it."""

    targets: str  # "masked" or "next"
    loss: str  # the loss's name: "masked-LM loss"
    accuracy: str  # the accuracy's name: "masked-token accuracy"
    predicted: str  # what is counted: "masked tokens"
    explanation: str  # one sentence on how the loss is computed (captions, reports)


MASKED_LM = Prediction(
    "masked", "masked-LM loss", "masked-token accuracy", "masked tokens",
    "Masked-LM cross-entropy on the evaluation text (15% of tokens masked, masks drawn once from the mask seed), in nats.",
)
NEXT_TOKEN = Prediction(
    "next", "next-token loss", "next-token accuracy", "predicted tokens",
    "Next-token cross-entropy on the evaluation text (every line followed by the end-of-text token, the stream cut "
    "into blocks of the maximum length), averaged over every predicted token, in nats.",
)


@dataclass(frozen=True)
class Head:
    """A task head on top of the encoder, with the residual tensors it consumes."""

    kind: str  # "mlm", "causal-lm", "base" or "classification"
    model_class: str  # transformers class name that loads it
    residual: tuple[Touch, ...] = ()
    mlm_module: str | None = None  # module mapping hidden states to vocabulary logits
    # Tensor-name prefixes that show a checkpoint has this head, for folders whose
    # config.json names no architecture (the bare encoder is the fallback).
    detect: tuple[str, ...] = ()
    prediction: Prediction | None = None  # language-model heads: what the loss path scores
    tied_decoder: bool = False  # the vocabulary projection is the word-embedding table


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # config.model_type values
    base_prefix: str  # attribute of the base model inside a head model, with a dot
    encoder: Encoder
    heads: dict[str, Head] = field(default_factory=dict)  # by architecture class name
    config_keys: ConfigKeys = ConfigKeys()
    residual_layout: ResidualLayout = ResidualLayout()
    # Tensors a checkpoint may lack (name suffixes or parts): tied decoders and buffers that
    # transformers rebuilds itself, poolers that some checkpoints leave out.
    may_lack: tuple[str, ...] = ()
    # Old checkpoints' tensor names and today's.
    renamed: tuple[tuple[str, str], ...] = ()
    # Text is read as one stream (every line + end-of-text, cut into blocks of the maximum
    # length), as causal LMs are trained, rather than one passage per sequence.
    packed_text: bool = False

    def shape(self, config) -> Shape:
        keys = self.config_keys
        hidden = getattr(config, keys.hidden)
        ffn = getattr(config, keys.ffn, None) or hidden * (keys.ffn_multiple or 0)
        return Shape(getattr(config, keys.layers), hidden, getattr(config, keys.heads), ffn, getattr(config, keys.positions, None))

    def usable_positions(self, config) -> int | None:
        """The longest sequence the model can read, None if its config does not say."""
        positions = self.shape(config).positions
        return None if positions is None else positions - self.config_keys.position_offset

    def residual_node(self, rule: str, layer: int | None, num_layers: int) -> int:
        return self.residual_layout.index(rule, layer, num_layers)

    def lacks_ok(self, key: str) -> bool:
        return any(part in key for part in self.may_lack)

    def head_for_keys(self, keys) -> Head:
        """The head a checkpoint without an `architectures` field has, from its tensor names."""
        for head in self.heads.values():
            if head.detect and any(k.startswith(head.detect) for k in keys):
                return head
        return next(h for h in self.heads.values() if h.kind == "base")


def _linear(prefix: str, axis: int, node: str | None = None, bias: bool = True) -> tuple[Touch, ...]:
    touches = [Touch(f"{prefix}.weight", axis, node)]
    if bias and axis == 0:
        touches.append(Touch(f"{prefix}.bias", 0, node))
    return tuple(touches)


def _norm(prefix: str, node: str) -> tuple[Touch, ...]:
    return (Touch(f"{prefix}.weight", 0, node), Touch(f"{prefix}.bias", 0, node))


LAYER = "encoder.layer.{i}"

BERT_STYLE_ENCODER = Encoder(
    embeddings=(
        Touch("embeddings.word_embeddings.weight", 1, EMBED),
        Touch("embeddings.position_embeddings.weight", 1, EMBED),
        Touch("embeddings.token_type_embeddings.weight", 1, EMBED),
        *_norm("embeddings.LayerNorm", EMBED),
    ),
    ffn=(
        *_linear(f"{LAYER}.intermediate.dense", 0),
        *_linear(f"{LAYER}.output.dense", 1),
    ),
    attention=(
        # Q and K take the same permutation as V: the head map comes from the context
        # features, and within a head Q and K only have to agree with each other.
        *_linear(f"{LAYER}.attention.self.query", 0),
        *_linear(f"{LAYER}.attention.self.key", 0),
        *_linear(f"{LAYER}.attention.self.value", 0),
        *_linear(f"{LAYER}.attention.output.dense", 1),
    ),
    residual_per_layer=(
        *_linear(f"{LAYER}.attention.self.query", 1, LAYER_INPUT),
        *_linear(f"{LAYER}.attention.self.key", 1, LAYER_INPUT),
        *_linear(f"{LAYER}.attention.self.value", 1, LAYER_INPUT),
        *_linear(f"{LAYER}.attention.output.dense", 0, AFTER_ATTENTION),
        *_norm(f"{LAYER}.attention.output.LayerNorm", AFTER_ATTENTION),
        *_linear(f"{LAYER}.intermediate.dense", 1, AFTER_ATTENTION),
        *_linear(f"{LAYER}.output.dense", 0, AFTER_FFN),
        *_norm(f"{LAYER}.output.LayerNorm", AFTER_FFN),
    ),
    capture_ffn=Capture(f"{LAYER}.output.dense", "input"),
    capture_attention=Capture(f"{LAYER}.attention.output.dense", "input"),
    capture_residual=(
        (EMBED, Capture("embeddings.LayerNorm", "output")),
        (AFTER_ATTENTION, Capture(f"{LAYER}.attention.output.LayerNorm", "output")),
        (AFTER_FFN, Capture(f"{LAYER}.output.LayerNorm", "output")),
    ),
    position_wise_tail=(f"{LAYER}.attention.output", f"{LAYER}.intermediate", f"{LAYER}.output"),
    self_attention=f"{LAYER}.attention.self",
)


def _mlm_transform(prefix: str, norm: str) -> tuple[Touch, ...]:
    """The MLM head transform, with its output space permuted too.

    The decoder is tied to the word embeddings, whose columns the residual permutation has
    already moved. Permuting the transform's output (dense rows, bias, LayerNorm) by the same
    permutation makes the tied decoder line up, so B' computes exactly B's function. (The
    authors' code restores the decoder in the wrong direction instead; see docs/method.md §5.)
    """
    return (
        Touch(f"{prefix}.weight", 1, FINAL),
        Touch(f"{prefix}.weight", 0, FINAL),
        Touch(f"{prefix}.bias", 0, FINAL),
        *_norm(norm, FINAL),
    )


# What every BERT-style family shares besides its encoder.
BERT_STYLE = dict(
    may_lack=("position_ids", "decoder.weight", "decoder.bias", "token_type_ids", "pooler"),
    renamed=(("LayerNorm.gamma", "LayerNorm.weight"), ("LayerNorm.beta", "LayerNorm.bias")),
)

BERT = Family(
    name="bert",
    model_types=("bert",),
    base_prefix="bert.",
    encoder=BERT_STYLE_ENCODER,
    heads={
        "BertForMaskedLM": Head(
            kind="mlm",
            model_class="BertForMaskedLM",
            residual=(
                *_mlm_transform("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm"),
                Touch("cls.predictions.decoder.weight", 1, FINAL),
            ),
            mlm_module="cls",
            detect=("cls.predictions",),
            prediction=MASKED_LM,
            tied_decoder=True,
        ),
        "BertModel": Head(
            kind="base",
            model_class="BertModel",
            residual=(Touch("pooler.dense.weight", 1, FINAL, optional=True),),
        ),
        "BertForSequenceClassification": Head(
            kind="classification",
            model_class="BertForSequenceClassification",
            residual=(Touch("bert.pooler.dense.weight", 1, FINAL),),
            detect=("classifier",),
        ),
    },
    **BERT_STYLE,
)

ROBERTA = Family(
    name="roberta",
    model_types=("roberta",),
    base_prefix="roberta.",
    encoder=BERT_STYLE_ENCODER,
    heads={
        "RobertaForMaskedLM": Head(
            kind="mlm",
            model_class="RobertaForMaskedLM",
            residual=(
                *_mlm_transform("lm_head.dense", "lm_head.layer_norm"),
                Touch("lm_head.decoder.weight", 1, FINAL),
            ),
            mlm_module="lm_head",
            detect=("lm_head",),
            prediction=MASKED_LM,
            tied_decoder=True,
        ),
        "RobertaModel": Head(
            kind="base",
            model_class="RobertaModel",
            residual=(Touch("pooler.dense.weight", 1, FINAL, optional=True),),
        ),
        "RobertaForSequenceClassification": Head(
            kind="classification",
            model_class="RobertaForSequenceClassification",
            # RoBERTa's classifier reads the <s> hidden state directly (no pooler).
            residual=(Touch("classifier.dense.weight", 1, FINAL),),
            detect=("classifier",),
        ),
    },
    config_keys=ConfigKeys(position_offset=2),  # positions count from padding_idx + 1
    **BERT_STYLE,
)


# ---- GPT-2: a pre-LayerNorm decoder with Conv1D weights -------------------------------------
# Conv1D stores [in, out]: a producer has its space on axis 1 (and its bias), a consumer on
# axis 0. `c_attn` is q | k | v along its output axis; each third takes the attention
# permutation, as BERT's query, key and value do.

BLOCK = "h.{i}"
QKV = 3


def _conv1d(prefix: str, role: str, node: str | None = None, part: tuple[int, int] | None = None) -> tuple[Touch, ...]:
    """A Conv1D's touches on one space: 'out' (weight columns and bias) or 'in' (weight rows)."""
    if role == "in":
        return (Touch(f"{prefix}.weight", 0, node),)
    return (Touch(f"{prefix}.weight", 1, node, part=part), Touch(f"{prefix}.bias", 0, node, part=part))


GPT2_DECODER = Encoder(
    embeddings=(
        Touch("wte.weight", 1, EMBED),
        Touch("wpe.weight", 1, EMBED),
    ),
    ffn=(
        *_conv1d(f"{BLOCK}.mlp.c_fc", "out"),
        *_conv1d(f"{BLOCK}.mlp.c_proj", "in"),
    ),
    attention=(
        *(t for k in range(QKV) for t in _conv1d(f"{BLOCK}.attn.c_attn", "out", part=(k, QKV))),
        *_conv1d(f"{BLOCK}.attn.c_proj", "in"),
    ),
    residual_per_layer=(
        # Pre-LN: a layer reads the stream through ln_1, writes its attention output into it,
        # reads it again through ln_2 and writes its FFN output.
        *_norm(f"{BLOCK}.ln_1", LAYER_INPUT),
        *_conv1d(f"{BLOCK}.attn.c_attn", "in", LAYER_INPUT),
        *_conv1d(f"{BLOCK}.attn.c_proj", "out", AFTER_ATTENTION),
        *_norm(f"{BLOCK}.ln_2", AFTER_ATTENTION),
        *_conv1d(f"{BLOCK}.mlp.c_fc", "in", AFTER_ATTENTION),
        *_conv1d(f"{BLOCK}.mlp.c_proj", "out", AFTER_FFN),
    ),
    final=_norm("ln_f", FINAL),
    capture_ffn=Capture(f"{BLOCK}.mlp.c_proj", "input"),
    capture_attention=Capture(f"{BLOCK}.attn.c_proj", "input"),
    # The stream itself (pre-LN: no LayerNorm sits on it): the embeddings' sum (what dropout,
    # the identity in evaluation, passes on), the sum after each attention (what ln_2 reads)
    # and after each FFN (the block's output; after the last block, what ln_f reads).
    capture_residual=(
        (EMBED, Capture("drop", "output")),
        (AFTER_ATTENTION, Capture(f"{BLOCK}.ln_2", "input")),
        (AFTER_FFN, Capture(BLOCK, "output")),
    ),
)

GPT2 = Family(
    name="gpt2",
    model_types=("gpt2",),
    base_prefix="transformer.",
    encoder=GPT2_DECODER,
    heads={
        "GPT2LMHeadModel": Head(
            kind="causal-lm",
            model_class="GPT2LMHeadModel",
            residual=(Touch("lm_head.weight", 1, FINAL),),  # tied to wte: one tensor, one permutation
            mlm_module="lm_head",
            detect=("lm_head",),
            prediction=NEXT_TOKEN,
            tied_decoder=True,
        ),
        "GPT2Model": Head(kind="base", model_class="GPT2Model"),
    },
    config_keys=ConfigKeys(layers="n_layer", hidden="n_embd", heads="n_head", ffn="n_inner", ffn_multiple=4, positions="n_positions"),
    # The causal-mask buffers that older transformers saved, and the tied lm_head that
    # checkpoints (the hub's gpt2 among them) leave out.
    may_lack=(".attn.bias", ".attn.masked_bias", "lm_head.weight"),
    packed_text=True,
)

FAMILIES: dict[str, Family] = {f.name: f for f in (BERT, ROBERTA, GPT2)}

# Architectures that are loaded as another supported class: pre-training checkpoints
# (MultiBERTs ship as BertForPreTraining) are used through their masked-LM head.
ARCHITECTURE_ALIASES = {
    "BertForPreTraining": "BertForMaskedLM",
    "BertLMHeadModel": "BertForMaskedLM",
    "RobertaForCausalLM": "RobertaForMaskedLM",
}


def supported_architectures() -> list[str]:
    return [name for fam in FAMILIES.values() for name in fam.heads]


def family_for_model_type(model_type: str) -> Family | None:
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    return None


def expand(touches: tuple[Touch, ...], layer: int | None) -> list[Touch]:
    """Fill the layer index into name templates."""
    if layer is None:
        return list(touches)
    return [replace(t, name=t.name.format(i=layer)) for t in touches]
