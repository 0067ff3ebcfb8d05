"""Export: the merged model at a chosen λ (to a folder or as a zip), report.json, the
permutations, and the exact CLI command that reproduces the current view."""

import json

import streamlit as st

from permerge_app import ui
from permerge_core import PermergeError, export
from permerge_core.cli import command_line

ui.page_start()
st.title("Export")
p, s = ui.current()
ss = st.session_state
ss.setdefault("export_lambda", 0.5)
ss.setdefault("export_target", "")

lam = st.slider("λ of the merged model", 0.0, 1.0, step=0.05, key="export_lambda",
                help="θ(λ) = λ·A + (1−λ)·B′: λ = 1 is exactly A, λ = 0 exactly B′ (B aligned to A).")
st.caption(f"The merged model is θ(λ={lam:g}) = {lam:g}·A + {1 - lam:g}·B′ with the sidebar's merge settings, saved with A's tokenizer.")

st.subheader("Merged model")
c1, c2 = st.columns([3, 1])
target = c1.text_input("Save to folder", key="export_target", placeholder="/path/to/merged-model")
overwrite = c2.checkbox("Overwrite if not empty", key="export_overwrite", help="Off: a folder that already holds files is never touched.")
repair = st.checkbox("Apply the REPAIR correction", key="export_repair",
                     help="Rescale and shift each FFN unit of θ(λ) so that its mean and std on the matching text are the λ-interpolation "
                          "of A's and B′'s (docs/method.md §11). Off: the plain θ(λ). Independent of the sidebar's REPAIR curve setting.")
if st.button("Save merged model", disabled=not target.strip(), type="primary"):
    try:
        with ui.progress(), st.spinner("Writing the merged model…"):
            out = p.save_merged(s, lam, target.strip(), overwrite=overwrite, repair=repair)
        st.success(f"Wrote θ(λ={lam:g}){' REPAIR-corrected' if repair else ''} to {out}. Load it with transformers' "
                   f"{p.a.architecture}.from_pretrained(…).", icon=":material/check_circle:")
    except PermergeError as err:
        ui.show_error(err)

with ui.progress():
    merged, ends = p.merged_loss(s, lam, repair), p.loss_of_a(s)
m = st.columns(3)
m[0].metric(f"loss of θ(λ={lam:g}){' + REPAIR' if repair else ''}", f"{merged['loss']:.3f} nats",
            delta=f"{merged['loss'] - ends['loss']:+.3f} vs A", delta_color="inverse")
m[1].metric("L(A), λ = 1", f"{ends['loss']:.3f} nats")
st.caption(f"The {p.objective.loss_name} of the model this page exports, evaluated on {p.objective.scored_on(s)} "
           "(the data the Loss path page's curves are scored on).")

zip_key = (ss.model_a, ss.model_b, repr(s), lam, repair)
if st.button("Prepare the merged model as a zip"):
    with ui.progress(), st.spinner("Building the zip…"):
        ss["export_zip"] = (zip_key, export.merged_zip(p, s, lam, repair=repair))
held = ss.get("export_zip")
if held and held[0] == zip_key:
    st.download_button(f"Download merged model (zip, {len(held[1]) / 2**20:.1f} MB)", held[1], file_name=f"permerge-merged-lambda-{lam:g}.zip",
                       mime="application/zip", on_click="ignore")

st.subheader("Permutations and report")
stats, matching = ui.statistics_and_matching(p, s)
st.download_button("Download permutations (JSON)", json.dumps(export.permutations_payload(matching), indent=1), file_name="permutations.json",
                   mime="application/json", on_click="ignore", help="perm[i] = j: A's unit i ↔ B's unit j, for every space; head assignments and costs.")
status = p.stage_status(s)
ready = all(status[k] in ("computed", "cached") for k in ("vanilla path", "permuted path"))
if ready or st.button("Compute the full report (both loss paths)"):
    with ui.progress():
        files = export.report_files(p.run(s))
    r1, r2 = st.columns(2)
    r1.download_button("Download report.json", files["report.json"], file_name="report.json", mime="application/json", on_click="ignore")
    r2.download_button("Download curve.csv", files["curve.csv"], file_name="curve.csv", mime="text/csv", on_click="ignore")
else:
    st.caption("report.json needs both loss paths; they are not computed for these settings yet (the Loss path page computes them).")

st.subheader("The same analysis from the command line")
command = command_line(ui.inputs_for(ss.model_a, ss.model_b), s, out="runs/latest", save_merged=target.strip() or None,
                       merge_lambda=lam, merge_repair=repair)
st.code(command, language="bash", wrap_lines=True)
st.caption("Writes runs/latest/report.json and curve.csv" + (f", and the merged model at λ={lam:g}" if target.strip() else "")
           + ". It shares the disk cache with the app, so what the app computed is reused.")
