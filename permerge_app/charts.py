"""Plotly figures for the app's pages: data in (from permerge_app.views), figure out.

No Streamlit here. Every figure has a title, labelled axes with units, a legend where there
is more than one series, and hover text with the values. Colours are chosen to read in both
light and dark themes (Streamlit's plotly theme sets backgrounds and fonts); correlations
always use one diverging scale, RdBu centred at 0 over −1…1, shared by every panel.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from permerge_core import spaces

CORR_SCALE = dict(colorscale="RdBu", cmin=-1.0, cmax=1.0, cmid=0.0)
# Series colours: an orange/blue pair that stays distinct in light and dark themes and for
# the common colour-vision deficiencies; extra curves take the rest of the qualitative set.
VANILLA = "#E69F00"
PERMUTED = "#0072B2"
REPAIRED = "#AA3377"  # the permuted path REPAIR-corrected (Paul Tol's purple, apart from the extra curves')
EXTRA = ["#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#8C8C8C", "#F0E442", "#7F3C8D", "#11A579", "#3969AC", "#E73F74", "#80BA5A"]


def _labels(view, n: int, fallback_offset: int = 0) -> list[str]:
    return view if view is not None else [str(i + fallback_offset) for i in range(n)]


def correlation_pair(before, after, title: str, row_labels=None, col_labels=None, after_title: str = "after alignment (B′ = B reordered)",
                     unit_note: str = "unit", row_offset: int = 0, col_offset: int = 0) -> go.Figure:
    """Two heatmaps, before and after alignment, on one RdBu colour axis centred at 0."""
    before, after = np.asarray(before), np.asarray(after)
    rows = _labels(row_labels, before.shape[0], row_offset)
    cols = _labels(col_labels, before.shape[1], col_offset)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("before alignment (B as trained)", after_title), horizontal_spacing=0.08)
    hover = "A " + unit_note + " %{y}<br>B " + unit_note + " %{x}<br>correlation %{z:.3f}<extra>%{fullData.name}</extra>"
    b_axis = "B′ position (= A unit it is matched to)"
    for col, (z, name) in enumerate(((before, "before"), (after, "after")), start=1):
        x = cols
        fig.add_trace(go.Heatmap(z=z, x=x, y=rows, coloraxis="coloraxis", name=name, hovertemplate=hover), row=1, col=col)
        fig.update_xaxes(title_text=f"B {unit_note}s" if col == 1 else b_axis, type="category", row=1, col=col, showticklabels=len(x) <= 40)
        fig.update_yaxes(title_text=f"A {unit_note}s", type="category", autorange="reversed", row=1, col=col, showticklabels=len(rows) <= 40)
    fig.update_layout(
        title=dict(text=title), coloraxis=dict(**CORR_SCALE, colorbar=dict(title=dict(text="correlation"))), height=460,
        margin=dict(t=80, b=40),
    )
    return fig


def matched_histogram(diagonal, matched, title: str) -> go.Figure:
    """Distribution of matched correlations after alignment vs the unaligned diagonal."""
    fig = go.Figure()
    bins = dict(start=-1.0, end=1.0, size=0.05)
    fig.add_trace(go.Histogram(x=np.asarray(diagonal), name="unaligned: corr(A i, B i)", xbins=bins, marker_color=VANILLA, opacity=0.6,
                               hovertemplate="correlation %{x}<br>%{y} units<extra>unaligned</extra>"))
    fig.add_trace(go.Histogram(x=np.asarray(matched), name="matched: corr(A i, B perm[i])", xbins=bins, marker_color=PERMUTED, opacity=0.6,
                               hovertemplate="correlation %{x}<br>%{y} units<extra>matched</extra>"))
    fig.update_layout(barmode="overlay", title=dict(text=title), xaxis_title="correlation of a unit with its partner (−1…1)",
                      yaxis_title="number of units", legend=dict(orientation="h", y=-0.25), height=380)
    fig.update_xaxes(range=[-1, 1])
    return fig


def per_layer_line(rows: list[dict], title: str, x_title: str) -> go.Figure:
    """Mean matched correlation per layer (or residual node), before and after alignment."""
    labels = [r["label"] for r in rows]
    fig = go.Figure()
    for key, name, color in (("before", "unaligned diagonal", VANILLA), ("after", "matched (aligned)", PERMUTED)):
        fig.add_trace(go.Scatter(
            x=[r["index"] for r in rows], y=[r[key] for r in rows], mode="lines+markers", name=name, line=dict(color=color),
            customdata=labels, hovertemplate="%{customdata}<br>mean correlation %{y:.3f}<extra>" + name + "</extra>",
        ))
    fig.update_layout(title=dict(text=title), xaxis_title=x_title, yaxis_title="mean correlation of partners (−1…1)",
                      legend=dict(orientation="h", y=-0.3), height=380)
    fig.update_xaxes(tickmode="array", tickvals=[r["index"] for r in rows], ticktext=[str(r["index"]) for r in rows])
    return fig


def cost_matrix(cost, assignment, head_perm=None, title: str = "") -> go.Figure:
    """The H×H head-pair cost (sum of matched correlations) with the chosen pairs marked."""
    cost = np.asarray(cost)
    h = cost.shape[0]
    heads = list(range(h))
    fig = go.Figure(go.Heatmap(
        z=cost, x=heads, y=heads, colorscale="Viridis", colorbar=dict(title=dict(text="cost: Σ matched corr")),
        texttemplate="%{z:.1f}" if h <= 16 else None, name="cost",
        hovertemplate="A head %{y} × B head %{x}<br>cost %{z:.3f}<extra></extra>",
    ))
    fig.add_trace(go.Scatter(
        x=[int(k) for k in assignment], y=heads, mode="markers", name="chosen pair (outlined)", showlegend=False,
        marker=dict(symbol="square", size=30, color="rgba(0,0,0,0)"),  # invisible: carries the hover, the outline is a shape
        hovertemplate="chosen: A head %{y} ↔ B head %{x}<extra></extra>",
    ))
    for j, k in enumerate(assignment):  # outline each chosen cell exactly, in data coordinates
        fig.add_shape(type="rect", x0=int(k) - 0.5, x1=int(k) + 0.5, y0=j - 0.5, y1=j + 0.5, line=dict(color="#E4002B", width=3))
    if head_perm is not None and not np.array_equal(np.asarray(head_perm), np.asarray(assignment)):
        fig.add_trace(go.Scatter(
            x=[int(k) for k in head_perm], y=heads, mode="markers", name="Head-Perm would choose",
            marker=dict(symbol="x", size=max(10, 120 // h), color="#FFFFFF", line=dict(width=1.5, color="#000000")), showlegend=False,
            hovertemplate="Head-Perm: A head %{y} ↔ B head %{x}<extra></extra>",
        ))
    subtitle = "red outline: the chosen pair" + (" · ✕: what Head-Perm would choose" if head_perm is not None and not np.array_equal(np.asarray(head_perm), np.asarray(assignment)) else "")
    fig.update_layout(title=dict(text=title, subtitle=dict(text=subtitle)), xaxis_title="B head", yaxis_title="A head", height=420,
                      legend=dict(orientation="h", y=-0.2))
    fig.update_xaxes(tickmode="array", tickvals=heads, constrain="domain")
    fig.update_yaxes(tickmode="array", tickvals=heads, autorange="reversed", scaleanchor="x")
    return fig


def _edge_color(cost: float, lo: float, hi: float) -> str:
    import plotly.colors as pc

    t = 0.5 if hi <= lo else (cost - lo) / (hi - lo)
    return pc.sample_colorscale("Viridis", [float(np.clip(t, 0, 1))])[0]


def head_graph(edges: list[dict], num_heads: int, title: str) -> go.Figure:
    """Bipartite graph: A's heads left, B's heads right, one edge per assigned pair.

    Edge colour and width follow the cost; edges that move a head (j ↔ k, k ≠ j) are solid,
    identity matches dotted, so non-identity matches stand out.
    """
    fig = go.Figure()
    costs = [e["cost"] for e in edges]
    lo, hi = (min(costs), max(costs)) if costs else (0.0, 1.0)
    for e in edges:
        width = 2 + 6 * (0.5 if hi <= lo else (e["cost"] - lo) / (hi - lo))
        fig.add_trace(go.Scatter(
            x=[0, 1], y=[e["a"], e["b"]], mode="lines", showlegend=False,
            line=dict(color=_edge_color(e["cost"], lo, hi), width=width, dash="solid" if not e["identity"] else "dot"),
            hovertemplate=f"A head {e['a']} ↔ B head {e['b']}<br>cost {e['cost']:.3f}<extra></extra>",
        ))
    ys = list(range(num_heads))
    fig.add_trace(go.Scatter(x=[0] * num_heads, y=ys, mode="markers+text", name="A's heads", text=[f"A{j}" for j in ys],
                             textposition="middle left", marker=dict(size=16, color=VANILLA), hovertemplate="A head %{y}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[1] * num_heads, y=ys, mode="markers+text", name="B's heads", text=[f"B{k}" for k in ys],
                             textposition="middle right", marker=dict(size=16, color=PERMUTED), hovertemplate="B head %{y}<extra></extra>"))
    # A colour bar for the edge cost, carried by an invisible trace.
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
                             marker=dict(colorscale="Viridis", cmin=lo, cmax=hi, color=[lo], showscale=True,
                                         colorbar=dict(title=dict(text="edge cost")))))
    moved = sum(not e["identity"] for e in edges)
    fig.update_layout(title=dict(text=f"{title}: {moved} of {len(edges)} heads move", subtitle=dict(text="solid: moved head, dotted: kept in place")),
                      xaxis=dict(tickmode="array", tickvals=[0, 1], ticktext=["model A", "model B"], range=[-0.35, 1.35], side="top"),
                      yaxis=dict(title_text="head index", autorange="reversed", tickmode="array", tickvals=ys),
                      height=max(320, 40 * num_heads + 160), legend=dict(orientation="h", yanchor="top", y=-0.05, x=0))
    return fig


def layered_heads(edges: list[dict], num_layers: int, num_heads: int, title: str) -> go.Figure:
    """All layers at once: per layer, A's heads (left) wired to B's heads (right)."""
    fig = go.Figure()
    costs = [e["cost"] for e in edges]
    lo, hi = (min(costs), max(costs)) if costs else (0.0, 1.0)
    gap = 0.6
    for e in edges:
        x0 = e["layer"]
        fig.add_trace(go.Scatter(
            x=[x0, x0 + gap], y=[e["a"], e["b"]], mode="lines", showlegend=False,
            line=dict(color="#FF2D55" if not e["identity"] else _edge_color(e["cost"], lo, hi), width=4 if not e["identity"] else 2,
                      dash="solid" if not e["identity"] else "dot"),
            hovertemplate=f"layer {e['layer']}: A head {e['a']} ↔ B head {e['b']}<br>cost {e['cost']:.3f}<extra></extra>",
        ))
    layers = sorted({e["layer"] for e in edges})
    xs_a = [layer for layer in layers for _ in range(num_heads)]
    ys = [j for _ in layers for j in range(num_heads)]
    fig.add_trace(go.Scatter(x=xs_a, y=ys, mode="markers", name="A's heads", marker=dict(size=10, color=VANILLA),
                             hovertemplate="A head %{y}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[x + gap for x in xs_a], y=ys, mode="markers", name="B's heads", marker=dict(size=10, color=PERMUTED),
                             hovertemplate="B head %{y}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="moved head (non-identity)", line=dict(color="#FF2D55", width=4)))
    moved = sum(not e["identity"] for e in edges)
    fig.update_layout(
        title=dict(text=f"{title} — {moved} moved head(s) across {len(layers)} layer(s)"),
        xaxis=dict(title_text="layer (left column: A's heads, right column: B's heads)", tickmode="array",
                   tickvals=[layer + gap / 2 for layer in layers], ticktext=[f"layer {layer}" for layer in layers]),
        yaxis=dict(title_text="head index", autorange="reversed", tickmode="array", tickvals=list(range(num_heads))),
        height=max(320, 30 * num_heads + 200), legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1),
    )
    return fig


def head_block(block: dict, j: int, k: int, title: str) -> go.Figure:
    """A head pair's d_k×d_k correlation block, raw and with the inner permutation applied.

    The colour scale spans ± the block's largest |correlation|, not ±1: matched features of a
    head pair correlate at 0.3 to 0.6, which on a ±1 scale barely differs from the rest."""
    dk = block["dk"]
    reach = float(np.abs(block["raw"]).max()) or 1.0
    idx = list(range(dk))
    perm = [int(p) for p in block["perm"]]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=(f"A head {j} × B head {k}: raw", f"columns in inner-permutation order (Σ diag = {block['sum']:.2f})"))
    fig.add_trace(go.Heatmap(z=block["raw"], x=idx, y=idx, coloraxis="coloraxis", name="raw",
                             hovertemplate="A feature %{y}<br>B feature %{x}<br>correlation %{z:.3f}<extra>raw</extra>"), row=1, col=1)
    fig.add_trace(go.Heatmap(z=block["aligned"], x=idx, y=idx, coloraxis="coloraxis", name="aligned", customdata=np.tile(perm, (dk, 1)),
                             hovertemplate="A feature %{y}<br>B feature %{customdata}<br>correlation %{z:.3f}<extra>aligned</extra>"),
                  row=1, col=2)
    fig.update_xaxes(title_text=f"B head {k} feature (0…{dk - 1})", row=1, col=1)
    fig.update_xaxes(title_text="position = A feature it is matched to", row=1, col=2)
    fig.update_yaxes(title_text=f"A head {j} feature (0…{dk - 1})", autorange="reversed", row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    scale = {**CORR_SCALE, "cmin": -reach, "cmax": reach}
    fig.update_layout(title=dict(text=title), coloraxis=dict(**scale, colorbar=dict(title=dict(text=f"correlation (±{reach:.2f})"))), height=430)
    return fig


BAR_SPREAD = 0.012  # λ between the barrier bars of curves that peak at the same λ


def loss_path(curves: dict[str, list[dict]], lambdas: int, title: str, colors: dict[str, str] | None = None, mark_barriers: bool = True,
              loss_name: str = "masked-LM loss", metric: str = "accuracy", metric_name: str = "masked-token accuracy") -> go.Figure:
    """Loss (nats) and one metric (masked-token accuracy, or a task metric) along λ, one
    colour per curve; barriers marked.

    A barrier is drawn where it is measured: a vertical bar at the peak λ from the endpoints'
    mean loss up to the peak, labelled with its value. Bars of curves that peak at the same λ
    stand side by side (BAR_SPREAD apart, centred on it) with their labels on alternate sides,
    so none hides another; the hover gives the exact λ.
    """
    bars = []
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.65, 0.35],
                        subplot_titles=(loss_name, metric_name))
    colors = colors or {}
    for n, (name, points) in enumerate(curves.items()):
        if not points:
            continue
        color = colors.get(name, EXTRA[n % len(EXTRA)])
        x = [p["lambda"] for p in points]
        loss = [p["loss"] for p in points]
        complete = len(points) == lambdas
        fig.add_trace(go.Scatter(
            x=x, y=loss, mode="lines+markers", name=name if complete else f"{name} (computing…)", legendgroup=name,
            line=dict(color=color, width=3 if name in ("vanilla", "permuted") else 2),
            hovertemplate="λ = %{x:.2f}<br>loss %{y:.4f} nats<extra>" + name + "</extra>",
        ), row=1, col=1)
        if any(metric in p for p in points):
            fig.add_trace(go.Scatter(
                x=x, y=[p.get(metric) for p in points], mode="lines+markers", name=f"{name} {metric}", legendgroup=name,
                showlegend=False, line=dict(color=color, width=2, dash="dot"),
                hovertemplate="λ = %{x:.2f}<br>" + metric + " %{y:.3f}<extra>" + name + "</extra>",
            ), row=2, col=1)
        if mark_barriers and complete and len(points) >= 2:
            peak = int(np.argmax(loss))
            bars.append((name, color, x[peak], 0.5 * (loss[0] + loss[-1]), loss[peak]))
    for name, color, at, base, top in bars:
        together = [b[0] for b in bars if b[2] == at]
        k = together.index(name)
        shown = at + (k - (len(together) - 1) / 2) * BAR_SPREAD
        side = "top center" if len(together) == 1 else ("top left" if k % 2 == 0 else "top right")
        fig.add_trace(go.Scatter(
            x=[shown, shown], y=[base, top], mode="lines+markers+text", legendgroup=name, showlegend=False,
            line=dict(color=color, width=2, dash="dash"), marker=dict(symbol="line-ew", size=12, line=dict(width=2, color=color)),
            text=["", f"barrier {top - base:.2f}"], textposition=side, textfont=dict(color=color),
            name=f"{name} barrier", hovertemplate=f"{name}: barrier {top - base:.4f} nats at λ = {at:.2f}<extra></extra>",
        ), row=1, col=1)
    fig.update_xaxes(title_text="λ  (θ = λ·A + (1−λ)·B;  λ=0: B or B′,  λ=1: A)", range=[-0.03, 1.03], row=2, col=1)
    fig.update_yaxes(title_text="loss (nats)", row=1, col=1)
    fig.update_yaxes(title_text="fraction" if metric in ("accuracy", "f1") else metric_name, row=2, col=1)
    fig.update_layout(title=dict(text=title), height=620, legend=dict(orientation="h", y=-0.15), hovermode="x unified")
    return fig


def seed_heatmaps(names: list[str], vanilla, permuted, title: str) -> go.Figure:
    """Pairwise barriers (nats), vanilla and permuted, side by side, numbers in the cells."""
    zv = np.array([[np.nan if v is None else v for v in row] for row in vanilla], dtype=float)
    zp = np.array([[np.nan if v is None else v for v in row] for row in permuted], dtype=float)
    # A model against itself (the diagonal, 0 by definition) is left blank: drawn as 0 it would
    # stretch the colour scale down to 0 and squeeze the pairs' barriers into its top.
    np.fill_diagonal(zv, np.nan)
    np.fill_diagonal(zp, np.nan)
    finite = np.concatenate([zv[np.isfinite(zv)], zp[np.isfinite(zp)]])
    zmin = float(finite.min()) if finite.size else 0.0
    zmax = float(finite.max()) if finite.size and finite.max() > zmin else zmin + 1.0
    fig = make_subplots(rows=1, cols=2, subplot_titles=("vanilla averaging", "permuted (B aligned to A)"), horizontal_spacing=0.06, shared_yaxes=True)
    for col, (z, label) in enumerate(((zv, "vanilla"), (zp, "permuted")), start=1):
        fig.add_trace(go.Heatmap(
            z=z, x=names, y=names, coloraxis="coloraxis", texttemplate="%{z:.2f}", name=label,
            hovertemplate="A = %{y}<br>B = %{x}<br>barrier %{z:.3f} nats<extra>" + label + "</extra>",
        ), row=1, col=col)
        fig.update_xaxes(title_text="model B", type="category", row=1, col=col)
        fig.update_yaxes(title_text="model A" if col == 1 else None, type="category", autorange="reversed", row=1, col=col)
    fig.update_layout(title=dict(text=title), coloraxis=dict(colorscale="Viridis", cmin=zmin, cmax=zmax,
                                                             colorbar=dict(title=dict(text="barrier (nats)"))), height=420)
    return fig


def png_export_available() -> bool:
    """Whether `fig.to_image` can make a PNG here: kaleido installed and a Chrome or Chromium
    it can drive (kaleido never downloads one here: no network)."""
    import importlib.util
    import shutil

    return importlib.util.find_spec("kaleido") is not None and any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome"))


# The colour of the plane: log₁₀ of the loss above the endpoints' mean, labelled in nats.
_RIDGE_TICKS = [0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30]


def loss_plane(plane: dict, curves: dict[str, list[dict]], title: str, floor: float = 0.01) -> go.Figure:
    """Filled contour of the loss over the plane through A, B and B′ (plane.py), the three
    models marked, the vanilla (A–B) and permuted (A–B′) paths drawn with their losses.

    Colour: log₁₀(loss − ½(L(A) + L(B))), clipped at `floor` nats, so that the valleys
    around the models and the ridge between them both show; hover gives the loss itself.
    A partial plane is drawn as its computed points only, one marker each: interpolating
    between a few points would draw valleys and ridges nobody measured. The axes fill the
    width; a unit of y is |v|/|u| units of x, which the subtitle says."""
    from permerge_core.plane import colour_values, path_coordinates

    basis = plane["basis"]
    values, reference = colour_values(plane, floor)
    finite = [v for row in values for v in row if v is not None]
    top = max(finite) if finite else 1.0
    ticks = [t for t in _RIDGE_TICKS if np.log10(t) <= top + 0.2] or [floor]
    loss = np.array([[np.nan if v is None else v for v in row] for row in plane["grid"]], dtype=float)
    colorbar = dict(title=dict(text=f"loss − {reference:.3f} (nats, log scale)", side="right"),
                    tickvals=[float(np.log10(t)) for t in ticks], ticktext=[f"≤{t:g}" if t == floor else f"{t:g}" for t in ticks])
    hover = "x %{x:.3f}, y %{y:.3f}<br>loss %{customdata:.4f} nats<extra>plane</extra>"
    if plane.get("complete", True):
        fig = go.Figure(go.Contour(
            x=plane["x"], y=plane["y"], z=values, customdata=loss, colorscale="Viridis", ncontours=24,
            contours=dict(coloring="heatmap", showlines=True), line=dict(width=0.5, color="rgba(255,255,255,0.35)"),
            colorbar=colorbar, hovertemplate=hover, name="plane",
        ))
    else:  # grid[j][i] is the point (x[i], y[j])
        done = [(i, j) for j, row in enumerate(values) for i, v in enumerate(row) if v is not None]
        fig = go.Figure(go.Scatter(
            x=[plane["x"][i] for i, _ in done], y=[plane["y"][j] for _, j in done], mode="markers", name="computed points",
            customdata=[loss[j][i] for i, j in done], hovertemplate=hover,
            marker=dict(symbol="square", size=14, color=[values[j][i] for i, j in done], colorscale="Viridis",
                        cmin=min(finite), cmax=top, colorbar=colorbar),
        ))
    colors = {"vanilla": VANILLA, "permuted": PERMUTED}
    for which, points in curves.items():
        if not points:
            continue
        xy = [path_coordinates(which, p["lambda"], basis["x_b"]) for p in points]
        fig.add_trace(go.Scatter(
            x=[c[0] for c in xy], y=[c[1] for c in xy], mode="lines+markers", name=f"{which} path (A–{'B′' if which == 'permuted' else 'B'})",
            line=dict(color=colors.get(which, EXTRA[0]), width=3), marker=dict(size=6),
            customdata=[[p["lambda"], p["loss"]] for p in points],
            hovertemplate=which + ": λ = %{customdata[0]:.2f} (A's weight: λ = 1 at A)<br>loss %{customdata[1]:.4f} nats<extra></extra>",
        ))
    points = plane.get("points") or {}
    where = {"a": (0.0, 0.0), "b": (basis["x_b"], 1.0), "b_prime": (1.0, 0.0)}
    labels = {"a": "A", "b": "B", "b_prime": "B′"}
    fig.add_trace(go.Scatter(
        x=[where[k][0] for k in labels], y=[where[k][1] for k in labels], mode="markers+text", name="models",
        text=list(labels.values()), textposition="top center", textfont=dict(size=16, color="#FFFFFF"),
        marker=dict(size=13, color="#FFFFFF", line=dict(width=2, color="#000000")), showlegend=False,
        customdata=[points[k]["loss"] if k in points else None for k in labels],
        hovertemplate="%{text}: loss %{customdata:.4f} nats<extra></extra>",
    ))
    ratio = basis["norm_v"] / basis["norm_u"]
    fig.update_layout(
        title=dict(text=title, subtitle=dict(text="θ(x, y) = A + x·u + y·v;  u = B′ − A,  v = the part of B − A orthogonal to u;  "
                                                  f"a unit of y is {ratio:.2f} units of x")),
        xaxis_title=f"x: along u = B′ − A  (|u| = {basis['norm_u']:.3g})", yaxis_title=f"y: along v  (|v| = {basis['norm_v']:.3g})",
        height=620, legend=dict(orientation="h", y=-0.15),
    )
    fig.update_xaxes(range=[plane["x"][0], plane["x"][-1]])
    fig.update_yaxes(range=[plane["y"][0], plane["y"][-1]])
    return fig


def activation_spreads(spreads: dict[str, dict], labels: dict[str, str], title: str, statistic: str = "mean") -> go.Figure:
    """Space × λ heatmaps of the unit-spread ratio σ(θ(λ)) / interpolated endpoint σ, one
    panel per path, on one diverging scale centred at 1 (no change; blue: wider, red: collapsed)."""
    names = list(spreads)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[f"{n} path" for n in names], horizontal_spacing=0.06, shared_yaxes=True)
    every = [v for r in spreads.values() for row in r[statistic].values() for v in row if v == v]
    spread = max([abs(v - 1.0) for v in every] + [0.05])
    for col, name in enumerate(names, start=1):
        result = spreads[name]
        spaces = result["spaces"]
        z = [result[statistic][space] for space in spaces]
        fig.add_trace(go.Heatmap(
            z=z, x=result["lambdas"], y=[labels.get(space, space) for space in spaces], coloraxis="coloraxis", name=name,
            customdata=[[result["median" if statistic == "mean" else "mean"][space][k] for k in range(len(result["lambdas"]))] for space in spaces],
            hovertemplate="%{y}<br>λ = %{x:.2f}<br>" + statistic + " ratio %{z:.3f}<br>"
                          + ("median" if statistic == "mean" else "mean") + " %{customdata:.3f}<extra>" + name + "</extra>",
        ), row=1, col=col)
        fig.update_xaxes(title_text="λ  (0: B or B′, 1: A)", row=1, col=col)
    fig.update_yaxes(autorange="reversed", type="category", row=1, col=1)
    fig.update_layout(
        title=dict(text=title, subtitle=dict(text=f"{statistic} over units of σ(θ(λ)) / (λ·σ(A) + (1−λ)·σ(B or B′)); 1 = no change, below 1 = collapsed spread")),
        coloraxis=dict(colorscale="RdBu", cmin=1.0 - spread, cmax=1.0 + spread, cmid=1.0, colorbar=dict(title=dict(text="spread ratio"))),
        height=max(360, 26 * max(len(r["spaces"]) for r in spreads.values()) + 200),
    )
    return fig


KIND_COLORS = {"ffn": "#009E73", "attention": "#CC79A7", "residual": "#56B4E9"}
KIND_LABELS = {"ffn": "FFN", "attention": "attention", "residual": "residual stream"}


def _token_axis(fig: go.Figure, budgets: list[int], row=None, col=None) -> None:
    """A log₂ axis of matching tokens, one tick per budget."""
    fig.update_xaxes(type="log", tickmode="array", tickvals=budgets, ticktext=[f"{b:,}" for b in budgets],
                     title_text="matching tokens per resample (log scale)", row=row, col=col)


def barrier_vs_tokens(rows: list[dict], references: dict[str, float], title: str) -> go.Figure:
    """Permuted barrier (nats) against the matching budget: the mean over resamples with a
    ±1 standard-deviation bar, every resample as a faint dot, and reference barriers (vanilla
    averaging, weight matching) as horizontal lines."""
    budgets = [r["budget"] for r in rows]
    fig = go.Figure()
    xs = [r["budget"] for r in rows for _ in r["barrier"]["values"]]
    ys = [v for r in rows for v in r["barrier"]["values"]]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name="each resample", marker=dict(color=PERMUTED, size=7, opacity=0.35),
                             hovertemplate="%{x:,} tokens<br>barrier %{y:.4f} nats<extra>one resample</extra>"))
    fig.add_trace(go.Scatter(
        x=budgets, y=[r["barrier"]["mean"] for r in rows], mode="lines+markers", name="permuted (activations): mean ± sd",
        line=dict(color=PERMUTED, width=3), error_y=dict(type="data", array=[r["barrier"]["std"] for r in rows], visible=True),
        customdata=[[r["barrier"]["std"], r["barrier"]["min"], r["barrier"]["max"]] for r in rows],
        hovertemplate="%{x:,} tokens<br>mean barrier %{y:.4f} nats<br>sd %{customdata[0]:.4f}, range %{customdata[1]:.4f}–%{customdata[2]:.4f}"
                      "<extra>permuted</extra>",
    ))
    colors = {"vanilla": VANILLA}
    for n, (name, value) in enumerate(references.items()):
        color = colors.get(name, EXTRA[n % len(EXTRA)])
        fig.add_trace(go.Scatter(x=[budgets[0], budgets[-1]], y=[value, value], mode="lines", name=f"{name}: {value:.3f}",
                                 line=dict(color=color, width=2, dash="dash"), hovertemplate=f"{name}: barrier {value:.4f} nats<extra></extra>"))
    fig.update_layout(title=dict(text=title), yaxis_title="loss barrier (nats)", height=420, legend=dict(orientation="h", y=-0.3))
    _token_axis(fig, budgets)
    return fig


def agreement_vs_tokens(rows: list[dict], title: str) -> go.Figure:
    """Fraction of A's units two matchings pair with the same B unit, one colour per kind of
    space (mean over its spaces). Solid, and first: between disjoint resamples of one budget,
    the honest measure of how settled a matching is. Dotted: as by the largest budget of the
    same resample, which reaches 100% at the largest budget by definition (drawn solid only
    when there is one resample, and so no other line)."""
    budgets = [r["budget"] for r in rows]
    fig = go.Figure()
    for kind, color in KIND_COLORS.items():
        if not any(kind in r["agreement_by_kind"] for r in rows):
            continue
        between = [r["agreement_between_resamples"].get(kind) for r in rows]
        resampled = any(v is not None for v in between)
        if resampled:
            fig.add_trace(go.Scatter(
                x=budgets, y=between, mode="lines+markers", name=f"{KIND_LABELS[kind]}: between resamples", line=dict(color=color, width=3),
                hovertemplate="%{x:,} tokens<br>%{y:.1%} paired alike by two resamples<extra>" + KIND_LABELS[kind] + "</extra>",
            ))
        fig.add_trace(go.Scatter(
            x=budgets, y=[r["agreement_by_kind"].get(kind) for r in rows], mode="lines+markers", name=f"{KIND_LABELS[kind]}: vs the largest budget",
            line=dict(color=color, width=1.5 if resampled else 3, dash="dot" if resampled else "solid"),
            hovertemplate="%{x:,} tokens<br>%{y:.1%} of units paired as by the largest budget<extra>" + KIND_LABELS[kind] + "</extra>",
        ))
    fig.update_layout(title=dict(text=title), yaxis_title="fraction of A's units paired with the same B unit", height=420,
                      legend=dict(orientation="h", y=-0.3))
    fig.update_yaxes(range=[-0.02, 1.02], tickformat=".0%")
    _token_axis(fig, budgets)
    return fig


def head_agreement_heatmap(rows: list[dict], title: str) -> go.Figure:
    """Per layer (rows) and budget (columns): the fraction of A's heads assigned to the same B
    head as by the largest budget, mean over resamples."""
    layers = list(rows[0]["head_agreement"])
    budgets = [f"{r['budget']:,}" for r in rows]
    z = np.array([[r["head_agreement"][layer] for r in rows] for layer in layers])
    fig = go.Figure(go.Heatmap(
        z=z, x=budgets, y=[f"layer {spaces.layer_of(layer)}" for layer in layers], zmin=0.0, zmax=1.0, colorscale="Viridis",
        texttemplate="%{z:.0%}", colorbar=dict(title=dict(text="heads alike"), tickformat=".0%"), name="head agreement",
        hovertemplate="%{y}, %{x} tokens<br>%{z:.0%} of heads assigned as by the largest budget<extra></extra>",
    ))
    fig.update_layout(title=dict(text=title), xaxis_title="matching tokens per resample", yaxis_title="layer",
                      height=max(260, 40 * len(layers) + 160))
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category", autorange="reversed")
    return fig
