"""The spaces a symmetry acts on, as values (docs/method.md §2).

A *space* is a set of units that can be moved together without changing what the model
computes: the FFN intermediate of one layer, the attention features (concatenated heads) of one
layer, or the residual stream. A `Space` carries its name, its width and its group structure
(the heads its units fall in), and declares which *moves* it admits:

- `PERMUTATION`: any reordering of the units (an FFN layer: the nonlinearity acts unit by unit);
- `HEADS` and `WITHIN_HEADS`: heads move as wholes, and the units of a head are reordered inside
  it (`WITHIN_HEADS` alone keeps head j in place); a reordering across heads is not admitted,
  because each head's softmax mixes only its own units;
- `SHARED`: one permutation for every node of the residual stream (each sublayer adds its output
  to the stream, so every node must be in the same order); `PER_NODE`, a permutation per node,
  is never admitted and exists to name what the `sep` ablation does;
- `ORTHOGONAL`: any orthogonal map of the units, where the family allows one (declared as data;
  no mode uses it yet);
- `fixed`: positions inside each head that must stay where they are (rotary pairs), and
  `kv_groups`: key/value groups that move as wholes (grouped-query attention), declared per space.

A mode says which move it makes (`modes.py`); it keeps the function on a space exactly when the
space admits that move. Names are formatted and parsed here and nowhere else: `layer.{i}.ffn`,
`layer.{i}.attention`, `residual` (the stream's one permutation) and `residual.{n}` (node n,
read for statistics and permuted alone by `sep`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Space kinds.
FFN, ATTENTION, RESIDUAL = "ffn", "attention", "residual"
LAYER_KINDS = (FFN, ATTENTION)  # the kinds every layer has one space of
STREAM = RESIDUAL  # the name of the stream's one permutation

# Moves: what a mode does to a space's units.
IDENTITY = "identity"  # nothing moves
PERMUTATION = "permutation"  # any reordering
HEADS = "heads"  # heads as wholes, then a reordering inside each head
WITHIN_HEADS = "within heads"  # a reordering inside each head, heads in place
SHARED = "shared"  # one permutation for every node of the stream
PER_NODE = "per node"  # a different permutation at each node of the stream
ORTHOGONAL = "orthogonal"  # an orthogonal map of the units

# What each kind admits in the families permerge knows (a family may add ORTHOGONAL, fixed units).
ADMITS = {
    FFN: frozenset({IDENTITY, PERMUTATION}),
    ATTENTION: frozenset({IDENTITY, HEADS, WITHIN_HEADS}),
    RESIDUAL: frozenset({IDENTITY, SHARED}),
}


@dataclass(frozen=True)
class Space:
    """One space of a model: what it is, how wide, how its units are grouped, what may move."""

    kind: str
    width: int
    layer: int | None = None  # FFN and attention spaces: their layer
    node: int | None = None  # residual nodes: their index in depth order (None: the whole stream)
    heads: int = 1  # the groups its units fall in (attention: heads of `head_dim` units)
    kv_groups: int | None = None  # grouped-query attention: heads in this many key/value groups (None: one per head)
    fixed: tuple[int, ...] = ()  # unit positions inside each head that must stay in place
    admits: frozenset[str] = frozenset({IDENTITY, PERMUTATION})

    @property
    def name(self) -> str:
        return name_of(self.kind, self.layer, self.node)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def heads_per_group(self) -> int:
        """Query heads that share one key/value head (1 without grouped-query attention)."""
        return self.heads // (self.kv_groups or self.heads)

    def allows(self, move: str) -> bool:
        return move in self.admits


def name_of(kind: str, layer: int | None = None, node: int | None = None) -> str:
    """The one spelling of a space's name (cache entries, reports and exports use it)."""
    if kind in LAYER_KINDS:
        return f"layer.{layer}.{kind}"
    if kind == RESIDUAL:
        return STREAM if node is None else f"{RESIDUAL}.{node}"
    raise ValueError(f"unknown space kind {kind!r}")


def ffn(layer: int) -> str:
    return name_of(FFN, layer)


def attention(layer: int) -> str:
    return name_of(ATTENTION, layer)


def node(index: int) -> str:
    return name_of(RESIDUAL, node=index)


def layer_name(layer: int) -> str:
    """A layer's key in per-layer tables (head assignments, head costs)."""
    return f"layer.{layer}"


def layer_of(key: str) -> int:
    """The layer of a per-layer table's key (`layer_name`'s inverse)."""
    found = re.fullmatch(r"layer\.(\d+)", key)
    if found is None:
        raise ValueError(f"{key!r} is not a layer key")
    return int(found[1])


_NAME = re.compile(r"^(?:layer\.(?P<layer>\d+)\.(?P<kind>ffn|attention)|residual(?:\.(?P<node>\d+))?)$")


@dataclass(frozen=True)
class Name:
    """A parsed space name."""

    kind: str
    layer: int | None = None
    node: int | None = None

    @property
    def depth(self) -> int:
        """Its position in a depth-ordered listing of its kind."""
        return self.layer if self.layer is not None else (self.node if self.node is not None else -1)


def parse(name: str) -> Name:
    """The kind, layer and node of a space name; ValueError for anything else."""
    found = _NAME.match(name)
    if found is None:
        raise ValueError(f"{name!r} is not a space name")
    if found["kind"]:
        return Name(found["kind"], layer=int(found["layer"]))
    return Name(RESIDUAL, node=None if found["node"] is None else int(found["node"]))


def is_node(name: str) -> bool:
    """Whether `name` is one residual node (not the stream's shared permutation)."""
    parsed = _NAME.match(name)
    return bool(parsed and parsed["node"] is not None)


def depth_order(names) -> list[str]:
    """Names sorted by kind (layers' spaces, then residual nodes) and depth."""
    return sorted(names, key=lambda n: (parse(n).kind == RESIDUAL, parse(n).depth, n))


def stream(spaces: dict[str, Space]) -> Space:
    """The residual stream as one space (what a shared permutation acts on)."""
    node = next(s for s in spaces.values() if s.kind == RESIDUAL)
    return Space(RESIDUAL, node.width, admits=node.admits)


def fits(perm, space: Space, move: str) -> bool:
    """Whether `perm` (perm[i] = j) is a move of kind `move` on `space`: what a mode's solver
    must return for the mode to mean what it says. SHARED and PER_NODE are about how the
    nodes' permutations relate, so for one permutation they ask only that it be one."""
    import numpy as np

    perm = np.asarray(perm)
    if perm.shape != (space.width,) or not np.array_equal(np.sort(perm), np.arange(space.width)):
        return False
    if move == IDENTITY:
        return bool(np.array_equal(perm, np.arange(space.width)))
    if move in (PERMUTATION, SHARED, PER_NODE):
        return True
    if move not in (HEADS, WITHIN_HEADS):
        raise ValueError(f"{move!r} is not a permutation move")
    blocks = perm.reshape(space.heads, space.head_dim)
    target = blocks // space.head_dim  # the B head each unit of A's head j comes from
    if not (target == target[:, :1]).all():
        return False  # a head was split across heads
    if move == WITHIN_HEADS and not np.array_equal(target[:, 0], np.arange(space.heads)):
        return False
    if not all((blocks[:, f] % space.head_dim == f).all() for f in space.fixed):
        return False
    # Grouped-query attention: a key/value group moves as a whole (its query heads land in one
    # group), and its heads share one order of features (the group's value features).
    per_group = space.heads_per_group
    groups = target[:, 0].reshape(-1, per_group) // per_group
    inside = (blocks % space.head_dim).reshape(-1, per_group, space.head_dim)
    return bool((groups == groups[:, :1]).all() and (inside == inside[:, :1]).all())


def num_layers(spaces: dict[str, Space]) -> int:
    return sum(1 for s in spaces.values() if s.kind == FFN)


def model_spaces(shape, residual_nodes: int, *, attention_width: int | None = None, kv_groups: int | None = None,
                 stream_admits=(), fixed=()) -> dict[str, Space]:
    """Every space of a model of `shape` (a family's Shape), by name: per layer its FFN and
    attention, then the residual nodes in depth order. `attention_width` is heads × head size
    where that is not the hidden size; `kv_groups` the key/value groups of grouped-query
    attention; `stream_admits` adds what the family allows its stream beyond a shared
    permutation; `fixed` are the positions inside every head that stay put."""
    stream_moves = ADMITS[RESIDUAL] | frozenset(stream_admits)
    width = attention_width or shape.hidden
    spaces = []
    for i in range(shape.layers):
        spaces.append(Space(FFN, shape.ffn, layer=i, admits=ADMITS[FFN]))
        spaces.append(Space(ATTENTION, width, layer=i, heads=shape.heads, kv_groups=kv_groups, fixed=tuple(fixed), admits=ADMITS[ATTENTION]))
    spaces += [Space(RESIDUAL, shape.hidden, node=n, admits=stream_moves) for n in range(residual_nodes)]
    return {s.name: s for s in spaces}


def of_model(family, config) -> dict[str, Space]:
    """The spaces of a checkpoint of `family` with this config (Checkpoint.spaces)."""
    shape = family.shape(config)
    return model_spaces(shape, family.residual_layout.count(shape.layers), attention_width=shape.attention,
                        kv_groups=shape.kv_groups, stream_admits=family.stream_admits, fixed=range(shape.rotary_dims))
