"""RoBERTa: BERT's encoder (bert.py) under another prefix, with its own heads and positions."""

from .bert import BERT_STYLE, base_head, classifier_head, mlm_head
from .schema import ConfigKeys, Family

FAMILY = Family(
    name="roberta",
    model_types=("roberta",),
    base_prefix="roberta.",
    heads={
        "RobertaForMaskedLM": mlm_head("RobertaForMaskedLM", "lm_head.dense", "lm_head.layer_norm", "lm_head.decoder.weight",
                                       module="lm_head", detect=("lm_head",)),
        "RobertaModel": base_head("RobertaModel"),
        # RoBERTa's classifier reads the <s> hidden state directly (no pooler).
        "RobertaForSequenceClassification": classifier_head("RobertaForSequenceClassification", reads="classifier.dense.weight"),
    },
    aliases={"RobertaForCausalLM": "RobertaForMaskedLM"},
    config_keys=ConfigKeys(position_offset=2),  # positions count from padding_idx + 1
    **BERT_STYLE,
)
