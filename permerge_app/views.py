"""What the app shows, computed without Streamlit: pure Python over the pipeline's results.

Every function here turns results of `Pipeline` stages (statistics, matchings, curves) into
the small, display-ready values a page needs: a block-averaged overview of a large
correlation matrix, a matrix with B's columns in A's order, edge lists of head graphs,
barrier tables, status lines. It sits beside the app, above the core: `permerge_core` never
imports it. Nothing here imports streamlit or plotly, so all of it can be tested on its own.
What leaves the app as files (the merged model, permutations, report files) is the core's
`export.py`; the command line that reproduces a view is `cli.command_line`.

Conventions are the core's: `perm[i] = j` means A's unit i is matched with B's unit j, so
B′ = B reindexed by perm, and "aligned" correlation matrices are `corr[:, perm]`, whose
diagonal holds the matched correlations.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from permerge_core import spaces as sp
from permerge_core.evaluation import barrier
from permerge_core.matching import HeadMatching, Matching, match_heads, matched_statistics
from permerge_core.modes import APP_VARIANTS, is_function_preserving, non_preserving
from permerge_core.objectives import METRIC_LABELS

__all__ = [
    "VARIANTS", "aligned", "zoom_window", "matched_pair",
    "space_options", "space_label", "space_permutation", "per_layer_matched",
    "display_heads", "head_edges", "all_layer_edges", "head_block",
    "barrier_rows", "curves_csv", "variant_settings", "known_pair_barriers",
    "status_line", "endpoint_losses", "label_balance", "majority_baseline",
    "describe_rows", "equivalence_text", "monotonic_comparison", "pair_barriers",
    "ablation_table", "comparison_rows", "head_assignment_rows",
]


# ---- correlation matrices ------------------------------------------------------------------

def aligned(matrix, perm) -> np.ndarray:
    """B's columns in A's order: `aligned[i, i] = corr[i, perm[i]]`, the matched correlation."""
    return _as_numpy(matrix)[:, np.asarray(perm)]


def zoom_window(dim_rows: int, dim_cols: int, row0: int, col0: int, size: int) -> tuple[slice, slice]:
    """Row and column slices of a size×size window at (row0, col0), clipped to the matrix."""
    size = max(1, min(size, dim_rows, dim_cols))
    r = min(max(0, row0), dim_rows - size)
    c = min(max(0, col0), dim_cols - size)
    return slice(r, r + size), slice(c, c + size)


def matched_pair(matrix, perm) -> tuple[np.ndarray, np.ndarray]:
    """(unaligned diagonal corr[i, i], matched corr[i, perm[i]]) for every unit i of A."""
    m = _as_numpy(matrix)
    idx = np.arange(m.shape[0])
    return m[idx, idx], m[idx, np.asarray(perm)]


def _as_numpy(matrix) -> np.ndarray:
    if hasattr(matrix, "detach"):
        matrix = matrix.detach().cpu().numpy()
    return np.asarray(matrix, dtype=np.float64)


# ---- spaces ---------------------------------------------------------------------------------

def space_label(name: str, family, num_layers: int) -> str:
    """A reader's name for a space: 'layer 2 FFN', 'residual 1: after layer 0 attention'."""
    parsed = sp.parse(name)
    if parsed.kind != sp.RESIDUAL:
        return f"layer {parsed.layer} {'FFN' if parsed.kind == sp.FFN else 'attention'}"
    node = parsed.node
    nodes = family.residual_layout.nodes(num_layers)
    last = " (last)" if node == len(nodes) - 1 else ""
    return f"residual {node}: {nodes[node][1]}{last}"


def space_options(stats, kind: str) -> list[str]:
    """The space names of one kind ('ffn', 'attention' or 'residual'), in depth order."""
    if kind == sp.RESIDUAL:
        return stats.residual_nodes()
    return [sp.name_of(kind, i) for i in range(stats.num_layers)]


def space_permutation(matching: Matching, space: str) -> np.ndarray:
    """The permutation the matching applies to `space` (identity where nothing is aligned)."""
    if sp.is_node(space):
        return np.asarray(matching.residual_perm(sp.parse(space).node))
    return np.asarray(matching.permutations[space])


def per_layer_matched(stats, matching: Matching, kind: str, family) -> list[dict]:
    """Mean correlation of matched units, before (diagonal) and after alignment, per space.

    One row per space of `kind`, in depth order: {space, label, index, before, after,
    before_median, after_median}. This is what the per-layer line of the Correlations page
    draws; `matched_statistics` of the core does the arithmetic.
    """
    # matched_statistics builds every space's correlation; keep its result with the matching
    # (the pipeline memoises matchings), so page reruns do not redo it.
    memo = matching.__dict__.setdefault("_views_memo", {})
    if "matched_statistics" not in memo:
        memo["matched_statistics"] = matched_statistics(stats, matching)
    summary = memo["matched_statistics"]
    rows = []
    for k, name in enumerate(space_options(stats, kind)):
        s = summary[name]
        rows.append({
            "space": name, "label": space_label(name, family, stats.num_layers), "index": k,
            "before": s["before"]["mean"], "after": s["after"]["mean"],
            "before_median": s["before"]["median"], "after_median": s["after"]["median"],
        })
    return rows


# ---- heads ----------------------------------------------------------------------------------

def display_heads(stats, matching: Matching, num_heads: int, layer: int) -> tuple[HeadMatching, bool]:
    """The head matching to draw for `layer`, and whether it is the one that was applied.

    With attention `heads` or `monotonic` it is the matching's own. With `none` or
    `ignore-heads` no head matching was applied; Head-Perm is then computed for display
    only (flag False), so the page can show what it would have chosen.
    """
    if layer in matching.heads:
        return matching.heads[layer], True
    memo = matching.__dict__.setdefault("_views_memo", {})
    key = ("display_heads", layer)
    if key not in memo:
        corr = _as_numpy(stats.spaces[sp.attention(layer)].correlation())
        if matching.settings.get("absolute"):
            corr = np.abs(corr)
        memo[key] = match_heads(corr, num_heads)
    return memo[key], False


def head_edges(heads: HeadMatching) -> list[dict]:
    """One edge per assigned pair: A head j → B head k, its cost and whether it moves a head.

    `headperm` is the pair Head-Perm would choose for A head j (differs from `b` only under
    `monotonic`); `rank` is where the chosen cost ranks in A head j's row (0 = best).
    """
    cost = np.asarray(heads.cost)
    out = []
    for j, k in enumerate(np.asarray(heads.assignment)):
        row = cost[j]
        out.append({
            "a": j, "b": int(k), "cost": float(row[k]), "identity": int(k) == j,
            "headperm": int(heads.head_perm_assignment[j]), "rank": int((row > row[k]).sum()),
        })
    return out


def all_layer_edges(heads_by_layer: dict[int, HeadMatching]) -> list[dict]:
    """Edges of every layer's head graph, each tagged with its layer (the layered overview)."""
    return [{"layer": layer, **e} for layer in sorted(heads_by_layer) for e in head_edges(heads_by_layer[layer])]


def head_block(corr, num_heads: int, j: int, k: int, inner: np.ndarray | None = None) -> dict:
    """The d_k×d_k correlation block of A head j × B head k, raw and in the inner order.

    `inner[j, k]` (from the head matching) is the within-head permutation for that pair; with
    it the block's columns are reordered so that matched features sit on the diagonal.
    """
    m = _as_numpy(corr)
    dk = m.shape[0] // num_heads
    block = m[j * dk:(j + 1) * dk, k * dk:(k + 1) * dk]
    perm = np.asarray(inner[j, k]) if inner is not None else np.arange(dk)
    return {"dk": dk, "raw": block, "aligned": block[:, perm], "perm": perm, "sum": float(block[np.arange(dk), perm].sum())}


def monotonic_comparison(heads: HeadMatching) -> list[dict]:
    """Per A head: the B head the applied assignment chose and the one Head-Perm chooses,
    with both costs. Under `monotonic` the applied one is the identity; the gap in summed
    cost is what Head-Perm's outer assignment buys."""
    cost = np.asarray(heads.cost)
    rows = []
    for j, (k, h) in enumerate(zip(np.asarray(heads.assignment), np.asarray(heads.head_perm_assignment))):
        rows.append({"A head": j, "applied B head": int(k), "applied cost": float(cost[j, k]),
                     "Head-Perm B head": int(h), "Head-Perm cost": float(cost[j, h])})
    return rows


# ---- loss paths -----------------------------------------------------------------------------

# Component variants of the paper's comparisons (modes.VARIANTS): name → merge settings.
VARIANTS: dict[str, dict] = APP_VARIANTS


def variant_settings(settings, name: str):
    """`settings` with the merge fields of variant `name` (data, tokens and λ grid kept)."""
    return replace(settings, **VARIANTS[name])


def barrier_rows(curves: dict[str, list[dict]], preserving: dict[str, bool] | None = None) -> list[dict]:
    """One row per curve: barrier (nats), where the path peaks, endpoint losses.

    barrier = max_λ L(λ) − ½(L(λ=0) + L(λ=1)), the paper's definition; incomplete curves
    (fewer points than their grid) are skipped by the caller, not here.
    """
    rows = []
    for name, points in curves.items():
        if len(points) < 2:
            continue
        losses = [p["loss"] for p in points]
        peak = int(np.argmax(losses))
        row = {
            "curve": name,
            "barrier (nats)": barrier(losses),
            "peak λ": points[peak]["lambda"],
            "peak loss (nats)": losses[peak],
            "loss at λ=0 (nats)": losses[0],
            "loss at λ=1 (nats)": losses[-1],
        }
        for metric in metric_names({name: points}):
            row[f"min {METRIC_LABELS.get(metric, metric)}"] = min(p.get(metric, float("nan")) for p in points)
        if preserving is not None:
            row["function-preserving"] = preserving.get(name, True)
        rows.append(row)
    return rows


def metric_names(curves: dict[str, list[dict]]) -> list[str]:
    """The metrics the curves carry besides loss, in a stable order (accuracy first)."""
    found = {k for points in curves.values() for p in points for k in p if k not in ("lambda", "loss")}
    return [m for m in METRIC_LABELS if m in found] + sorted(found - set(METRIC_LABELS))


def curves_csv(curves: dict[str, list[dict]]) -> str:
    """Long-format CSV of every curve: curve,lambda,loss and one column per metric (loss in nats)."""
    metrics = metric_names(curves) or ["accuracy"]
    lines = [",".join(["curve", "lambda", "loss", *metrics])]
    for name, points in curves.items():
        for p in points:
            values = [f"{p.get(m, float('nan')):.6f}" for m in metrics]
            lines.append(",".join([_csv_field(name), f"{p['lambda']:.6g}", f"{p['loss']:.6f}", *values]))
    return "\n".join(lines) + "\n"


def _csv_field(text: str) -> str:
    return f'"{text}"' if any(c in text for c in ',"\n') else text


# ---- seeds ----------------------------------------------------------------------------------

def pair_barriers(pipeline, settings) -> dict[str, float]:
    """Vanilla and permuted barriers (nats) of one pair: one cell of each seed matrix."""
    return {which: barrier([p["loss"] for p in pipeline.curve(settings, which)]) for which in ("vanilla", "permuted")}


def known_pair_barriers(pipeline, settings) -> dict[str, float] | None:
    """`pair_barriers` if both of the pair's curves are computed or on disk already (they are
    read, not computed), else None: the cells a seed matrix can show without any work."""
    status = pipeline.stage_status(settings)
    if all(status[path] in ("computed", "cached") for path in ("vanilla path", "permuted path")):
        return pair_barriers(pipeline, settings)
    return None


# ---- status -----------------------------------------------------------------------------------

_SYMBOL = {"computed": "✓", "cached": "⛁", "stale": "↻", "missing": "○"}


def status_line(status: dict[str, str]) -> str:
    """A compact one-line status: '✓ statistics · ⛁ matching · ○ vanilla path …'.

    ✓ computed in this server, ⛁ on disk (instant), ↻ computed only for other settings
    (stale: changing a setting invalidated it), ○ not computed yet.
    """
    return " · ".join(f"{_SYMBOL[v]} {k}" for k, v in status.items())


# ---- models -----------------------------------------------------------------------------------

def endpoint_losses(pipeline, settings) -> dict[str, float]:
    """L(A), L(B) and L(B′) on the evaluation set, in nats, with their accuracies.

    Uses two-point λ grids: λ=1 is exactly A and λ=0 exactly B (vanilla) or B′ (permuted), and
    the masks do not depend on the grid, so these equal the endpoints of the full curves at
    the cost of three evaluations (memoised and disk-cached like any curve).
    """
    two = replace(settings, lambdas=2)
    vanilla = pipeline.curve(two, "vanilla")
    permuted = pipeline.curve(two, "permuted")
    return {
        "a": vanilla[-1]["loss"], "b": vanilla[0]["loss"], "b_prime": permuted[0]["loss"],
        "a_accuracy": vanilla[-1].get("accuracy"), "b_accuracy": vanilla[0].get("accuracy"),
        "b_prime_accuracy": permuted[0].get("accuracy"),
    }


def label_balance(data) -> list[dict]:
    """Examples per label of a `LabelledData` (classification), with their share."""
    if data.label_names is None and any(not float(y).is_integer() for y in data.labels):
        return [{"label": "(regression target)", "examples": len(data.labels), "share": 1.0}]
    counts: dict[int, int] = {}
    for y in data.labels:
        counts[int(y)] = counts.get(int(y), 0) + 1
    names = data.label_names or []
    return [
        {"label": names[k] if k < len(names) else str(k), "examples": n, "share": round(n / len(data.labels), 4)}
        for k, n in sorted(counts.items())
    ]


def majority_baseline(data) -> float:
    """Accuracy of always predicting the most frequent label."""
    return max(row["examples"] for row in label_balance(data)) / len(data.labels)


DESCRIBE_FIELDS = [
    ("family", "family"), ("architecture", "architecture"), ("head", "head"), ("layers", "layers"), ("hidden", "hidden size"),
    ("heads", "attention heads"), ("ffn", "FFN size"), ("positions", "positions"), ("vocab", "vocabulary"), ("parameters", "parameters"),
    ("stored_dtype", "stored dtype"), ("source", "source"),
]


def describe_rows(a: dict | None, b: dict | None) -> list[dict]:
    """Side-by-side rows of two `Checkpoint.describe()` dicts, with whether they agree."""
    rows = []
    for key, label in DESCRIBE_FIELDS:
        va = a.get(key) if a else None
        vb = b.get(key) if b else None
        same = "" if key in ("source",) or a is None or b is None else ("✓" if va == vb else "✗ differs")
        fmt = lambda v: f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else ("—" if v is None else str(v))  # noqa: E731
        rows.append({"property": label, "A": fmt(va), "B": fmt(vb), "same": same})
    return rows


def equivalence_text(max_diff: float, attention: str, residual: str) -> tuple[bool, str]:
    """(ok, message) for the functional-equivalence badge."""
    if is_function_preserving(attention, residual):
        ok = max_diff < 1e-3
        verdict = "B′ computes the same function as B" if ok else "B′ does NOT compute the same function as B (a bug: please report it)"
        return ok, f"{verdict}: max |Δlogit| = {max_diff:.1e}"
    modes = non_preserving(attention, residual)
    return False, (
        f"{' and '.join(modes)} is not function-preserving: B′ is a different model from B "
        f"(max |Δlogit| = {max_diff:.2g}). Its loss path is an ablation, not a merge of B."
    )


# ---- stability ---------------------------------------------------------------------------------

def ablation_table(result: dict) -> list[dict]:
    """One row per budget of an ablation (`ablation.run_ablation`): barrier spread, agreement
    with the largest budget by kind of space, head agreement, time."""
    rows = []
    for r in result["rows"]:
        row = {"tokens": r["budget"], "disjoint resamples": r["disjoint"], "barrier mean (nats)": r["barrier"]["mean"],
               "barrier sd (nats)": r["barrier"]["std"]}
        row.update({f"{kind} alike": value for kind, value in r["agreement_by_kind"].items()})
        if r["head_agreement_mean"] is not None:
            row["heads alike"] = r["head_agreement_mean"]
        row["seconds to match"] = r["seconds"]
        rows.append(row)
    return rows


def comparison_rows(comparison: dict, family, num_layers: int) -> list[dict]:
    """Per space: the fraction of A's units the activation and the weight matching pair with
    the same B unit (`comparison.compare_matchers`)."""
    return [{"space": space_label(space, family, num_layers) if space != sp.STREAM else "residual stream", "units alike": value}
            for space, value in comparison["agreement"].items()]


def head_assignment_rows(comparison: dict) -> list[dict]:
    """Per layer and A head: the B head each matcher assigns, and whether they agree."""
    rows = []
    for layer, heads in comparison["head_assignment"].items():
        for j, (k_act, k_w) in enumerate(zip(heads["activations"], heads["weights"])):
            rows.append({"layer": sp.layer_of(layer), "A head": j, "B head (activations)": k_act, "B head (weights)": k_w,
                         "alike": "✓" if k_act == k_w else "✗"})
    return rows
