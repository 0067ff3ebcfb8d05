"""What a model family is, as data: the schema every family module (`bert.py`, …) fills in.

A permutation acts on a *space* (the units of one hidden layer). For each space a family lists
every tensor that touches it (`Touch`) and the axis along which it does: producers have the
space on their output rows (axis 0 of a Linear weight, the bias, LayerNorm gamma/beta),
consumers on their input columns (axis 1 of a Linear weight, axis 1 of an Embedding table). The
axis is data, not a convention: GPT-2's Conv1D stores [in, out], so a producer's space is on its
axis 1. A touch may address only some rows of its axis (`Part`): one of q | k | v in a fused
projection, contiguous (GPT-2's c_attn) or interleaved per head (GPT-NeoX's query_key_value).
Applying a permutation is then one generic loop (`permuting.py`).

Names are templates: `{i}` is the layer index. Names in the `Encoder` are relative to the base
model (`bert.`, `roberta.`, `transformer.` or nothing for a bare encoder); names in a `Head` are
absolute.

Residual tensors also say which *residual node* they sit at (a rule such as AFTER_FFN), so that
the non-function-preserving `sep` mode (a different permutation per node) is described by the
same data. The family's `ResidualLayout` lists the nodes, each with its rule, and turns a rule
into a node index: for BERT, node 0 is the embedding LayerNorm, node 2i+1 the LayerNorm after
layer i's attention, node 2i+2 the LayerNorm after layer i's FFN; for the pre-LayerNorm GPT-2
the nodes are the un-normalised stream at the same places.

The rest is data too: what a family reads from its config (`ConfigKeys`), which tensors a
checkpoint may lack, how a head is recognised from tensor names, old tensor names, which
architecture names load as which head, what a language-model head predicts (`Prediction`), how
text is laid out for it, how a fresh model is built for training (`Training`) and whether the
evaluation may run the last layer at the scored positions only (`FastPath`). To add a family,
write one module with one `Family` value and list it in `families/__init__.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

# Where a residual tensor sits, as a rule the family's ResidualLayout turns into a node index.
EMBED = "embed"  # the node the embeddings write
AFTER_ATTENTION = "after_attention"  # what layer i's attention writes
AFTER_FFN = "after_ffn"  # what layer i's FFN writes
AFTER_LAYER = "after_layer"  # what a parallel-residual layer i writes: its attention and FFN outputs in one sum
# Two rules name a node by where it is rather than by what writes it:
LAYER_INPUT = "layer_input"  # the node layer i reads: the last node before layer i's first
FINAL = "final"  # the last node: what the head reads

# What a head does, `Head.kind`.
MLM = "mlm"  # predicts masked tokens
CAUSAL_LM = "causal-lm"  # predicts the next token
BASE = "base"  # the bare encoder or decoder: hidden states out
CLASSIFICATION = "classification"  # a sequence classifier


@dataclass(frozen=True)
class Node:
    """One residual node: the rule of the tensors that write it, its space name (a template in
    `{i}` for a node of every layer) and a reader's label."""

    rule: str
    name: str
    label: str


@dataclass(frozen=True)
class ResidualLayout:
    """The residual stream's nodes, in depth order: `before` the layers, `per_layer` in each
    layer, and `after` them. A node is a place where the stream is read for statistics; `sep`
    gives each node its own permutation. A rule is found by its node's position, so a layer
    may have any number of nodes (a parallel-residual block writes the stream once)."""

    before: tuple[Node, ...] = (Node(EMBED, "embeddings", "after the embeddings"),)
    per_layer: tuple[Node, ...] = (
        Node(AFTER_ATTENTION, "layer.{i}.attention_out", "after layer {i} attention"),
        Node(AFTER_FFN, "layer.{i}.ffn_out", "after layer {i} FFN"),
    )
    after: tuple[Node, ...] = ()

    def count(self, num_layers: int) -> int:
        return len(self.before) + len(self.per_layer) * num_layers + len(self.after)

    def nodes(self, num_layers: int) -> list[tuple[str, str]]:
        """(name, label) of every node, in depth order."""
        inner = [(n.name.format(i=i), n.label.format(i=i)) for i in range(num_layers) for n in self.per_layer]
        return [*((n.name, n.label) for n in self.before), *inner, *((n.name, n.label) for n in self.after)]

    def in_every_layer(self, rule: str) -> bool:
        """Whether `rule` names one node per layer (rather than one node in all)."""
        return rule == LAYER_INPUT or any(n.rule == rule for n in self.per_layer)

    def index(self, rule: str, layer: int | None, num_layers: int) -> int:
        """Index of the node a tensor at `rule` (in layer `layer`) touches."""
        if rule == FINAL:
            return self.count(num_layers) - 1
        before, per_layer, after = ([n.rule for n in nodes] for nodes in (self.before, self.per_layer, self.after))
        if rule in before:
            return before.index(rule)
        if rule in after:
            return self.count(num_layers) - len(after) + after.index(rule)
        if rule != LAYER_INPUT and rule not in per_layer:
            raise ValueError(f"unknown residual rule {rule!r}")
        if layer is None:
            raise ValueError(f"residual rule {rule!r} names a node of every layer: give the layer")
        first = len(before) + len(per_layer) * layer  # the layer's first node
        return first - 1 if rule == LAYER_INPUT else first + per_layer.index(rule)


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
    head_dim: str | None = None  # a head's width, where the config sets it; else hidden // heads
    kv_heads: str | None = None  # key/value heads, where grouped-query attention shares them; else one per head
    # Rotary embeddings: the fraction of each head's query/key features they rotate, as a path
    # into the config whose dotted steps are attributes or dict keys
    # ("rope_parameters.partial_rotary_factor"); unset there means 1.0, as transformers reads it.
    # None: the family has no rotary embeddings.
    rotary_fraction: str | None = None


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int  # the residual stream's width
    heads: int
    ffn: int
    positions: int  # rows of the position table (config value; see ConfigKeys.position_offset)
    attention: int  # the concatenated heads' width, heads × head width (the attention space)
    kv_groups: int | None = None  # key/value groups the heads fall in (None: every head its own)
    rotary_dims: int = 0  # the first features of every head that rotary embeddings rotate (they stay in place)


def rotary_dims(head_dim: int, fraction: float) -> int:
    """How many leading features of a head transformers' rotary embedding rotates: one frequency
    per pair, int(head_dim × fraction) rounded up to a whole number of pairs (the cos/sin it
    builds are twice the frequencies long, and that length is what it slices off q and k)."""
    dims = int(head_dim * fraction)
    return min(head_dim, dims + dims % 2)


def config_value(config, path: str, default=None):
    """The value at a dotted `path` of a config: each step an attribute or, inside a dict, a key."""
    value = config
    for step in path.split("."):
        value = value.get(step) if isinstance(value, dict) else getattr(value, step, None)
        if value is None:
            return default
    return value


@dataclass(frozen=True)
class Requirement:
    """A config value the family's declaration assumes: a checkpoint with another is refused at
    load (rather than aligned under a symmetry it does not have), with `why` and `fix`."""

    key: str
    value: object
    why: str
    fix: str


PER_HEAD = "per head"  # Part.chunks of a fused tensor laid out head by head: the config's head count


@dataclass(frozen=True)
class Part:
    """Some rows of a fused tensor's axis: the axis is `chunks` equal chunks, each cut into
    `count` equal blocks, and the part is block `index` of every chunk, in chunk order.

    GPT-2's c_attn is q | k | v: (k, 3) with one chunk. GPT-NeoX's query_key_value holds
    [q_h | k_h | v_h] for every head h: (k, 3, chunks=PER_HEAD), so the part's units come head by
    head, as the attention space numbers them. The head count is the config's, so a family
    declares PER_HEAD and `Family.for_config` puts the number in (a checkpoint's family has it)."""

    index: int
    count: int
    chunks: int | str = 1  # or PER_HEAD: one chunk per attention head, filled in by Family.for_config

    def indices(self, length: int) -> np.ndarray:
        """The positions along an axis of `length` that the part addresses, in unit order:
        unit u of the touched space is row indices()[u] of the tensor."""
        if isinstance(self.chunks, str):
            raise ValueError(f"{self} has one chunk per head: take the family from Family.for_config(config)")
        if length % (self.chunks * self.count):
            raise ValueError(f"an axis of {length} does not split into {self.chunks} × {self.count} equal blocks")
        block = length // (self.chunks * self.count)
        return np.arange(length).reshape(self.chunks, self.count, block)[:, self.index].reshape(-1)


@dataclass(frozen=True)
class Touch:
    """One tensor touched by a permutation: its name template and the permuted axis. With a
    `part`, only those rows of the axis; the other rows are left to other touches, or alone."""

    name: str
    axis: int
    node: str | None = None  # residual tensors only: the residual rule of its node
    optional: bool = False  # e.g. a pooler that some checkpoints do not have
    part: Part | None = None


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
    attention: tuple[Touch, ...]  # per layer; concatenated head context space (Shape.attention wide)
    residual_per_layer: tuple[Touch, ...]
    capture_ffn: Capture
    capture_attention: Capture
    capture_residual: tuple[tuple[str, Capture], ...]  # (node rule, capture)
    # Residual tensors of the base model after its last layer (a pre-LN model's final LayerNorm).
    final: tuple[Touch, ...] = ()


@dataclass(frozen=True)
class FastPath:
    """What lets the evaluation run a masked LM's last layer at the masked positions only
    (`evaluation.py`).

    `tail` is the layer's position-wise end, (attention output, intermediate, output) modules,
    called as a = m1(context, residual); out = m3(m2(a), a): everything after the attention
    mixing acts on each position alone. `self_attention` is the layer's self-attention module,
    with transformers' BERT attributes (query, key and value Linears, num_attention_heads,
    attention_head_size, scaling): only the masked positions need to ask queries (keys and
    values still come from every position). None: that attention runs at every position."""

    tail: tuple[str, str, str]
    self_attention: str | None = None


@dataclass(frozen=True)
class Prediction:
    """What a language-model head is scored on along the path, and how the app names it.

    `targets` picks how the evaluation batches are turned into (positions, targets)
    (`data.prediction_batches`) and how `train` trains the head: "masked" draws BERT's masks
    once from the mask seed; "next" makes every real token predict the token after it."""

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

    kind: str  # MLM, CAUSAL_LM, BASE or CLASSIFICATION
    model_class: str  # transformers class name that loads it
    residual: tuple[Touch, ...] = ()
    mlm_module: str | None = None  # module mapping hidden states to vocabulary logits
    # Tensor-name prefixes that show a checkpoint has this head, for folders whose
    # config.json names no architecture (the bare encoder is the fallback).
    detect: tuple[str, ...] = ()
    prediction: Prediction | None = None  # language-model heads: what the loss path scores
    tied_decoder: bool = False  # the vocabulary projection is the word-embedding table


@dataclass(frozen=True)
class Training:
    """How `train` (training.py) builds a fresh model of the family. The trained head's
    `prediction` is the objective (masked or next-token); the shape goes to the config under the
    family's ConfigKeys."""

    config_class: str  # transformers config class
    head: str  # the architecture trained, a key of Family.heads
    tokenizer: str  # the bundled default tokenizer, a folder of assets/
    dropout: tuple[str, ...]  # config keys that take the run's dropout
    token_ids: tuple[str, ...]  # config keys that take the tokenizer's padding id


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # config.model_type values
    base_prefix: str  # attribute of the base model inside a head model, with a dot
    encoder: Encoder
    heads: dict[str, Head] = field(default_factory=dict)  # by architecture class name
    # Architectures that load as one of `heads`: pre-training checkpoints (MultiBERTs ship as
    # BertForPreTraining) are used through their masked-LM head.
    aliases: dict[str, str] = field(default_factory=dict)
    config_keys: ConfigKeys = ConfigKeys()
    residual_layout: ResidualLayout = ResidualLayout()
    # Tensors a checkpoint may lack (name suffixes or parts): tied decoders and buffers that
    # transformers rebuilds itself, poolers that some checkpoints leave out.
    may_lack: tuple[str, ...] = ()
    # Of those, the ones a checkpoint may lack only because the model ties them to a tensor it
    # has (a decoder tied to the word embeddings): an untied model without them would run with
    # a random head, so the checkpoint is refused.
    tied_only: tuple[str, ...] = ()
    # Old checkpoints' tensor names and today's.
    renamed: tuple[tuple[str, str], ...] = ()
    # Text is read as one stream (every line + end-of-text, cut into blocks of the maximum
    # length), as causal LMs are trained, rather than one passage per sequence.
    packed_text: bool = False
    # What the residual stream admits beyond one shared permutation (spaces.py), e.g. an
    # orthogonal map where every norm on the stream commutes with it (docs/method.md §2).
    stream_admits: frozenset[str] = frozenset()
    fast_path: FastPath | None = None  # None: the evaluation always runs the whole model
    training: Training | None = None  # None: `train` does not build this family
    # Config values the declaration holds only for (GPT-NeoX's parallel residual): others are refused at load.
    requires: tuple[Requirement, ...] = ()

    def shape(self, config) -> Shape:
        keys = self.config_keys
        hidden, heads = getattr(config, keys.hidden), getattr(config, keys.heads)
        ffn = getattr(config, keys.ffn, None) or hidden * (keys.ffn_multiple or 0)
        head_dim = (getattr(config, keys.head_dim, None) if keys.head_dim else None) or hidden // heads
        kv_groups = getattr(config, keys.kv_heads, None) if keys.kv_heads else None
        rotary = rotary_dims(head_dim, config_value(config, keys.rotary_fraction, 1.0)) if keys.rotary_fraction else 0
        return Shape(getattr(config, keys.layers), hidden, heads, ffn, getattr(config, keys.positions, None), heads * head_dim,
                     None if kv_groups in (None, heads) else kv_groups, rotary)

    def for_config(self, config) -> Family:
        """The family as a checkpoint with this config has it (Checkpoint.family): every
        `Part(..., chunks=PER_HEAD)` of the encoder's tensors gets the config's head count. The
        family itself where no part depends on the config."""
        heads = self.shape(config).heads

        def fill(touches: tuple[Touch, ...]) -> tuple[Touch, ...]:
            return tuple(replace(t, part=replace(t.part, chunks=heads)) if t.part and t.part.chunks == PER_HEAD else t for t in touches)

        enc = self.encoder
        bound = replace(enc, embeddings=fill(enc.embeddings), ffn=fill(enc.ffn), attention=fill(enc.attention),
                        residual_per_layer=fill(enc.residual_per_layer), final=fill(enc.final))
        return self if bound == enc else replace(self, encoder=bound)

    def unmet_requirement(self, config) -> Requirement | None:
        """The first of `requires` this config does not meet, None if it meets them all."""
        return next((r for r in self.requires if config_value(config, r.key) != r.value), None)

    def usable_positions(self, config) -> int | None:
        """The longest sequence the model can read, None if its config does not say."""
        positions = self.shape(config).positions
        return None if positions is None else positions - self.config_keys.position_offset

    def residual_node(self, rule: str, layer: int | None, num_layers: int) -> int:
        return self.residual_layout.index(rule, layer, num_layers)

    def lacks_ok(self, key: str) -> bool:
        return any(part in key for part in self.may_lack)

    def head_of_kind(self, kind: str) -> Head | None:
        return next((h for h in self.heads.values() if h.kind == kind), None)

    def head_for_architecture(self, architecture: str) -> Head | None:
        """The head a config.json `architectures` entry loads as, None if not this family's."""
        return self.heads.get(self.aliases.get(architecture, architecture))

    def head_for_keys(self, keys) -> Head:
        """The head a checkpoint without an `architectures` field has, from its tensor names."""
        for head in self.heads.values():
            if head.detect and any(k.startswith(head.detect) for k in keys):
                return head
        return self.head_of_kind(BASE)


def linear(prefix: str, axis: int, node: str | None = None, bias: bool = True) -> tuple[Touch, ...]:
    """A Linear's touches on one space: axis 0 (weight rows and bias, a producer) or axis 1
    (weight columns, a consumer)."""
    touches = [Touch(f"{prefix}.weight", axis, node)]
    if bias and axis == 0:
        touches.append(Touch(f"{prefix}.bias", 0, node))
    return tuple(touches)


def norm(prefix: str, node: str) -> tuple[Touch, ...]:
    """A LayerNorm's gain and bias, on the residual node `node`."""
    return (Touch(f"{prefix}.weight", 0, node), Touch(f"{prefix}.bias", 0, node))


def conv1d(prefix: str, role: str, node: str | None = None, part: Part | None = None) -> tuple[Touch, ...]:
    """A Conv1D's touches on one space: 'out' (weight columns and bias) or 'in' (weight rows);
    Conv1D stores [in, out], the transpose of a Linear."""
    if role == "in":
        return (Touch(f"{prefix}.weight", 0, node),)
    return (Touch(f"{prefix}.weight", 1, node, part=part), Touch(f"{prefix}.bias", 0, node, part=part))
