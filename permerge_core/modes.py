"""Attention modes, residual modes, matchers and the paper's variants: one registry each (docs/method.md §4).

A mode is data plus its own solver. It names the *move* it makes on its spaces (`spaces.py`)
and so whether it keeps B's function: exactly when every space it acts on admits that move
(ignore-heads reorders features across heads, which an attention space does not admit; sep
permutes each residual node apart, which the stream does not admit). The CLI's help, the app's
menus and warnings, the Heads page and the equivalence badge read a mode's label, summary and
`preserves_function`; matching (`matching.py`, `weight_matching.py`) calls its `solve`.

To add a mode, add one entry below. To add a matcher, add one `Matcher`. Nothing else needs to
know its name. This module imports neither torch nor scipy (the CLI's `--help` reads it): a
solver imports what it uses when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import spaces as sp

# ---- what a solver is given ----------------------------------------------------------------


@dataclass
class Problem:
    """One space to solve: the space, its score matrix (computed on demand, [A units, B units],
    higher is better) and `cached(key, compute)`, which remembers a sub-result of this space's
    score across modes. The key names the computation, so modes that share one share its
    result: "assign" is the plain assignment of the score, "heads" Head-Perm's per-head-pair
    assignments (monotonic and Head-Perm both use them). A solver that computes anything else
    uses a key of its own."""

    space: sp.Space
    score: Callable[[], "object"]
    cached: Callable[[str, Callable[[], object]], object] = lambda key, compute: compute()


@dataclass
class Solution:
    """A solver's answer: the permutation (perm[i] = j, A's unit i ↔ B's unit j) and, for
    head-aware modes, the Head-Perm details the Heads page draws (`matching.HeadMatching`)."""

    perm: "object"
    heads: "object | None" = None


def _identity(problem: Problem) -> Solution:
    from .matching import identity

    return Solution(identity(problem.space.width))


def solve_permutation(problem: Problem) -> Solution:
    """Any reordering of the units: one exact linear assignment (an FFN layer, a residual node)."""
    from .assignment import assign

    return Solution(problem.cached("assign", lambda: assign(problem.score())))


def _head_perm(match_heads: bool) -> Callable[[Problem], Solution]:
    def solve(problem: Problem) -> Solution:
        from .matching import heads_for_mode, solve_heads

        if problem.space.heads_per_group != 1:
            raise NotImplementedError("Head-Perm does not yet keep key/value groups together (grouped-query attention)")
        solved = problem.cached("heads", lambda: solve_heads(problem.score(), problem.space.heads, problem.space.fixed))
        found = heads_for_mode(solved, match_heads)
        return Solution(found.perm, found)

    return solve


# ---- modes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    name: str  # as the CLI, the report and the cache spell it
    label: str  # as the app's menus show it
    summary: str  # one line: what it does
    kind: str  # the spaces it acts on (spaces.ATTENTION or spaces.RESIDUAL)
    move: str  # what it does to them (a spaces move)
    solve: Callable[[Problem], Solution] = _identity  # one space's permutation
    # Residual modes that make one shared permutation: the correlation it is solved on
    # (Statistics → [d, d] tensor); the weight matcher solves on the weights instead.
    score: Callable[[object], object] | None = None
    heads_note: str = ""  # what the Heads page says under this mode ("" if it applies Head-Perm)

    @property
    def preserves_function(self) -> bool:
        """Whether B′ computes exactly B's function: the move is one every space of its kind
        admits (spaces.ADMITS)."""
        return self.move in sp.ADMITS[self.kind]

    @property
    def keeps_heads(self) -> bool:
        """Whether head j of A stays with head j of B while features move inside it."""
        return self.move == sp.WITHIN_HEADS


def _node_correlation(pick: Callable[[list], str]):
    def score(stats):
        return stats.spaces[pick(stats.residual_nodes())].correlation()

    return score


def _averaged_correlation(stats):
    """The cross-covariances (and variances) of every node averaged, then normalised once."""
    from .statistics import correlation_from_moments

    moments = [stats.spaces[n].moments() for n in stats.residual_nodes()]
    cov, var_a, var_b = (sum(m[k] for m in moments) / len(moments) for k in range(3))
    return correlation_from_moments(cov, var_a, var_b)


def _registry(*modes: Mode) -> dict[str, Mode]:
    return {m.name: m for m in modes}


ATTENTION = _registry(
    Mode("none", "none (vanilla attention)", "attention features stay in place (plain averaging of attention)",
         sp.ATTENTION, sp.IDENTITY,
         heads_note="Attention mode 'none' does not match heads. The figures show what Head-Perm would choose "
                    "(computed for display, not applied to B′)."),
    Mode("monotonic", "monotonic (head j ↔ head j)", "head j of A stays with head j of B; features are matched inside each head",
         sp.ATTENTION, sp.WITHIN_HEADS, _head_perm(match_heads=False),
         heads_note="Attention mode 'monotonic' keeps head j ↔ head j; crosses mark what Head-Perm would have chosen instead."),
    Mode("heads", "heads: Head-Perm (the paper's)", "Head-Perm: an inner assignment per head pair, then an outer assignment on the H×H cost",
         sp.ATTENTION, sp.HEADS, _head_perm(match_heads=True)),
    Mode("ignore-heads", "ignore-heads ⚠ not function-preserving",
         "one assignment over all attention features, which can move features across heads (an ablation)",
         sp.ATTENTION, sp.PERMUTATION, solve_permutation,
         heads_note="Attention mode 'ignore-heads' does not match heads. The figures show what Head-Perm would choose "
                    "(computed for display, not applied to B′)."),
)

RESIDUAL = _registry(
    Mode("none", "none (identity)", "the residual stream keeps its order", sp.RESIDUAL, sp.IDENTITY),
    Mode("first", "first (first residual node)", "one permutation for the stream, matched at the first residual node",
         sp.RESIDUAL, sp.SHARED, solve_permutation, score=_node_correlation(lambda nodes: nodes[0])),
    Mode("last", "last (last residual node)", "one permutation for the stream, matched at the last residual node",
         sp.RESIDUAL, sp.SHARED, solve_permutation, score=_node_correlation(lambda nodes: nodes[-1])),
    Mode("all", "all (averaged over nodes)", "one permutation for the stream, matched on the moments averaged over every node",
         sp.RESIDUAL, sp.SHARED, solve_permutation, score=_averaged_correlation),
    Mode("sep", "sep ⚠ not function-preserving",
         "a separate permutation at every residual node (an ablation: the sublayers' sums no longer line up)",
         sp.RESIDUAL, sp.PER_NODE, solve_permutation),
)

ATTENTION_MODES = tuple(ATTENTION)
RESIDUAL_MODES = tuple(RESIDUAL)
MODES = {"attention": ATTENTION, "residual": RESIDUAL}


def solvers(spaces: dict[str, sp.Space], settings) -> dict[str, tuple[sp.Space, Callable[[Problem], Solution]]]:
    """Every space `settings` moves, by name, with the solver that moves it, in the order of
    `spaces` (each layer's, then the residual stream's): the FFN when `ffn` is on, attention
    unless its mode moves nothing, and the stream as one space (`spaces.STREAM`) when the
    residual mode shares one permutation, or each node when it gives each its own. Both
    matchers solve exactly these; every other space stays in place."""
    attention, residual = ATTENTION[settings.attention], RESIDUAL[settings.residual]
    out = {}
    for name, space in spaces.items():
        if space.kind == sp.FFN and settings.ffn:
            out[name] = (space, solve_permutation)
        elif space.kind == sp.ATTENTION and attention.move != sp.IDENTITY:
            out[name] = (space, attention.solve)
        elif space.kind == sp.RESIDUAL and residual.move == sp.PER_NODE:
            out[name] = (space, residual.solve)
    if residual.move == sp.SHARED:
        out[sp.STREAM] = (sp.stream(spaces), residual.solve)
    return out


def is_function_preserving(attention: str, residual: str) -> bool:
    return ATTENTION[attention].preserves_function and RESIDUAL[residual].preserves_function


def non_preserving(attention: str, residual: str) -> list[str]:
    """The chosen modes that break function preservation, as 'attention ignore-heads'."""
    return [f"{part} {name}" for part, name in (("attention", attention), ("residual", residual)) if not MODES[part][name].preserves_function]


# Attention moves that keep every position of a head where it is inside some head (Head-Perm
# solves the inner assignments over the movable positions only, matching.solve_heads).
KEEPS_POSITIONS = frozenset({sp.IDENTITY, sp.HEADS, sp.WITHIN_HEADS})


def refuse_moving_fixed(attention: str, spaces: dict[str, sp.Space], family: str) -> None:
    """Refuse an attention mode whose move would displace positions the attention spaces keep
    fixed (rotary features): the model it made would not be an ablation of the alignment but
    another function, at every λ. Both matchers call this before solving anything."""
    from .errors import SettingsError

    mode = ATTENTION[attention]
    fixed = next((s.fixed for s in spaces.values() if s.kind == sp.ATTENTION and s.fixed), ())
    if fixed and mode.move not in KEEPS_POSITIONS:
        keeping = ", ".join(m.name for m in ATTENTION.values() if m.move in KEEPS_POSITIONS)
        raise SettingsError(
            f"Attention mode {attention!r} reorders features across heads, which would move the rotary features "
            f"{fixed[0]}–{fixed[-1]} of every attention head of {family} (rotary embeddings fix them in place).",
            f"Use attention mode {keeping}: they keep those features in place.",
        )


def help_text(part: str) -> str:
    """Every mode of `part` with its summary, for the CLI's --help."""
    return "; ".join(f"{m.name}: {m.summary}" for m in MODES[part].values())


# ---- matchers --------------------------------------------------------------------------------


def _match_activations(pair, settings):
    from .matching import compute_matching

    stats = pair.statistics(settings)
    pair.progress("matching", 0.0, "solving assignments")
    return compute_matching(stats, pair.a.spaces, settings, family=pair.a.family.name)


def _match_weights(pair, settings):
    from .weight_matching import match_weights

    pair.progress("matching", 0.0, "weight matching (no data)")
    return match_weights(pair.a.model, pair.b.model, pair.b.family, pair.b.head, pair.a.spaces, settings, progress=pair.progress)


@dataclass(frozen=True)
class Matcher:
    """How B's units are matched to A's. `match(pair, settings)` gets the pipeline (its models
    `a` and `b`, `statistics(settings)` and `progress`) and returns a `matching.Matching`."""

    name: str
    label: str  # as the app's menus show it
    summary: str  # for --help
    match: Callable[[object, object], object]
    reads_text: bool  # needs the activation statistics of the matching text
    compares: bool = False  # also computes the other matcher beside it (comparison.py)


MATCHERS = _registry(
    Matcher("activations", "activations (the paper's)",
            "correlation of both models' activations on the matching text (the paper's method)", _match_activations, True),
    Matcher("weights", "weights (no data)",
            "inner products of the weights, no data read (weight matching, as in git re-basin)", _match_weights, False),
    Matcher("both", "both (compare)",
            "apply the activation matching and compare it with the weight matching (agreement, both barriers)",
            _match_activations, True, compares=True),
)


# ---- the paper's variants --------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A named choice of the merge components. `paper` places it in the paper's tables as
    (table, row): the grid's `--variants paper-attention|paper-residual` lists those rows."""

    name: str  # as the app and reports name it
    ffn: bool
    attention: str
    residual: str
    paper: tuple[str, str] | None = None
    in_app: bool = True  # offered as an extra curve on the Loss path page

    @property
    def merge_fields(self) -> dict:
        return {"ffn": self.ffn, "attention": self.attention, "residual": self.residual}


PAPER_ATTENTION, PAPER_RESIDUAL = "paper-attention", "paper-residual"
PAPER_TABLES = (PAPER_ATTENTION, PAPER_RESIDUAL)

# The paper's attention table merges the FFN in every row and leaves the residual stream alone;
# its residual table permutes the residual stream only ("identity" permutes nothing).
VARIANTS = _registry(
    Variant("FFN only", True, "none", "none", (PAPER_ATTENTION, "vanilla attention")),
    Variant("attention only (Head-Perm)", False, "heads", "none"),
    Variant("FFN + monotonic attention", True, "monotonic", "none", (PAPER_ATTENTION, "monotonic")),
    Variant("FFN + ignore-heads attention", True, "ignore-heads", "none", (PAPER_ATTENTION, "ignore-heads")),
    Variant("FFN + attention (Head-Perm)", True, "heads", "none", (PAPER_ATTENTION, "Head-Perm")),
    Variant("FFN + attention + residual first", True, "heads", "first"),
    Variant("FFN + attention + residual last", True, "heads", "last"),
    Variant("FFN + attention + residual all", True, "heads", "all"),
    Variant("FFN + attention + residual sep", True, "heads", "sep"),
    Variant("nothing permuted", False, "none", "none", (PAPER_RESIDUAL, "identity"), in_app=False),  # the vanilla curve
    Variant("residual first only", False, "none", "first", (PAPER_RESIDUAL, "first")),
    Variant("residual last only", False, "none", "last", (PAPER_RESIDUAL, "last"), in_app=False),
    Variant("residual all only", False, "none", "all", (PAPER_RESIDUAL, "all")),
    Variant("residual sep only", False, "none", "sep", (PAPER_RESIDUAL, "sep"), in_app=False),
)

APP_VARIANTS = {name: v.merge_fields for name, v in VARIANTS.items() if v.in_app}


def paper_table(table: str) -> list[tuple[str, dict]]:
    """The rows of one of the paper's tables, in the paper's order: (row label, merge fields)."""
    return [(v.paper[1], v.merge_fields) for v in VARIANTS.values() if v.paper and v.paper[0] == table]
