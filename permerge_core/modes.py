"""The attention and residual modes, in one registry (docs/method.md §4).

Matching reads what a mode does from here (`heads`, `residual_source`); the CLI's help, the
app's menus and warnings, the Heads page and the equivalence badge read its label, its
one-line summary and whether it preserves the function. To add a mode, add one `Mode` here
and, if it does something new, teach `matching.compute_matching` that.
"""

from __future__ import annotations

from dataclasses import dataclass

# What an attention mode does with the H×H head structure.
HEADS_NONE = "none"  # no attention permutation
HEADS_KEEP = "keep"  # head j ↔ head j, an inner assignment within each head
HEADS_MATCH = "match"  # Head-Perm: inner assignments, then an outer assignment on the H×H cost
HEADS_IGNORE = "ignore"  # one assignment over all features, across heads

# Which residual correlation a residual mode assigns on.
RESIDUAL_NONE = "none"
RESIDUAL_FIRST = "first"  # the first residual node's correlation
RESIDUAL_LAST = "last"  # the last node's
RESIDUAL_AVERAGE = "all"  # the node-averaged moments, normalised once
RESIDUAL_EACH = "each"  # one assignment per node (not function-preserving)


@dataclass(frozen=True)
class Mode:
    name: str  # as the CLI, the report and the cache spell it
    label: str  # as the app's menus show it
    summary: str  # one line: what it does
    preserves_function: bool  # B′ computes exactly B's function
    heads: str = HEADS_NONE  # attention modes: what happens to the heads
    residual_source: str = RESIDUAL_NONE  # residual modes: which correlation is assigned on
    heads_note: str = ""  # what the Heads page says under this mode ("" if it applies Head-Perm)

    @property
    def matches_heads(self) -> bool:
        """Whether Head-Perm's outer assignment (A head j → B head k) is applied."""
        return self.heads == HEADS_MATCH


def _registry(*modes: Mode) -> dict[str, Mode]:
    return {m.name: m for m in modes}


ATTENTION = _registry(
    Mode("none", "none (vanilla attention)", "attention features stay in place (plain averaging of attention)", True,
         heads_note="Attention mode 'none' does not match heads. The figures show what Head-Perm would choose "
                    "(computed for display, not applied to B′)."),
    Mode("monotonic", "monotonic (head j ↔ head j)", "head j of A stays with head j of B; features are matched inside each head", True,
         heads=HEADS_KEEP,
         heads_note="Attention mode 'monotonic' keeps head j ↔ head j; crosses mark what Head-Perm would have chosen instead."),
    Mode("heads", "heads: Head-Perm (the paper's)", "Head-Perm: an inner assignment per head pair, then an outer assignment on the H×H cost", True,
         heads=HEADS_MATCH),
    Mode("ignore-heads", "ignore-heads ⚠ not function-preserving",
         "one assignment over all attention features, which can move features across heads (an ablation)", False,
         heads=HEADS_IGNORE,
         heads_note="Attention mode 'ignore-heads' does not match heads. The figures show what Head-Perm would choose "
                    "(computed for display, not applied to B′)."),
)

RESIDUAL = _registry(
    Mode("none", "none (identity)", "the residual stream keeps its order", True),
    Mode("first", "first (first residual node)", "one permutation for the stream, matched at the first residual node", True,
         residual_source=RESIDUAL_FIRST),
    Mode("last", "last (last residual node)", "one permutation for the stream, matched at the last residual node", True,
         residual_source=RESIDUAL_LAST),
    Mode("all", "all (averaged over nodes)", "one permutation for the stream, matched on the moments averaged over every node", True,
         residual_source=RESIDUAL_AVERAGE),
    Mode("sep", "sep ⚠ not function-preserving",
         "a separate permutation at every residual node (an ablation: the sublayers' sums no longer line up)", False,
         residual_source=RESIDUAL_EACH),
)

ATTENTION_MODES = tuple(ATTENTION)
RESIDUAL_MODES = tuple(RESIDUAL)
MODES = {"attention": ATTENTION, "residual": RESIDUAL}


def is_function_preserving(attention: str, residual: str) -> bool:
    return ATTENTION[attention].preserves_function and RESIDUAL[residual].preserves_function


def non_preserving(attention: str, residual: str) -> list[str]:
    """The chosen modes that break function preservation, as 'attention ignore-heads'."""
    return [f"{part} {name}" for part, name in (("attention", attention), ("residual", residual)) if not MODES[part][name].preserves_function]


def help_text(part: str) -> str:
    """Every mode of `part` with its summary, for the CLI's --help."""
    return "; ".join(f"{m.name}: {m.summary}" for m in MODES[part].values())
