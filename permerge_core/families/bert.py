"""BERT: a post-LayerNorm encoder with a tied masked-LM head; its encoder is shared by RoBERTa."""

from .schema import (
    AFTER_ATTENTION, AFTER_FFN, BASE, CLASSIFICATION, EMBED, FINAL, LAYER_INPUT, MASKED_LM, MLM,
    Capture, Encoder, Family, FastPath, Head, Touch, Training, linear, norm,
)

LAYER = "encoder.layer.{i}"

ENCODER = Encoder(
    embeddings=(
        Touch("embeddings.word_embeddings.weight", 1, EMBED),
        Touch("embeddings.position_embeddings.weight", 1, EMBED),
        Touch("embeddings.token_type_embeddings.weight", 1, EMBED),
        *norm("embeddings.LayerNorm", EMBED),
    ),
    ffn=(
        *linear(f"{LAYER}.intermediate.dense", 0),
        *linear(f"{LAYER}.output.dense", 1),
    ),
    attention=(
        # Q and K take the same permutation as V: the head map comes from the context
        # features, and within a head Q and K only have to agree with each other.
        *linear(f"{LAYER}.attention.self.query", 0),
        *linear(f"{LAYER}.attention.self.key", 0),
        *linear(f"{LAYER}.attention.self.value", 0),
        *linear(f"{LAYER}.attention.output.dense", 1),
    ),
    residual_per_layer=(
        *linear(f"{LAYER}.attention.self.query", 1, LAYER_INPUT),
        *linear(f"{LAYER}.attention.self.key", 1, LAYER_INPUT),
        *linear(f"{LAYER}.attention.self.value", 1, LAYER_INPUT),
        *linear(f"{LAYER}.attention.output.dense", 0, AFTER_ATTENTION),
        *norm(f"{LAYER}.attention.output.LayerNorm", AFTER_ATTENTION),
        *linear(f"{LAYER}.intermediate.dense", 1, AFTER_ATTENTION),
        *linear(f"{LAYER}.output.dense", 0, AFTER_FFN),
        *norm(f"{LAYER}.output.LayerNorm", AFTER_FFN),
    ),
    capture_ffn=Capture(f"{LAYER}.output.dense", "input"),
    capture_attention=Capture(f"{LAYER}.attention.output.dense", "input"),
    capture_residual=(
        (EMBED, Capture("embeddings.LayerNorm", "output")),
        (AFTER_ATTENTION, Capture(f"{LAYER}.attention.output.LayerNorm", "output")),
        (AFTER_FFN, Capture(f"{LAYER}.output.LayerNorm", "output")),
    ),
)

FAST_PATH = FastPath(
    tail=(f"{LAYER}.attention.output", f"{LAYER}.intermediate", f"{LAYER}.output"),
    self_attention=f"{LAYER}.attention.self",
)


def mlm_transform(prefix: str, norm_prefix: str) -> tuple[Touch, ...]:
    """The MLM head transform, with its output space permuted too.

    The decoder is tied to the word embeddings, whose columns the residual permutation has
    already moved. Permuting the transform's output (dense rows, bias, LayerNorm) by the same
    permutation makes the tied decoder line up, so B' computes exactly B's function. (The
    authors' code restores the decoder in the wrong direction instead; see docs/method.md §5.)
    """
    return (
        Touch(f"{prefix}.weight", 1, FINAL),
        Touch(f"{prefix}.weight", 0, FINAL),
        Touch(f"{prefix}.bias", 0, FINAL),
        *norm(norm_prefix, FINAL),
    )


def mlm_head(model_class: str, dense: str, norm_prefix: str, decoder: str, module: str, detect: tuple[str, ...]) -> Head:
    """A BERT-style masked-LM head: the transform (`mlm_transform`) and a decoder tied to the
    word embeddings, whose input columns are the stream's last node."""
    return Head(kind=MLM, model_class=model_class, residual=(*mlm_transform(dense, norm_prefix), Touch(decoder, 1, FINAL)),
                mlm_module=module, detect=detect, prediction=MASKED_LM, tied_decoder=True)


def base_head(model_class: str) -> Head:
    """The bare encoder, with the pooler some checkpoints keep (it reads the stream's last node)."""
    return Head(kind=BASE, model_class=model_class, residual=(Touch("pooler.dense.weight", 1, FINAL, optional=True),))


def classifier_head(model_class: str, reads: str) -> Head:
    """A sequence classifier; `reads` is the first weight that reads the stream's last node."""
    return Head(kind=CLASSIFICATION, model_class=model_class, residual=(Touch(reads, 1, FINAL),), detect=("classifier",))


# What every BERT-style family shares besides its encoder.
BERT_STYLE = dict(
    encoder=ENCODER,
    fast_path=FAST_PATH,
    may_lack=("position_ids", "decoder.weight", "decoder.bias", "token_type_ids", "pooler"),
    tied_only=("decoder.weight", "decoder.bias"),
    renamed=(("LayerNorm.gamma", "LayerNorm.weight"), ("LayerNorm.beta", "LayerNorm.bias")),
)

FAMILY = Family(
    name="bert",
    model_types=("bert",),
    base_prefix="bert.",
    heads={
        "BertForMaskedLM": mlm_head("BertForMaskedLM", "cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
                                    "cls.predictions.decoder.weight", module="cls", detect=("cls.predictions",)),
        "BertModel": base_head("BertModel"),
        "BertForSequenceClassification": classifier_head("BertForSequenceClassification", reads="bert.pooler.dense.weight"),
    },
    aliases={"BertForPreTraining": "BertForMaskedLM", "BertLMHeadModel": "BertForMaskedLM"},
    training=Training(
        config_class="BertConfig",
        head="BertForMaskedLM",
        tokenizer="tokenizer",
        dropout=("hidden_dropout_prob", "attention_probs_dropout_prob"),
        token_ids=("pad_token_id",),
    ),
    **BERT_STYLE,
)
