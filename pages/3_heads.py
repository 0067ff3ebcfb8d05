"""Heads: how Head-Perm matches attention heads (H×H cost, assignment, per-head permutation
graph, all layers at once) and the d_k×d_k correlation block of any head pair."""

import numpy as np
import streamlit as st

from permerge_app import charts, ui, views
from permerge_core import spaces
from permerge_core.modes import ATTENTION, MATCHERS

ui.page_start()
st.title("Heads")
st.caption(
    "Head-Perm: for every pair (A head j, B head k) an inner assignment matches their d_k features; the pair's cost is the sum "
    "of matched correlations. An outer assignment on the H×H cost matrix then maps A's heads to B's heads."
)
p, s = ui.current()
stats, matching = ui.statistics_and_matching(p, s)
L, H = stats.num_layers, p.a.num_heads

mode = ATTENTION[s.attention]
layer = st.selectbox("Layer", list(range(L)), key="heads_layer", format_func=lambda i: f"layer {i}")
heads, applied = views.display_heads(stats, matching, H, layer)
if mode.heads_note or not applied:
    note = mode.heads_note or (f"Attention mode '{mode.name}' applied no head matching to this layer. The figures show what "
                               "Head-Perm would choose (computed for display, not applied to B′).")
    st.info(note, icon=":material/info:")
if not MATCHERS[s.matcher].reads_text:
    st.info("Matcher 'weights': the cost matrix and the assignments below come from the weights (each pair's cost is its "
            "summed matched inner products), not from correlations; the head-pair block shows activation correlations.",
            icon=":material/info:")

edges = views.head_edges(heads)
c1, c2 = st.columns(2)
with c1:
    st.plotly_chart(
        charts.cost_matrix(heads.cost, heads.assignment, heads.head_perm_assignment, f"Layer {layer}: H×H head-pair cost ({H}×{H})"),
        key="heads_cost",
    )
with c2:
    st.plotly_chart(charts.head_graph(edges, H, f"Layer {layer}: head permutation"), key="heads_graph")

if mode.keeps_heads:
    rows = views.monotonic_comparison(heads)
    st.markdown(
        f"**Monotonic vs Head-Perm, layer {layer}:** summed cost {sum(r['applied cost'] for r in rows):.2f} (monotonic) vs "
        f"{sum(r['Head-Perm cost'] for r in rows):.2f} (Head-Perm)."
    )
    st.dataframe(rows, hide_index=True)

st.subheader("All layers")
all_heads = {i: views.display_heads(stats, matching, H, i)[0] for i in range(L)}
st.plotly_chart(charts.layered_heads(views.all_layer_edges(all_heads), L, H, "Head matching in every layer"), key="heads_layers")

st.subheader("One head pair")
h1, h2 = st.columns(2)
j = h1.selectbox("A head", list(range(H)), key=f"heads_a_{layer}")
default_k = int(heads.assignment[j])
k = h2.selectbox("B head", list(range(H)), index=default_k, key=f"heads_b_{layer}_{j}",
                 format_func=lambda x: f"{x} (assigned)" if x == default_k else str(x))
block = views.head_block(stats.spaces[spaces.attention(layer)].correlation(), H, j, k, heads.inner)
st.plotly_chart(charts.head_block(block, j, k, f"Layer {layer}: A head {j} × B head {k}, {block['dk']}×{block['dk']} features"),
                key="heads_block")
moved = int((block["perm"] != np.arange(block["dk"])).sum())
st.caption(f"Inner permutation: {moved} of {block['dk']} features move; cost of this pair = {block['sum']:.3f} (sum of the diagonal on the right).")
