"""The loss plane through A, B and B′: coordinates, grid, fill order, the loop that fills it,
outputs (docs/method.md §12).

The loss path is one line through weight space; the plane through the three models shows
both lines at once, the vanilla one A–B and the permuted one A–B′, and the landscape
between them. Coordinates:

    origin A;  u = B′ − A (B′ at (1, 0));  v = the part of B − A orthogonal to u,
    so that B = A + x_B·u + 1·v sits at (x_B, 1);  θ(x, y) = A + x·u + y·v over every tensor.

Substituting u and v, θ(x, y) = α·A + β·B′ + γ·B with α = 1 − x − y + y·x_B, β = x − y·x_B,
γ = y (weights summing to 1), so a point is one weighted sum of the three models, formed in
the interpolator's working model like θ(λ): neither u, v nor B′ is ever stored. The row
y = 0 is the permuted path, θ(x, 0) = θ(λ = 1 − x).

The grid is filled coarse to fine (`fill_order`): first a 3×3 frame, then every refinement,
so a plane stopped half way already spans the whole extent.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .errors import PermergeError
from .memo import JSON

DEFAULT_GRID = 15  # points per axis; with DEFAULT_EVAL_TOKENS, the bundled pair's plane fits in 60 s (docs/performance.md)
DEFAULT_MARGIN = 0.2  # how far past the three models the plane extends, in plane units (with 15 points: a step of 0.1)
DEFAULT_EVAL_TOKENS = 4096  # the plane's evaluation budget: N² + 2 evaluations instead of a path's N
MAX_GRID = 41

# Below these, the three models span no plane: B′ = A (|u| ≈ 0), or B on the line A–B′ (|v| ≈ 0).
_SAME_POINT = 1e-7  # |u| relative to |A|
_ON_LINE = 1e-6  # |v| relative to |B − A|


@dataclass(frozen=True)
class Basis:
    """Where B sits in the plane, and the lengths that turn plane units into weight distances."""

    x_b: float  # B's x coordinate: ⟨B − A, u⟩ / |u|²
    norm_u: float  # |u| = |B′ − A|, the distance A → B′
    norm_v: float  # |v|, B's distance from the line through A and B′
    distance_b: float  # |B − A|, the distance A → B
    angle_degrees: float  # between B − A and u

    def to_json(self) -> dict:
        return asdict(self)


@torch.no_grad()
def basis(model_a: torch.nn.Module, model_b: torch.nn.Module, model_b_prime: torch.nn.Module) -> Basis:
    """The plane's basis from the three models' parameters (float64 sums over every tensor).

    PermergeError when the three models span no plane: B′ = A (B is A, or a permuted copy of
    it) or B on the line through A and B′ (the alignment moved nothing: B′ = B).

    The sums run over B′'s parameters, B′ being the interpolator's working model, which holds a
    head of its own where either end does (`interpolation.working_model`); A and B are read by
    name, a tied head through its alias."""
    params_p = dict(model_b_prime.named_parameters())
    state_a = model_a.state_dict(keep_vars=True)
    params_a = {name: state_a[name] for name in params_p}
    params_b = model_b.state_dict(keep_vars=True)
    uu = uw = ww = aa = 0.0
    for name, a in params_a.items():
        a64 = a.detach().double()
        u = params_p[name].detach().double() - a64
        w = params_b[name].detach().double() - a64
        uu += float(u.square().sum())
        uw += float((u * w).sum())
        ww += float(w.square().sum())
        aa += float(a64.square().sum())
    norm_u, distance_b = math.sqrt(uu), math.sqrt(ww)
    if norm_u <= _SAME_POINT * max(math.sqrt(aa), 1.0):
        raise PermergeError(
            f"B aligned to A is A itself (|B′ − A| = {norm_u:.2g}), so A, B and B′ span no plane"
            + (": A and B are the same model." if distance_b <= _SAME_POINT * max(math.sqrt(aa), 1.0) else
               ": B is a permuted copy of A."),
            "Choose two checkpoints trained separately (for example two seeds).",
        )
    x_b = uw / uu
    vv = 0.0  # |v|² in a second pass: ww − uw²/uu would cancel when v is small
    for name, a in params_a.items():
        a64 = a.detach().double()
        v = (params_b[name].detach().double() - a64) - x_b * (params_p[name].detach().double() - a64)
        vv += float(v.square().sum())
    norm_v = math.sqrt(vv)
    if norm_v <= _ON_LINE * distance_b:
        raise PermergeError(
            f"B lies on the line through A and B′ (its distance from that line is {norm_v:.2g}, against |B − A| = {distance_b:.4g}): "
            "the alignment left B as it was, so A, B and B′ span no plane.",
            "Use merge settings that align something (FFN, attention or residual), or another pair of checkpoints.",
        )
    cosine = max(-1.0, min(1.0, uw / (norm_u * distance_b)))
    return Basis(x_b=x_b, norm_u=norm_u, norm_v=norm_v, distance_b=distance_b, angle_degrees=math.degrees(math.acos(cosine)))


def coefficients(x: float, y: float, x_b: float) -> tuple[float, float, float]:
    """(α, β, γ) with θ(x, y) = α·A + β·B′ + γ·B. At y = 0 this is exactly (1 − x, x, 0),
    so the row y = 0 forms the permuted path's θ(λ = 1 − x)."""
    return 1.0 - x - y + y * x_b, x - y * x_b, y


def axes(b: Basis, grid: int, margin: float) -> tuple[list[float], list[float]]:
    """`grid` evenly spaced x and y covering A (0, 0), B′ (1, 0) and B (x_B, 1), `margin`
    plane units past them on every side."""
    check_grid(grid, margin)
    x_lo, x_hi = min(0.0, b.x_b) - margin, max(1.0, b.x_b) + margin
    y_lo, y_hi = -margin, 1.0 + margin
    return _linspace(x_lo, x_hi, grid, (0.0, 1.0, b.x_b)), _linspace(y_lo, y_hi, grid, (0.0, 1.0))


def _linspace(lo: float, hi: float, n: int, marks: tuple[float, ...]) -> list[float]:
    """n evenly spaced values; one that misses a model's coordinate (`marks`) by rounding
    alone is set to it, so that the models lie exactly on the grid where its spacing allows
    (with the defaults, A and B′ do whenever 0 ≤ x_B ≤ 1: the step is 0.1)."""
    values = [lo + (hi - lo) * k / (n - 1) for k in range(n)]
    for mark in marks:
        values = [mark if abs(v - mark) <= 1e-9 * (hi - lo) else v for v in values]
    return values


def check_grid(grid: int, margin: float) -> None:
    from .errors import SettingsError

    if not 2 <= grid <= MAX_GRID:
        raise SettingsError(f"A plane grid of {grid} points per axis is out of range.", f"Use 2 to {MAX_GRID} (default {DEFAULT_GRID}).")
    if not (margin >= 0 and math.isfinite(margin)):
        raise SettingsError(f"The plane margin must be zero or positive, got {margin}.", f"Use for example {DEFAULT_MARGIN}.")


def fill_order(nx: int, ny: int) -> list[tuple[int, int]]:
    """Every (i, j) cell of an nx × ny grid once, coarse to fine: each pass halves the stride
    and adds the cells new at that stride (the last row and column always belong to a pass)."""
    stride = 1
    while stride * 2 < max(nx, ny):
        stride *= 2
    order, seen = [], set()
    while stride >= 1:
        xs = sorted(set(range(0, nx, stride)) | {nx - 1})
        ys = sorted(set(range(0, ny, stride)) | {ny - 1})
        for j in ys:
            for i in xs:
                if (i, j) not in seen:
                    seen.add((i, j))
                    order.append((i, j))
        stride //= 2
    return order


def assemble(xs: list[float], ys: list[float], cells: dict, b: Basis, points: dict | None) -> dict:
    """The plane as plane.json holds it (less settings and models): `grid[j][i]` is the loss
    at (xs[i], ys[j]), None where not computed yet; other metrics in `metric_grids`."""
    metrics = sorted({k for v in cells.values() for k in v if k != "loss"})
    grid = [[cells[(i, j)]["loss"] if (i, j) in cells else None for i in range(len(xs))] for j in range(len(ys))]
    metric_grids = {m: [[cells[(i, j)].get(m) if (i, j) in cells else None for i in range(len(xs))] for j in range(len(ys))] for m in metrics}
    return {
        "x": list(xs), "y": list(ys), "grid": grid, "metric_grids": metric_grids,
        "computed": len(cells), "total": len(xs) * len(ys), "complete": len(cells) == len(xs) * len(ys) and points is not None,
        "points": points, "basis": b.to_json(),
        "coordinates": "θ(x, y) = A + x·u + y·v; u = B′ − A; v = the part of B − A orthogonal to u, B = A + x_B·u + v",
    }


def point_coordinates(b: Basis) -> dict:
    return {"a": (0.0, 0.0), "b_prime": (1.0, 0.0), "b": (b.x_b, 1.0)}


def path_coordinates(which: str, lam: float, x_b: float) -> tuple[float, float]:
    """Where θ(λ) of a loss path lies in the plane: (1 − λ)·(x, y) of its far end (B′ at
    (1, 0) for the permuted path, B at (x_B, 1) for the vanilla one)."""
    x, y = (1.0, 0.0) if which == "permuted" else (x_b, 1.0)
    return (1.0 - lam) * x, (1.0 - lam) * y


def plane_csv(plane: dict) -> str:
    """Long-format CSV: one row per computed cell (point empty) and one per model (a, b, b_prime)."""
    metrics = sorted(plane.get("metric_grids", {}))
    lines = [",".join(["point", "x", "y", "loss", *metrics])]
    for j, y in enumerate(plane["y"]):
        for i, x in enumerate(plane["x"]):
            loss = plane["grid"][j][i]
            if loss is not None:
                values = [_number(plane["metric_grids"][m][j][i]) for m in metrics]
                lines.append(",".join(["", f"{x:.6g}", f"{y:.6g}", f"{loss:.6f}", *values]))
    for name, point in (plane.get("points") or {}).items():
        values = [_number(point.get(m)) for m in metrics]
        lines.append(",".join([name, f"{point['x']:.6g}", f"{point['y']:.6g}", f"{point['loss']:.6f}", *values]))
    return "\n".join(lines) + "\n"


def _number(value) -> str:
    return "" if value is None else f"{value:.6f}"


def colour_values(plane: dict, floor: float = 0.01) -> tuple[list[list[float | None]], float]:
    """The colour scale that shows the ridge: log₁₀ of the loss above the endpoints' mean
    ½(L(A) + L(B)), clipped below at `floor` nats (points as good as the endpoints all get
    the floor's colour). Returns (values, the mean)."""
    points = plane["points"] or {}
    reference = 0.5 * (points["a"]["loss"] + points["b"]["loss"]) if points else min(v for row in plane["grid"] for v in row if v is not None)
    values = [[None if v is None else math.log10(max(v - reference, floor)) for v in row] for row in plane["grid"]]
    return values, reference


def compute_plane(p, s, grid: int = DEFAULT_GRID, margin: float = DEFAULT_MARGIN, on_point=None, should_stop=None,
                  given_axes: tuple[list[float], list[float]] | None = None) -> dict:
    """The plane of pipeline `p` under settings `s` (`Pipeline.plane` says what the arguments
    do). A finished plane is kept like any stage, in memory and on disk; an unfinished one
    keeps its cells in memory, so that the next call goes on from them."""
    p.objective.require_loss()
    s.validate()
    basis = p.plane_basis(s)
    xs, ys = given_axes if given_axes is not None else axes(basis, grid, margin)
    shape = {"x": list(xs), "y": list(ys)} if given_axes is not None else {"grid": grid, "margin": margin}
    fields = {**p.eval_fields(s), **p.matching_fields(s), "plane": shape}
    with p.lock:
        done = p.memo.find("plane", fields, JSON)
        if done is not None:
            p.progress("plane", 1.0, "cached")
            if on_point:
                on_point(done)
            return done
        cells = p.memo.find("plane cells", fields)  # what an interrupted run left
        if cells is None:
            cells = p.memo.put("plane cells", fields, {})
        points = p.memo.find("plane points", fields)
        evaluate = p.plane_evaluator(s)
        order = fill_order(len(xs), len(ys))
        for k, (i, j) in enumerate(order):
            if should_stop is not None and should_stop():
                return assemble(xs, ys, cells, basis, points)
            if points is None:  # the three models first: a partial plane has its colour scale's reference
                p.progress("plane", 0.0, "the three models")
                at = point_coordinates(basis)
                exact = {
                    "a": p.loss_of_a(s),  # A's own model
                    "b": evaluate(0.0, 0.0, 1.0),  # bitwise B
                    "b_prime": evaluate(0.0, 1.0, 0.0),  # bitwise B′
                }
                points = p.memo.put("plane points", fields, {n: {"x": at[n][0], "y": at[n][1], **v} for n, v in exact.items()})
            if (i, j) in cells:
                continue
            p.progress("plane", k / len(order), f"point {k + 1} of {len(order)}")
            cells[(i, j)] = evaluate(*coefficients(xs[i], ys[j], basis.x_b))
            if on_point:
                on_point(assemble(xs, ys, cells, basis, points))
        result = p.memo.put("plane", fields, assemble(xs, ys, cells, basis, points), JSON)
        p.memo.forget("plane cells", fields)
        p.memo.forget("plane points", fields)
        if on_point:
            on_point(result)
        return result


def plane_report(p, s, plane: dict, grid: int | None = None, margin: float | None = None) -> dict:
    """plane.json: the plane with the settings, data and models that produced it."""
    from .data import text_fingerprint

    return {
        "format": "permerge-plane/1",
        **plane,
        "grid_points": grid, "margin": margin,
        "models": {"a": p.a.describe(), "b": p.b.describe()},
        "settings": asdict(s),
        "data": {"match": {"path": p.match_path, "fingerprint": text_fingerprint(p.match_passages)},
                 "eval": {"path": p.eval_path, "fingerprint": text_fingerprint(p.eval_passages)}},
        "notes": list(p.notes),
    }


def write_plane(p, s, plane: dict, out, grid: int | None = None, margin: float | None = None):
    """DIR/plane.json and DIR/plane.csv, each written atomically; returns DIR."""
    import json
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("plane.json", json.dumps(plane_report(p, s, plane, grid, margin), indent=1)), ("plane.csv", plane_csv(plane))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)
    return out
