"""About the method: a short, correct explanation for a class, each idea linked to the page
that shows it."""

import streamlit as st

from permerge_app import ui


def see(page: str, label: str) -> None:
    st.page_link(ui.PAGES[page], label=f"See it: {label}", icon=":material/arrow_forward:")


ui.page_start()
st.title("About the method")
st.markdown(
    "permerge implements Verma & Elbayad (2024), *Merging Text Transformer Models from Different Initializations* "
    "(TMLR, arXiv 2403.00986), with two bugs of the authors' code fixed (below)."
)

st.header("1. The loss barrier")
st.markdown(
    "Two masked language models A and B with the same architecture, trained from different random seeds, reach "
    "similar losses in different places of weight space. Average their weights along a straight line:"
)
st.latex(r"\theta(\lambda) = \lambda\,\theta_A + (1-\lambda)\,\theta_B, \qquad \lambda \in [0, 1]")
st.markdown("and measure the loss along it. The **loss barrier** is how far the path rises above its endpoints:")
st.latex(r"\text{barrier} = \max_{\lambda} \mathcal{L}\big(\theta(\lambda)\big) - \tfrac12\big(\mathcal{L}(\theta_A) + \mathcal{L}(\theta_B)\big)")
st.markdown(
    "A barrier near 0 means A and B sit in one connected low-loss basin (they are *linearly mode connected*). Here "
    "𝓛 is the masked-LM cross-entropy in nats on held-out text, with the masks drawn once and reused at every λ."
)
see("loss_path", "vanilla and permuted loss paths with their barriers")

st.header("2. Why permuting units does not change the function")
st.markdown(
    "Hidden units have no fixed order. In a feed-forward block, reorder the intermediate units with a permutation "
    "matrix P: permute the rows of the first layer and the columns of the second. Since GELU acts element by element, "
    "σ(Pz) = Pσ(z), and PᵀP = I:"
)
st.latex(r"W_2 P^\top \, \sigma\!\big(P W_1 x + P b_1\big) + b_2 \;=\; W_2\, \sigma(W_1 x + b_1) + b_2")
st.markdown(
    "So B′, B with its units permuted, computes **exactly** B's function, yet its weights may be much closer to A's. "
    "Part of the vanilla barrier is therefore an artefact of unit order. permerge checks this on every run: B′'s "
    "logits equal B's up to float rounding (the *functional-equivalence badge*)."
)
see("models", "the equivalence badge and endpoint losses")

st.header("3. Matching units by correlation")
st.markdown(
    "Run A and B on the same tokens and record, for every permutable space, each unit's activations. "
    "The cross-correlation of A's unit i with B's unit j is"
)
st.latex(r"C_{ij} = \frac{\operatorname{cov}(a_i, b_j)}{\sigma(a_i)\,\sigma(b_j)}")
st.markdown("and the permutation maximises the summed correlation of matched pairs (a linear assignment problem):")
st.latex(r"\pi^\star = \arg\max_{\pi} \sum_i C_{i,\pi(i)}, \qquad \text{convention: } \texttt{perm}[i] = j \text{ means A's unit } i \leftrightarrow \text{B's unit } j")
st.markdown(
    "Correlation is signed by default: a permutation cannot flip a unit's sign (|C| is an option)."
)
see("correlations", "A×B correlation before and after alignment")

st.header("4. Matching attention heads (Head-Perm)")
st.markdown(
    "The attention context is H heads of d_k features each. Softmax mixes features *within* a head, so a valid "
    "permutation may reorder heads and features inside a head, but never move a feature to another head "
    "(Q, K and V get the same permutation). Head-Perm splits C into H×H blocks $C^{(j,k)}$ of size $d_k \\times d_k$, solves an "
    "inner assignment for every head pair, and then an outer assignment on the H×H cost matrix:"
)
st.latex(r"\text{cost}(j,k) = \max_{\sigma} \sum_{a=1}^{d_k} C^{(j,k)}_{a,\sigma(a)}, \qquad \text{head map} = \arg\max_{\tau} \sum_j \text{cost}\big(j, \tau(j)\big)")
st.markdown(
    "*Monotonic* keeps head j ↔ head j (inner assignment only); *ignore-heads* does one d_model×d_model assignment "
    "that can move features across heads: **not** function-preserving, an ablation."
)
see("heads", "cost matrices, head graphs and head-pair blocks")

st.header("5. The residual stream")
st.markdown(
    "Every sublayer adds into the residual stream, so one permutation must serve all of it: the embeddings, every "
    "sublayer's output rows, every LayerNorm (which is equivariant to a permutation of its features) and every "
    "consumer's input columns. Variants choose which correlation defines it: *first* (after the embedding LayerNorm), "
    "*last*, *all* (averaged over nodes). *sep* uses a different permutation per node: **not** function-preserving."
)
see("loss_path", "component variants (FFN only, attention only, + residual variants)")

st.header("6. Two bugs of the authors' code that permerge does not copy")
st.markdown(
    "1. **Tied decoder direction.** The MLM decoder shares the word-embedding matrix, which the residual permutation "
    "has already reordered. The authors' code restores the decoder in the wrong direction, so their 'permuted B' is "
    "not B's function and their residual barriers are inflated (this may explain why the paper found the identity "
    "residual best). permerge also permutes the MLM head's transform output by the same permutation, so B′ is "
    "exactly B.\n"
    "2. **Endpoint scaling.** The authors' merge matrices scale both endpoints by ≈0.999995. permerge scales nothing: "
    "λ = 1 is bitwise A and λ = 0 bitwise B′."
)
see("models", "B′ = B, checked on every run")

st.header("7. More than two models")
st.markdown(
    "With several seeds, every pair has a vanilla and a permuted barrier. If permutation alignment explains most of "
    "the barrier, the permuted matrix is uniformly lower than the vanilla one."
)
see("seeds", "pairwise barrier matrices")

st.header("8. Decoder-only models (GPT-2)")
st.markdown(
    "The same method applies to GPT-2-style causal language models, described by the same kind of data. Three "
    "differences matter:\n\n"
    "- **Pre-LayerNorm.** Each sublayer reads the stream through its own LayerNorm (`ln_1`, `ln_2`) and adds its "
    "output to the stream un-normalised; `ln_f` normalises it once before the vocabulary projection. The residual "
    "permutation covers the token and position embeddings (`wte`, `wpe`), every LayerNorm, the input rows of "
    "`c_attn` and `c_fc`, the output columns and biases of both `c_proj`, and the output projection `lm_head` "
    "(the same tensor as `wte`). Its nodes are the stream itself: *first* reads the embeddings' sum, *last* the "
    "stream after the last block (what `ln_f` reads), *all* averages every node.\n"
    "- **Fused q | k | v.** `c_attn` holds the three projections in one matrix, stored [in, out]; the attention "
    "permutation is applied to each third, so q, k and v stay aligned with each other, as in BERT.\n"
    "- **Next-token loss.** Every token predicts the one after it; the evaluation text is packed (every line "
    "followed by the end-of-text token, the stream cut into blocks of the maximum length), the standard causal-LM "
    "protocol. Accuracy is the fraction of next tokens predicted exactly."
)
st.latex(r"\mathcal{L}(\theta) = -\frac{1}{N} \sum_{s} \sum_{t=1}^{n_s - 1} \log p_\theta\big(x_{s,t+1} \mid x_{s,1}, \dots, x_{s,t}\big)")
see("loss_path", "next-token loss and accuracy along the path (pick a decoder pair in the sidebar)")
