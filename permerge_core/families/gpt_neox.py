"""GPT-NeoX (Pythia's shape): a pre-LayerNorm decoder with a parallel residual, a fused per-head
q | k | v, rotary position embeddings and an untied LM head (docs/method.md §14).

- **Fused q | k | v, per head.** `attention.query_key_value` holds [q_h | k_h | v_h] for every
  head h along its output rows: each of q, k and v is `Part(k, 3, chunks=PER_HEAD)` (one chunk
  per head, the head count filled in from the config by `Family.for_config`), so its units come
  head by head, as the attention space numbers them.
- **Rotary positions stay in place.** The rotary embedding rotates the first `rotary_dims`
  features of every head's q and k (feature i with feature i + rotary_dims/2, at a frequency of
  its own). Moving any of them changes which frequency rotates which feature, or turns a
  rotation into its inverse, so they are the attention space's fixed positions
  (`ConfigKeys.rotary_fraction` → `Shape.rotary_dims` → `Space.fixed`).
- **One permutation per head for q, k and v alike.** The attention space's permutation is
  applied to a head's q, k and v features together. That keeps the function (q·k sums the same
  products, and the value features reach `attention.dense` in the order its columns now take),
  but it is stricter than the symmetry: q/k's non-rotary features and v's features could move
  independently. Separate q/k and v/o spaces are later work.
- **Parallel residual.** A layer computes x + attn(ln1 x) + mlp(ln2 x): both sublayers read the
  same node and write one sum, so the stream has one node per layer (the layer's output) after
  the embeddings' node. A sequential-residual checkpoint (`use_parallel_residual` false) is
  refused at load (`requires`), since its stream has two nodes per layer.
"""

from .schema import (
    AFTER_LAYER, BASE, CAUSAL_LM, EMBED, FINAL, LAYER_INPUT, NEXT_TOKEN, PER_HEAD,
    Capture, ConfigKeys, Encoder, Family, Head, Node, Part, Requirement, ResidualLayout, Touch, linear, norm,
)

LAYER = "layers.{i}"
QKV = 3


def _fused_qkv() -> tuple[Touch, ...]:
    """q, k and v rows of the fused projection and of its bias (absent where `attention_bias` is false)."""
    name = f"{LAYER}.attention.query_key_value"
    return tuple(
        touch
        for k in range(QKV)
        for touch in (Touch(f"{name}.weight", 0, part=Part(k, QKV, chunks=PER_HEAD)),
                      Touch(f"{name}.bias", 0, optional=True, part=Part(k, QKV, chunks=PER_HEAD)))
    )


def _writes_stream(name: str) -> tuple[Touch, ...]:
    """A sublayer's output projection: its rows and bias are on the layer's one residual node."""
    return (Touch(f"{name}.weight", 0, AFTER_LAYER), Touch(f"{name}.bias", 0, AFTER_LAYER, optional=True))


FAMILY = Family(
    name="gpt_neox",
    model_types=("gpt_neox",),
    base_prefix="gpt_neox.",
    encoder=Encoder(
        embeddings=(Touch("embed_in.weight", 1, EMBED),),  # no position table: positions are rotary
        ffn=(
            *linear(f"{LAYER}.mlp.dense_h_to_4h", 0),
            *linear(f"{LAYER}.mlp.dense_4h_to_h", 1),
        ),
        attention=(
            *_fused_qkv(),
            *linear(f"{LAYER}.attention.dense", 1),
        ),
        residual_per_layer=(
            # Both sublayers read the node before the layer (each through its own LayerNorm) and
            # write the layer's one node.
            *norm(f"{LAYER}.input_layernorm", LAYER_INPUT),
            Touch(f"{LAYER}.attention.query_key_value.weight", 1, LAYER_INPUT),
            *norm(f"{LAYER}.post_attention_layernorm", LAYER_INPUT),
            Touch(f"{LAYER}.mlp.dense_h_to_4h.weight", 1, LAYER_INPUT),
            *_writes_stream(f"{LAYER}.attention.dense"),
            *_writes_stream(f"{LAYER}.mlp.dense_4h_to_h"),
        ),
        final=norm("final_layer_norm", FINAL),
        capture_ffn=Capture(f"{LAYER}.mlp.dense_4h_to_h", "input"),
        capture_attention=Capture(f"{LAYER}.attention.dense", "input"),
        # The stream itself: the token embeddings (what the embedding dropout, the identity in
        # evaluation, passes on) and each layer's output (after the last, what the final
        # LayerNorm reads).
        capture_residual=(
            (EMBED, Capture("emb_dropout", "output")),
            (AFTER_LAYER, Capture(LAYER, "output")),
        ),
    ),
    heads={
        "GPTNeoXForCausalLM": Head(
            kind=CAUSAL_LM,
            model_class="GPTNeoXForCausalLM",
            residual=(Touch("lm_head.weight", 1, FINAL),),  # its own matrix (Pythia's), reading the last node
            mlm_module="lm_head",
            detect=("lm_head", "embed_out"),
            prediction=NEXT_TOKEN,
        ),
        "GPTNeoXModel": Head(kind=BASE, model_class="GPTNeoXModel"),
    },
    config_keys=ConfigKeys(rotary_fraction="rope_parameters.partial_rotary_factor"),
    residual_layout=ResidualLayout(per_layer=(Node(AFTER_LAYER, "layer.{i}.out", "after layer {i} (attention and FFN)"),)),
    # An lm_head tied to embed_in, only where the config ties them. (The causal-mask buffers
    # older checkpoints saved are extra tensors, not missing ones; the rotary frequencies are
    # not saved.)
    may_lack=("lm_head.weight",),
    # Pythia's checkpoints, and transformers' own save_pretrained, store lm_head as embed_out.
    renamed=(("embed_out.", "lm_head."),),
    tied_only=("lm_head.weight",),
    packed_text=True,
    requires=(
        Requirement(
            "use_parallel_residual", True,
            "a sequential-residual GPT-NeoX writes the stream twice per layer, and permerge declares only the parallel residual",
            "Use a checkpoint with use_parallel_residual true (every Pythia model), or align sequential-residual models once permerge supports them.",
        ),
    ),
)
