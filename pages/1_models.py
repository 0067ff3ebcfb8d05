"""Models: both checkpoints side by side, whether they can be aligned, endpoint losses, and
whether B′ (B permuted into A's order) computes the same function as B."""

import streamlit as st

from permerge_app import ui, views
from permerge_core import PermergeError
from permerge_core.objectives import LabelledTaskObjective

ui.page_start()
st.title("Models")
st.caption("Model A and model B side by side, whether B can be aligned to A, and what the alignment does to B.")
ss = st.session_state
if not ss.get("model_a") or not ss.get("model_b"):
    ui.missing_models_message()
    raise ui.Halt

problem = None
try:
    s = ui.settings()
    p = ui.pipeline_for(ss.model_a, ss.model_b)
    desc = {"A": p.a.describe(), "B": p.b.describe()}
except PermergeError as err:  # incompatible pair, unreadable checkpoint or data, bad setting
    p, problem, desc = None, err, {}
    for name, key in (("A", "model_a"), ("B", "model_b")):
        try:
            desc[name] = ui.describe(ss[key], ss.get("tokenizer") or "")
        except PermergeError as load_err:
            desc[name] = None
            if load_err.problem != err.problem:
                st.error(f"Model {name} cannot be read.", icon=":material/error:")
                ui.show_error(load_err)

cols = st.columns(2)
for col, name in zip(cols, ("A", "B")):
    col.subheader(f"Model {name}")
    col.markdown(f"`{ui.model_label(ss['model_a' if name == 'A' else 'model_b'])}`")
st.dataframe(views.describe_rows(desc.get("A"), desc.get("B")), hide_index=True, width="stretch")

st.subheader("Compatibility")
if problem is not None:
    ui.show_error(problem)
    raise ui.Halt
st.success(
    f"Compatible: both are {desc['A']['architecture']} with {desc['A']['layers']} layers, hidden size {desc['A']['hidden']}, "
    f"{desc['A']['heads']} heads and FFN size {desc['A']['ffn']}, with the same tokenizer vocabulary. B can be aligned to A.",
    icon=":material/check_circle:",
)

objective = p.objective  # what the losses below are: a language model's, or a classifier's on its labelled task
classifier = isinstance(objective, LabelledTaskObjective)
if classifier:
    columns = objective.task
    st.subheader("Labelled data")
    _, rows = ui.labelled_preview(p.eval_path)
    st.markdown(
        f"Evaluation file `{p.eval_path}`: {len(objective.data.texts):,} examples; text column **{columns.text_column}**"
        + (f", second sentence **{columns.pair_column}**" if columns.pair_column else "")
        + f", label column **{columns.label_column}**. Matching texts from `{p.match_path}`."
    )
    st.dataframe(rows, hide_index=True, width="stretch")
    st.dataframe(views.label_balance(objective.data), hide_index=True)

st.subheader("Endpoint losses and functional equivalence")
with ui.progress():
    max_diff = p.equivalence(s)
    losses = views.endpoint_losses(p, s)
metric = objective.metric_label("accuracy")


def detail(key: str) -> str | None:
    value = losses.get(f"{key}_accuracy")
    return None if value is None else f"{metric} {value:.3f}"


m = st.columns(3)
m[0].metric("L(A), λ = 1", f"{losses['a']:.4f} nats", help=detail("a"))
m[1].metric("L(B), λ = 0 vanilla", f"{losses['b']:.4f} nats", help=detail("b"))
m[2].metric("L(B′), λ = 0 permuted", f"{losses['b_prime']:.4f} nats", delta=f"{losses['b_prime'] - losses['b']:+.1e} vs B", delta_color="off",
            help=detail("b_prime"))
if classifier and losses.get("a_accuracy") is not None:
    a1, a2, a3 = st.columns(3)
    a1.metric("accuracy of A", f"{losses['a_accuracy']:.1%}")
    a2.metric("accuracy of B", f"{losses['b_accuracy']:.1%}")
    a3.metric("majority-class baseline", f"{views.majority_baseline(objective.data):.1%}")
ok, text = views.equivalence_text(max_diff, s.attention, s.residual)
(st.success if ok else st.warning)(text, icon=":material/check_circle:" if ok else ":material/warning:")
st.caption(objective.explanation + " The equivalence check compares B′'s and B's logits on one evaluation batch.")
