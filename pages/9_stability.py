"""Stability: how much matching text alignment needs (barrier and agreement against the
matching budget, head assignments per layer), and how matching on the weights alone compares
with matching on activations. Computed by permerge_core.ablation and .comparison."""

import json
from dataclasses import replace

import streamlit as st

from permerge_app import charts, ui, views
from permerge_core.ablation import ablation_csv, doubling, run_ablation
from permerge_core.comparison import compare_matchers
from permerge_core.modes import MATCHERS
from permerge_core.settings import ACTIVATIONS

ui.page_start()
st.title("Stability")
st.caption(
    "Activation matching at matching budgets that double, each from several disjoint slices of the matching text (resamples). "
    "One statistics pass per resample serves every budget (its running sums are snapshotted at each budget). Agreement: the "
    "fraction of A's units two matchings pair with the same B unit; between two disjoint resamples of a budget it says how "
    "settled that budget's matching is (against the largest budget it is 100% there by definition)."
)
p, s = ui.current()
ss = st.session_state
# Small defaults: the whole study takes well under a minute on the bundled pair (README).
for key, value in (("stability_resamples", 2), ("stability_lambdas", 5), ("stability_eval_tokens", 4096)):
    ss.setdefault(key, value)
c1, c2, c3, c4 = st.columns([3, 1, 1, 1])
# A range slider needs its default as a pair: keyed in session state alone, it came back from a
# rerun as one number.
budgets = c1.select_slider("Matching budgets (tokens, doubling)", options=[2**k for k in range(6, 18)], value=(256, 2048),
                           key="stability_budgets", format_func=lambda b: f"{b:,}", help="From the smallest to the largest budget, doubling.")
c2.number_input("Resamples", min_value=1, max_value=8, key="stability_resamples", help="Disjoint slices of the matching text per budget.")
c3.number_input("λ points", min_value=2, max_value=41, key="stability_lambdas",
                help="λ grid of the study's loss paths (the sidebar's grid is for the other pages); 5 finds the usual peak at λ = 0.5.")
c4.number_input("Eval tokens", min_value=256, step=1024, key="stability_eval_tokens", help="Evaluation tokens of the study's loss paths.")

study = replace(s, lambdas=int(ss.stability_lambdas), eval_tokens=int(ss.stability_eval_tokens), matcher=ACTIVATIONS)
if not MATCHERS[s.matcher].reads_text:
    st.info("The sidebar's matcher is weights, which reads no text: this study is of activation matching, the weights "
            "matcher's barrier is its reference line below.", icon=":material/info:")
low, high = budgets
with ui.progress():
    result = run_ablation(p, study, doubling(int(low), int(high)), int(ss.stability_resamples))
rows = result["rows"]

compare = st.toggle("Compare with weight matching (no data)", value=MATCHERS[s.matcher].compares or not MATCHERS[s.matcher].reads_text, key="stability_compare",
                    help="The weight matching of the pair, against the activation matching of the sidebar's matching tokens.")
comparison = None
if compare:
    with ui.progress():
        comparison = compare_matchers(p, study)
references = {"vanilla": result["vanilla_barrier"]}
if comparison:
    references["weight matching"] = comparison["barrier"]["weights"]

budget = f"{p.objective.scored_on(study)}, {study.lambdas} λ points"
st.plotly_chart(charts.barrier_vs_tokens(rows, references, f"Permuted barrier against matching tokens (every barrier on {budget})"),
                key="stability_barrier")
st.plotly_chart(charts.agreement_vs_tokens(rows, "Units paired alike: between disjoint resamples (solid), as by the largest budget (dotted)"),
                key="stability_agreement")
if int(high) < s.match_tokens:
    st.caption(f"The sidebar matches on {s.match_tokens:,} tokens; this study stops at {int(high):,}. To see whether the sidebar's "
               f"budget is enough, raise the largest budget toward it (each resample needs its own slice of the matching text).")
if rows[0]["head_agreement"]:
    st.plotly_chart(charts.head_agreement_heatmap(rows, "Head assignments equal to the largest budget's"), key="stability_heads")
else:
    st.caption(f"Attention mode '{s.attention}' assigns no heads, so there is no head agreement to show.")
table = views.ablation_table(result)
st.dataframe(table, hide_index=True, width="stretch", column_config={
    k: st.column_config.NumberColumn(format="%.3f") for k in table[0] if k not in ("tokens", "disjoint resamples")
})
for note in result["notes"]:
    st.caption(f"⚠ {note}")
d1, d2 = st.columns(2)
d1.download_button("Download ablation.json", json.dumps(result, indent=1), file_name="ablation.json", mime="application/json", on_click="ignore")
d2.download_button("Download ablation.csv", ablation_csv(result), file_name="ablation.csv", mime="text/csv", on_click="ignore")
st.caption("The same study from the command line: `python -m permerge_core ablate` with the align flags, "
           f"`--start-tokens {int(low)} --stop-tokens {int(high)} --resamples {int(ss.stability_resamples)} "
           f"--lambdas {int(ss.stability_lambdas)} --eval-tokens {int(ss.stability_eval_tokens)}`.")

if comparison:
    st.subheader("Activations vs weights")
    b = comparison["barrier"]
    m = st.columns(3)
    m[0].metric("vanilla barrier", f"{b['vanilla']:.3f} nats")
    m[1].metric("activations barrier", f"{b['activations']:.3f} nats", delta=f"{b['activations'] - b['vanilla']:+.3f} vs vanilla", delta_color="inverse")
    m[2].metric("weights barrier", f"{b['weights']:.3f} nats", delta=f"{b['weights'] - b['vanilla']:+.3f} vs vanilla", delta_color="inverse")
    info = comparison["weights"]["matching"]
    st.caption(f"Weight matching: {info['sweeps']} sweep(s){'' if info['converged'] else ' (stopped at the cap)'}, objective "
               f"{info['objective'][0]:.4g} → {info['objective'][-1]:.4g}, {info['seconds']:.1f} s, no text read. Activation matching: "
               f"{s.match_tokens:,} matching tokens (sidebar). Agreement: perm[i] = j, A's unit i ↔ B's unit j, in both.")
    a1, a2 = st.columns(2)
    a1.dataframe(views.comparison_rows(comparison, p.a.family, p.a.num_layers), hide_index=True, width="stretch",
                 column_config={"units alike": st.column_config.ProgressColumn(format="percent", min_value=0.0, max_value=1.0)})
    heads = views.head_assignment_rows(comparison)
    if heads:
        a2.dataframe(heads, hide_index=True, width="stretch")
