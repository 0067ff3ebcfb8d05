"""Correlations: the A×B cross-correlation of one space before and after alignment, the
distribution of matched correlations, and the mean matched correlation across layers."""

import numpy as np
import streamlit as st

from permerge_app import charts, ui, views
from permerge_core import spaces

ui.page_start()
st.title("Correlations")
st.caption(
    "Each cell is the correlation between a unit of A and a unit of B over the matching tokens. "
    "After alignment B's columns are reordered by the permutation, so each A unit's partner sits on the diagonal."
)
p, s = ui.current()
stats, matching = ui.statistics_and_matching(p, s)
L = stats.num_layers
OVERVIEW_UNITS = 96  # units of each side the overview shows

KINDS = {spaces.FFN: "FFN units", spaces.ATTENTION: "attention features", spaces.RESIDUAL: "residual stream"}
c1, c2 = st.columns([1, 2])
kind = c1.radio("Space", list(KINDS), format_func=KINDS.get, key="corr_kind", horizontal=True)
space = c2.selectbox("Layer / node", views.space_options(stats, kind), format_func=lambda n: views.space_label(n, p.a.family, L), key=f"corr_space_{kind}")

corr = stats.spaces[space].correlation()
perm = views.space_permutation(matching, space)
d = int(corr.shape[0])
label = views.space_label(space, p.a.family, L)
unit = "feature" if kind != spaces.FFN else "unit"
if np.array_equal(perm, np.arange(d)):
    component = {spaces.FFN: "FFN alignment", spaces.ATTENTION: "Attention alignment", spaces.RESIDUAL: "Residual alignment"}[kind]
    st.info(f"{component} is off in the current settings (or found the identity): 'after' equals 'before'.", icon=":material/info:")

# The overview is the first units of each side, every correlation exact: pooling the whole
# matrix hides the alignment (a matched pair is one entry in its block; block means dilute it,
# block maxima drown it among the strong off-partner correlations FFN units have).
full_before, full_after = corr.numpy(), views.aligned(corr, perm)
corner, _ = views.zoom_window(d, d, 0, 0, OVERVIEW_UNITS)
r = corner.stop
if r < d:
    st.caption(
        f"Overview: the first {r} of {d} units of A against the first {r} of B (before) and of B′ (after), every correlation "
        f"exact. Pooling all {d * d:,} into blocks would hide the alignment: a matched pair is one entry in its block. "
        "The zoom below moves to any other region."
    )
else:
    st.caption(f"All {d}×{d} = {d * d:,} correlations, one cell each.")
st.plotly_chart(
    charts.correlation_pair(full_before[corner, corner], full_after[corner, corner],
                            f"{label}: A × B correlation ({r} of {d} {unit}s)" if r < d else f"{label}: A × B correlation ({d} {unit}s)",
                            unit_note=unit),
    key="corr_overview",
)

if r < d:
    with st.expander("Zoom into another region (exact values)", expanded=False):
        z1, z2, z3 = st.columns(3)
        size = z3.slider("Window size (units)", 8, min(128, d), min(64, d), key="corr_zoom_size")
        row0 = z1.number_input("First A unit (row)", 0, d - 1, 0, key="corr_zoom_row")
        col0 = z2.number_input("First column", 0, d - 1, 0, key="corr_zoom_col",
                               help="Of B (before) and of B′, i.e. of A's order (after). Equal to the row shows the diagonal.")
        rows, cols = views.zoom_window(d, d, int(row0), int(col0), int(size))
        st.caption(f"Rows {rows.start}–{rows.stop - 1}, columns {cols.start}–{cols.stop - 1}: {(rows.stop - rows.start) ** 2:,} exact correlations.")
        st.plotly_chart(
            charts.correlation_pair(full_before[rows, cols], full_after[rows, cols], f"{label}: zoom", unit_note=unit,
                                    row_labels=[str(i) for i in range(rows.start, rows.stop)],
                                    col_labels=[str(i) for i in range(cols.start, cols.stop)]),
            key="corr_zoom",
        )

diagonal, matched = views.matched_pair(corr, perm)
m = st.columns(3)
m[0].metric("mean correlation, unaligned diagonal", f"{diagonal.mean():.3f}")
m[1].metric("mean matched correlation", f"{matched.mean():.3f}", delta=f"{matched.mean() - diagonal.mean():+.3f}")
m[2].metric("units matched to a different index", f"{int((perm != np.arange(d)).sum()):,} / {d:,}")
h1, h2 = st.columns(2)
with h1:
    st.plotly_chart(charts.matched_histogram(diagonal, matched, f"{label}: partners' correlation"), key="corr_hist")
with h2:
    rows = views.per_layer_matched(stats, matching, kind, p.a.family)
    nodes = p.a.family.residual_layout.nodes(L)
    x_title = f"residual node, in depth order (0: {nodes[0][1]}; 1: {nodes[1][1]})" if kind == spaces.RESIDUAL else "layer"
    st.plotly_chart(charts.per_layer_line(rows, f"Mean matched correlation per {'node' if kind == spaces.RESIDUAL else 'layer'}: {KINDS[kind]}", x_title),
                    key="corr_layers")
