"""GPT-2: a pre-LayerNorm decoder with Conv1D weights and an LM head tied to its embeddings.

Conv1D stores [in, out]: a producer has its space on axis 1 (and its bias), a consumer on
axis 0. `c_attn` is q | k | v along its output axis; each third takes the attention
permutation, as BERT's query, key and value do."""

from .schema import (
    AFTER_ATTENTION, AFTER_FFN, BASE, CAUSAL_LM, EMBED, FINAL, LAYER_INPUT, NEXT_TOKEN,
    Capture, ConfigKeys, Encoder, Family, Head, Part, Touch, Training, conv1d, norm,
)

BLOCK = "h.{i}"
QKV = 3

FAMILY = Family(
    name="gpt2",
    model_types=("gpt2",),
    base_prefix="transformer.",
    encoder=Encoder(
        embeddings=(
            Touch("wte.weight", 1, EMBED),
            Touch("wpe.weight", 1, EMBED),
        ),
        ffn=(
            *conv1d(f"{BLOCK}.mlp.c_fc", "out"),
            *conv1d(f"{BLOCK}.mlp.c_proj", "in"),
        ),
        attention=(
            *(t for k in range(QKV) for t in conv1d(f"{BLOCK}.attn.c_attn", "out", part=Part(k, QKV))),
            *conv1d(f"{BLOCK}.attn.c_proj", "in"),
        ),
        residual_per_layer=(
            # Pre-LN: a layer reads the stream through ln_1, writes its attention output into it,
            # reads it again through ln_2 and writes its FFN output.
            *norm(f"{BLOCK}.ln_1", LAYER_INPUT),
            *conv1d(f"{BLOCK}.attn.c_attn", "in", LAYER_INPUT),
            *conv1d(f"{BLOCK}.attn.c_proj", "out", AFTER_ATTENTION),
            *norm(f"{BLOCK}.ln_2", AFTER_ATTENTION),
            *conv1d(f"{BLOCK}.mlp.c_fc", "in", AFTER_ATTENTION),
            *conv1d(f"{BLOCK}.mlp.c_proj", "out", AFTER_FFN),
        ),
        final=norm("ln_f", FINAL),
        capture_ffn=Capture(f"{BLOCK}.mlp.c_proj", "input"),
        capture_attention=Capture(f"{BLOCK}.attn.c_proj", "input"),
        # The stream itself (pre-LN: no LayerNorm sits on it): the embeddings' sum (what dropout,
        # the identity in evaluation, passes on), the sum after each attention (what ln_2 reads)
        # and after each FFN (the block's output; after the last block, what ln_f reads).
        capture_residual=(
            (EMBED, Capture("drop", "output")),
            (AFTER_ATTENTION, Capture(f"{BLOCK}.ln_2", "input")),
            (AFTER_FFN, Capture(BLOCK, "output")),
        ),
    ),
    heads={
        "GPT2LMHeadModel": Head(
            kind=CAUSAL_LM,
            model_class="GPT2LMHeadModel",
            residual=(Touch("lm_head.weight", 1, FINAL),),  # tied to wte: one tensor, one permutation
            mlm_module="lm_head",
            detect=("lm_head",),
            prediction=NEXT_TOKEN,
            tied_decoder=True,
        ),
        "GPT2Model": Head(kind=BASE, model_class="GPT2Model"),
    },
    config_keys=ConfigKeys(layers="n_layer", hidden="n_embd", heads="n_head", ffn="n_inner", ffn_multiple=4, positions="n_positions"),
    # The causal-mask buffers that older transformers saved, and the tied lm_head that
    # checkpoints (the hub's gpt2 among them) leave out.
    may_lack=(".attn.bias", ".attn.masked_bias", "lm_head.weight"),
    tied_only=("lm_head.weight",),
    packed_text=True,
    training=Training(
        config_class="GPT2Config",
        head="GPT2LMHeadModel",  # lm_head tied to the token embeddings (transformers' default)
        tokenizer="tokenizer-bpe",
        dropout=("resid_pdrop", "embd_pdrop", "attn_pdrop"),
        token_ids=("bos_token_id", "eos_token_id", "pad_token_id"),  # all the end-of-text token
    ),
)
