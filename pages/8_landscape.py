"""Landscape: the loss over the plane through A, B and B′ with both paths drawn on it, and what
interpolation does to the spread of activations along each path."""

from dataclasses import replace

import streamlit as st

from permerge_app import charts, ui, views
from permerge_core import plane as plane_mod
from permerge_core.sources import pair_label

ui.page_start()
st.title("Landscape")
st.caption(
    "The plane through A, B and B′ (B aligned to A): origin A, x along u = B′ − A (B′ at (1, 0)), y along v, the part of B − A "
    "orthogonal to u (B at (x_B, 1)). Every point is a full set of weights A + x·u + y·v, evaluated on the same text and masks "
    "as the loss path. The vanilla path A–B and the permuted path A–B′ are drawn on it."
)
p, s = ui.current()
ss = st.session_state
c1, c2, c3 = st.columns(3)
grid = c1.slider("Grid points per axis", 3, plane_mod.MAX_GRID, plane_mod.DEFAULT_GRID, key="plane_grid",
                 help="The plane costs grid² evaluations; the grid fills coarse to fine, so a stopped plane already spans it all.")
margin = c2.number_input("Margin (plane units)", 0.0, 3.0, plane_mod.DEFAULT_MARGIN, step=0.05, key="plane_margin",
                         help="How far past A, B and B′ the plane extends.")
budget = p.objective.uses_eval_tokens  # a classifier is scored on every labelled example, whatever the budget
tokens = c3.number_input("Evaluation tokens for the plane", 256, value=plane_mod.DEFAULT_EVAL_TOKENS, step=1024, key="plane_tokens",
                         disabled=not budget, help="The plane's own budget (the loss path's is in the sidebar): the same text and "
                         "mask seed, fewer tokens, since the plane evaluates grid² models instead of a path's λ points.")
sp = replace(s, eval_tokens=int(tokens)) if budget else s
ui.statistics_and_matching(p, sp)
basis = p.plane_basis(sp)  # PermergeError (shown by the frame) when A, B and B′ span no plane

plane = p.plane(sp, grid, margin, should_stop=lambda: True)  # what is already there: computes nothing new
status = p.stage_status(sp)
missing_paths = [w for w in ("vanilla", "permuted") if status[f"{w} path"] not in ("computed", "cached")]
plane_left = 0 if plane["complete"] else plane["total"] - plane["computed"] + (2 if plane["points"] is None else 0)  # (+ B and B′)
to_evaluate = plane_left + sp.lambdas * len(missing_paths)
title = f"Loss over the plane, A ↔ B: {pair_label(ss.model_a, ss.model_b)}"
chart = st.empty()
curves: dict[str, list[dict]] = {}
TOOLBAR = {"toImageButtonOptions": {"format": "png", "filename": "landscape", "scale": 2}}


def figure(current):
    done = "" if current["complete"] else f" ({current['computed']} of {current['total']} points)"
    return charts.loss_plane(current, curves, title + done)


if to_evaluate:
    seconds = p.seconds_per_evaluation(sp)
    parts = ([f"{plane_left} for the plane"] if plane_left else []) + (
        [f"{sp.lambdas * len(missing_paths)} for the paths"] if missing_paths else [])
    st.info(
        f"Expected time: about {to_evaluate * seconds:.0f} s: {to_evaluate} evaluations ({', '.join(parts)}) at {seconds:.2f} s each, "
        "as one took just now. Stop keeps the points computed so far; computing again goes on from them.",
        icon=":material/schedule:",
    )
    b1, b2 = st.columns(2)
    label = "Compute the paths" if plane["complete"] else ("Continue the plane" if plane["computed"] else "Compute the plane")
    if b1.button(label, type="primary", key="plane_go", width="stretch"):
        # A click reruns the page, which Streamlit does by interrupting this run at its next
        # element update: the progress bar of the next point.
        b2.button("Stop", key="plane_stop", width="stretch", help="Stops after the current point; the plane keeps what it has.")
        redraw = ui.LiveRedraw(chart)
        with ui.progress():
            for which in ("vanilla", "permuted"):  # first, so that the live plane shows them
                curves[which] = p.curve(sp, which)
            p.plane(sp, grid, margin, on_point=lambda current: redraw(lambda: figure(current)))
        st.rerun()  # the finished page, without the buttons
    if plane["computed"]:
        chart.plotly_chart(figure(plane), config=TOOLBAR, key="landscape_partial")
    raise ui.Halt

for which in ("vanilla", "permuted"):
    curves[which] = p.curve(sp, which)
fig = figure(plane)
chart.plotly_chart(fig, config=TOOLBAR, key="landscape")
barriers = {r["curve"]: r for r in views.barrier_rows(curves)}
left, right = st.columns([3, 2])
with right:
    st.subheader("Distances and barriers")
    st.dataframe([
        {"quantity": "barrier, vanilla path A–B", "value": f"{barriers['vanilla']['barrier (nats)']:.4f} nats"},
        {"quantity": "barrier, permuted path A–B′", "value": f"{barriers['permuted']['barrier (nats)']:.4f} nats"},
        {"quantity": "distance A → B, |B − A|", "value": f"{basis.distance_b:.4g}"},
        {"quantity": "distance A → B′, |u| = |B′ − A|", "value": f"{basis.norm_u:.4g}"},
        {"quantity": "|v| (B's distance from the line A–B′)", "value": f"{basis.norm_v:.4g}"},
        {"quantity": "angle between B − A and u", "value": f"{basis.angle_degrees:.1f}°"},
        {"quantity": "B's x coordinate, x_B", "value": f"{basis.x_b:.3f}"},
    ], hide_index=True, width="stretch")
    closer = basis.distance_b - basis.norm_u
    st.caption(
        f"Alignment moves B {'closer to' if closer > 0 else 'no closer to'} A: |B′ − A| is {abs(closer):.4g} "
        f"{'shorter' if closer > 0 else 'longer'} than |B − A| ({100 * abs(closer) / basis.distance_b:.1f}%). "
        f"Distances are Euclidean norms over every parameter. Losses on {p.objective.scored_on(sp)}; "
        f"the barriers are the paths' own on this budget, so they can differ from the Loss path page's."
    )
with left:
    points = plane["points"]
    _, reference = plane_mod.colour_values(plane)
    st.markdown(
        f"**Colour scale:** log₁₀ of the loss above the endpoints' mean ½(L(A) + L(B)) = {reference:.4f} nats, clipped at 0.01 nats: "
        f"the darkest colour is every point within 0.01 nats of that mean or below it. Hover for the loss itself. "
        f"Exact losses: A {points['a']['loss']:.4f}, B {points['b']['loss']:.4f}, B′ {points['b_prime']['loss']:.4f} nats."
    )
    d1, d2, d3 = st.columns(3)
    d1.download_button("Download plane (CSV)", plane_mod.plane_csv(plane), file_name="plane.csv", mime="text/csv", on_click="ignore")
    d2.download_button("Download figure (HTML)", lambda: fig.to_html(include_plotlyjs=True, full_html=True), file_name="landscape.html",
                       mime="text/html", on_click="ignore")
    if charts.png_export_available():
        d3.download_button("Download figure (PNG)", lambda: fig.to_image(format="png", width=1100, height=700, scale=2),
                           file_name="landscape.png", mime="image/png", on_click="ignore")
    else:
        d3.caption("PNG: use the camera icon in the chart's toolbar (kaleido or Chromium is not installed here).")

st.subheader("What interpolation does to activations")
st.caption(
    "For every unit of each FFN intermediate and residual node: the standard deviation of θ(λ)'s activations over the "
    "evaluation text's tokens, divided by the λ-interpolation of the endpoints' (λ·σ(A) + (1−λ)·σ(B or B′)). "
    "1 means the merged model's units vary as much as its endpoints'; below 1, the variance collapse that Jordan et al. (2022, "
    "REPAIR) measured in CNNs. It is exactly 1 at λ = 0 and 1 by construction."
)
spreads = {which: p.activation_spreads(sp, which, compute=False) for which in ("vanilla", "permuted")}
if any(v is None for v in spreads.values()):
    missing = [w for w, v in spreads.items() if v is None]
    seconds = p.seconds_per_evaluation(sp)
    st.info(f"Expected time: about {len(missing) * sp.lambdas * seconds:.0f} s ({len(missing)} path(s) × {sp.lambdas} λ points, one forward "
            f"pass each over the plane's evaluation text).", icon=":material/schedule:")
    if st.button("Measure the activations", key="spreads_go"):
        with ui.progress():
            spreads = {which: p.activation_spreads(sp, which) for which in ("vanilla", "permuted")}
        st.rerun()
    raise ui.Halt
statistic = st.radio("Summary over units", ["mean", "median"], horizontal=True, key="spreads_statistic")
labels = {space: views.space_label(space, p.a.family, p.a.num_layers) for space in spreads["vanilla"]["spaces"]}
spread_fig = charts.activation_spreads(spreads, labels, "Activation spread along the paths", statistic)
st.plotly_chart(spread_fig, key="spreads")
lowest = {w: min((v, labels[space], r["lambdas"][k]) for space in r["spaces"] for k, v in enumerate(r[statistic][space]))
          for w, r in spreads.items()}
st.caption(" · ".join(f"{w}: lowest {statistic} ratio {v:.3f} ({space}, λ = {lam:.2f})" for w, (v, space, lam) in lowest.items()))
