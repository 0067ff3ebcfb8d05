"""Seeds: pairwise barriers between several checkpoints of one architecture (the bundled seeds
by default), vanilla and permuted side by side, filled pair by pair and cached per pair."""

import streamlit as st

from permerge_app import charts, ui, views
from permerge_core import PermergeError, grid
from permerge_core.checkpoints import bundled_decoders, bundled_seeds
from permerge_core.sources import short_names

ui.page_start()
st.title("Seeds")
st.caption(
    "Barrier of every pair (row = A, column = B; only pairs with A listed before B are computed, since B is aligned to A). "
    "Uses the sidebar's data and merge settings; fewer λ points compute faster."
)
ss = st.session_state
options = ui.checkpoint_options()
if "seeds_selected" not in ss:  # the bundled set model A is one of (seeds or decoders), else the seeds
    groups = [[str(x) for x in group] for group in (bundled_seeds(), bundled_decoders())]
    ss["seeds_selected"] = next((g for g in groups if ss.get("model_a") in g), groups[0]) or options[:3]
chosen = st.multiselect("Checkpoints to compare", options, key="seeds_selected", format_func=ui.model_label,
                        help="Bundled seeds and checkpoints under the sidebar's models folder.")
if len(chosen) < 2:
    if len(bundled_seeds()) < 2:
        st.info("The bundled seed models are not in assets/models yet; set a models folder in the sidebar to list other checkpoints.", icon=":material/info:")
    st.info("Choose at least two checkpoints.", icon=":material/info:")
    raise ui.Halt

s = ui.settings()
names = short_names(chosen)
results = ui.seed_results()
pairs = grid.pair_indices(len(chosen))
keys = {(i, j): ui.seed_key(chosen[i], chosen[j], s) for i, j in pairs}
done = {ij: results[k] for ij, k in keys.items() if k in results}
for i, j in pairs:  # pairs another page computed: their pipeline has both curves already
    p = ui.loaded_pipeline(chosen[i], chosen[j]) if (i, j) not in done else None
    known = views.known_pair_barriers(p, s) if p is not None else None
    if known is not None:
        results[keys[(i, j)]] = done[(i, j)] = known

chart = st.empty()


def draw():
    ok = {ij: r for ij, r in done.items() if "error" not in r}
    chart.plotly_chart(
        charts.seed_heatmaps(names, grid.seed_matrix(len(chosen), ok, "vanilla"), grid.seed_matrix(len(chosen), ok, "permuted"),
                             f"Pairwise loss barriers (nats), {len(ok)} of {len(pairs)} pairs computed"),
        key=f"seeds_matrix_{len(done)}",
    )


draw()
missing = [ij for ij in pairs if ij not in done]
if missing and st.button(f"Compute {len(missing)} missing pair(s)", type="primary", key="seeds_go"):
    # The grid command's own code (engine local), on the app's shared pipelines.
    overall = st.progress(0.0, text=f"pair 1 of {len(missing)}")
    tasks = [grid.PairTask(ui.inputs_for(chosen[i], chosen[j]), ((grid.DEFAULT_VARIANT, s),)) for i, j in missing]
    with ui.progress():
        for n, (k, cell, _) in enumerate(grid.LocalEngine(pipeline_for=ui.pipeline_for).run(tasks), start=1):
            overall.progress(n / len(missing), text=f"{n} of {len(missing)} pairs done")
            results[keys[missing[k]]] = done[missing[k]] = grid.cell_barriers(cell)
            draw()
    st.rerun()  # redraw without the button and the progress bars

rows = [
    {"A": names[i], "B": names[j], "vanilla barrier (nats)": r.get("vanilla"), "permuted barrier (nats)": r.get("permuted"),
     "problem": r.get("error", "")}
    for (i, j), r in sorted(done.items())
]
if rows:
    spread = grid.pair_spread([r for r in done.values() if "error" not in r])
    if spread["pairs"]:
        sd = lambda v: "" if v is None else f" ± {v:.3f}"  # noqa: E731 (one pair: no spread)
        m = st.columns(3)
        m[0].metric(f"vanilla barrier, mean{' ± sd' if spread['pairs'] > 1 else ''} over {spread['pairs']} pair(s)",
                    f"{spread['vanilla_mean']:.3f}{sd(spread['vanilla_std'])} nats")
        m[1].metric("permuted barrier", f"{spread['permuted_mean']:.3f}{sd(spread['permuted_std'])} nats")
        m[2].metric("share of the vanilla barrier removed", "—" if spread["removed"] is None else f"{spread['removed']:.0%}")
    if not any(r["problem"] for r in rows):
        rows = [{k: v for k, v in r.items() if k != "problem"} for r in rows]
    st.dataframe(rows, hide_index=True, width="stretch")
for row in rows:
    if row.get("problem"):
        st.error(f"{row['A']} ↔ {row['B']}: {row['problem']}", icon=":material/error:")

ok_pairs = [ij for ij, r in sorted(done.items()) if "error" not in r]
if ok_pairs:
    st.subheader("Open a pair")
    pick = st.selectbox("Pair", ok_pairs, format_func=lambda ij: f"{names[ij[0]]} (A) ↔ {names[ij[1]]} (B)", key="seeds_pick")
    b1, b2 = st.columns(2)
    if b1.button("Open its loss path", width="stretch"):
        ui.request("loss_path", model_a=chosen[pick[0]], model_b=chosen[pick[1]])
    if b2.button("Open its heads", width="stretch"):
        ui.request("heads", model_a=chosen[pick[0]], model_b=chosen[pick[1]])

with st.expander("Load a grid.json computed elsewhere"):
    st.caption("`python -m permerge_core grid --models … --out DIR` (on this machine or a Ray cluster) writes DIR/grid.json; "
               "docs/grid.md says how.")
    upload = st.file_uploader("grid.json", type=["json"], key="seeds_grid_file")
    if upload is not None:
        try:
            loaded = grid.load_grid(upload.getvalue())
        except PermergeError as err:
            ui.show_error(err)
        else:
            labels = [row["variant"] for row in loaded["table"]]
            variant = st.selectbox("Variant", labels, key="seeds_grid_variant") if len(labels) > 1 else labels[0]
            st.plotly_chart(
                charts.seed_heatmaps(short_names(loaded["models"]), grid.matrix(loaded, "vanilla", variant),
                                     grid.matrix(loaded, "permuted", variant),
                                     f"{variant}: {len(loaded['pairs'])} pairs from {upload.name} (engine {loaded['engine']})"),
                key="seeds_grid_matrix",
            )
            st.dataframe(loaded["table"], hide_index=True, width="stretch")
