"""RoBERTa: BERT's encoder (bert.py) under another prefix, with its own heads and positions."""

from .bert import BERT_STYLE, mlm_transform
from .schema import BASE, CLASSIFICATION, FINAL, MASKED_LM, MLM, ConfigKeys, Family, Head, Touch

FAMILY = Family(
    name="roberta",
    model_types=("roberta",),
    base_prefix="roberta.",
    heads={
        "RobertaForMaskedLM": Head(
            kind=MLM,
            model_class="RobertaForMaskedLM",
            residual=(
                *mlm_transform("lm_head.dense", "lm_head.layer_norm"),
                Touch("lm_head.decoder.weight", 1, FINAL),
            ),
            mlm_module="lm_head",
            detect=("lm_head",),
            prediction=MASKED_LM,
            tied_decoder=True,
        ),
        "RobertaModel": Head(
            kind=BASE,
            model_class="RobertaModel",
            residual=(Touch("pooler.dense.weight", 1, FINAL, optional=True),),
        ),
        "RobertaForSequenceClassification": Head(
            kind=CLASSIFICATION,
            model_class="RobertaForSequenceClassification",
            # RoBERTa's classifier reads the <s> hidden state directly (no pooler).
            residual=(Touch("classifier.dense.weight", 1, FINAL),),
            detect=("classifier",),
        ),
    },
    aliases={"RobertaForCausalLM": "RobertaForMaskedLM"},
    config_keys=ConfigKeys(position_offset=2),  # positions count from padding_idx + 1
    **BERT_STYLE,
)
