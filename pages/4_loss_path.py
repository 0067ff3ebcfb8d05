"""Loss path: loss and accuracy (masked-token, next-token or a task metric) along λ for vanilla
averaging (A↔B) and permuted merging (A↔B′), barriers marked, optional component variants, live
as points arrive."""

from dataclasses import replace

import streamlit as st

from permerge_app import charts, ui, views
from permerge_core import SettingsError, is_function_preserving
from permerge_core.repair import LABEL as REPAIR_LABEL, REPAIRED
from permerge_core.modes import MATCHERS
from permerge_core.settings import WEIGHTS
from permerge_core.sources import pair_label

ui.page_start()
st.title("Loss path")
st.caption(
    "θ(λ) = λ·A + (1−λ)·B over every weight. Vanilla interpolates A and B as trained; permuted interpolates A and B′, "
    "B aligned to A by permutation. Barrier = max over λ of the loss minus the mean of the two endpoint losses (nats)."
)
p, s = ui.current()
ss = st.session_state
objective = p.objective  # what is scored: a language model's loss, or a classifier's task loss and metrics
objective.require_loss()
metric = objective.metrics[0]
if len(objective.metrics) > 1:  # a classifier's task metrics: one of them in the lower panel
    metric = st.radio("Task metric (lower panel)", objective.metrics, key="task_metric", horizontal=True, format_func=objective.metric_label)
loss_name, metric_name = objective.loss_name, objective.metric_label(metric)
variants = st.multiselect(
    "Extra curves: component variants (the paper's comparisons)", list(views.VARIANTS), key="variants",
    help="Each is a permuted path with other merge settings; data, tokens and λ grid stay as in the sidebar. "
         "Variants marked sep or ignore-heads are not function-preserving.",
)
title = f"Loss along the path, {pair_label(ss.model_a, ss.model_b)} (A at λ=1, B at λ=0)"
permuted_label = (f"permuted (FFN {'on' if s.ffn else 'off'}, attention {s.attention}, residual {s.residual}, "
                  f"matched on {'activations' if MATCHERS[s.matcher].reads_text else 'weights'})")
curves: dict[str, list[dict]] = {"vanilla": [], "permuted": []}
colors = {"vanilla": charts.VANILLA, "permuted": charts.PERMUTED}
placeholder = st.empty()
redraw = ui.LiveRedraw(placeholder)


def figure():
    return charts.loss_path(curves, s.lambdas, title, colors, loss_name=loss_name, metric=metric, metric_name=metric_name)


def collect(name, live: bool = True):
    def on_point(point):
        curves[name].append(point)
        if live:
            redraw(figure, force=len(curves[name]) == 1)  # a curve's first point: at once
    return on_point


# A curve computed before arrives all at once: it is drawn with the first new point (or at the
# end), not on its own while the next curve waits for the draw.
vanilla_ready = p.stage_status(s)["vanilla path"] in ("computed", "cached")
with ui.progress():
    p.curve(s, "vanilla", on_point=collect("vanilla", live=not vanilla_ready))
    p.curve(s, "permuted", on_point=collect("permuted"))
    if s.repair:  # the permuted path with each θ(λ) REPAIR-corrected (Advanced settings)
        curves[REPAIR_LABEL], colors[REPAIR_LABEL] = [], charts.REPAIRED
        p.curve(s, REPAIRED, on_point=collect(REPAIR_LABEL))
    if MATCHERS[s.matcher].compares:  # the weight matching beside the activation matching
        curves["permuted (weights)"], colors["permuted (weights)"] = [], charts.EXTRA[-1]
        p.curve(replace(s, matcher=WEIGHTS), "permuted", on_point=collect("permuted (weights)"))
    refused = {}
    for n, name in enumerate(variants):
        curves[name] = []
        colors[name] = charts.EXTRA[n % len(charts.EXTRA)]
        try:
            p.curve(views.variant_settings(s, name), "permuted", on_point=collect(name))
        except SettingsError as err:  # a variant this pair's family refuses (ignore-heads on rotary heads)
            del curves[name]
            refused[name] = err

fig = figure()
placeholder.plotly_chart(fig, key="loss_final")
for name, err in refused.items():
    st.caption(f"⚠ Variant '{name}' is not drawn: {err}")
st.caption(
    f"'permuted' uses the sidebar settings: {permuted_label}. "
    + objective.path_caption(metric)
)

preserving = {"vanilla": True, "permuted": s.function_preserving, "permuted (weights)": s.function_preserving,
              REPAIR_LABEL: s.function_preserving}
preserving.update({v: is_function_preserving(views.VARIANTS[v]["attention"], views.VARIANTS[v]["residual"]) for v in variants if v in curves})
rows = views.barrier_rows(curves, preserving)
by_name = {r["curve"]: r for r in rows}
# Every curve of the sidebar's settings gets its barrier here; each beyond the permuted one is
# compared with it (the component variants are in the table below).
beside = [name for name in (REPAIR_LABEL, "permuted (weights)") if name in by_name]
m = st.columns(3 + len(beside))
m[0].metric("vanilla barrier", f"{by_name['vanilla']['barrier (nats)']:.3f} nats")
m[1].metric("permuted barrier", f"{by_name['permuted']['barrier (nats)']:.3f} nats",
            delta=f"{by_name['permuted']['barrier (nats)'] - by_name['vanilla']['barrier (nats)']:+.3f} vs vanilla", delta_color="inverse")
for column, name in zip(m[2:], beside):
    column.metric(f"{name} barrier", f"{by_name[name]['barrier (nats)']:.3f} nats",
                  delta=f"{by_name[name]['barrier (nats)'] - by_name['permuted']['barrier (nats)']:+.3f} vs permuted", delta_color="inverse")
m[-1].metric("λ points", f"{s.lambdas}")
st.caption(f"Every barrier here is measured on {objective.scored_on(s)} at {s.lambdas} λ points: other pages, or other budgets "
           "and grids, measure the same barrier on other data and can show other values.")
st.subheader("Barriers")
st.dataframe(rows, hide_index=True, width="stretch", column_config={
    "curve": st.column_config.TextColumn(width="medium"),  # wide enough for "permuted (weights)"; the variants wrap in the hover
    **{k: st.column_config.NumberColumn(format="%.4f") for k in rows[0] if k not in ("curve", "peak λ", "function-preserving")},
})

d1, d2 = st.columns(2)
d1.download_button("Download curves (CSV)", views.curves_csv(curves), file_name="loss_path.csv", mime="text/csv", on_click="ignore")
d2.download_button("Download figure (HTML)", lambda: fig.to_html(include_plotlyjs=True, full_html=True), file_name="loss_path.html",
                   mime="text/html", on_click="ignore")
