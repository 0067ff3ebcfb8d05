"""What a loss path scores: a language model's loss on text, or a classifier's on labelled examples.

A pipeline has one objective, chosen by model A's head (`objective_for`). Both kinds answer the
same questions, so no stage, report or page asks which kind it has:

    passages            the evaluation data's identity (its fingerprint is in every cache key)
    packing_applies     whether the `eval_packing` setting shapes the evaluation
    uses_eval_tokens    whether the `eval_tokens` budget does
    batches(s, …)       the evaluation batches (the pipeline memoises them)
    evaluate(model, …)  loss and metrics of one model on those batches
    sequences(…)        the token batches the models read (the equivalence check's input)
    model_inputs(…)     keyword inputs of a forward pass (the activation spreads' input)
    report_eval(s, …)   report.json's "eval" fields;  report_curves(paths): its extra curves
    loss_name, metrics, metric_label, explanation, scored_on, path_caption: how pages name it

`LanguageModelObjective` scores the family's language-model head (masked or next token) on a
token budget of plain text; `LabelledTaskObjective` scores a sequence classifier (or regressor)
on every example of a labelled file. `data_for` picks the files each kind reads by default.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Callable

from .checkpoints import BUNDLED_TASK, Checkpoint, is_bundled_classifier
from .data import DEFAULT_EVAL_DATA, DEFAULT_MATCH_DATA, prediction_batches, read_passages
from .errors import SettingsError
from .evaluation import mlm_loss
from .families.schema import CLASSIFICATION
from .settings import TaskSpec
from .tasks import LabelledData, encode, label_names, load_labelled, task_eval, task_metric_names

METRIC_LABELS = {"accuracy": "accuracy", "f1": "F1", "mcc": "Matthews correlation", "pearson": "Pearson correlation"}

# token_batches(passages, budget, s, what): the pipeline's batching, as the family reads text.
TokenBatcher = Callable[[list[str], int, object, str], object]


class LanguageModelObjective:
    """The family's language-model loss (masked tokens or the next token, `Prediction`) on a
    token budget of the evaluation text; masks are drawn once per settings, from the mask seed."""

    task: TaskSpec | None = None
    data: LabelledData | None = None  # no labelled examples
    uses_eval_tokens = True

    def __init__(self, checkpoint: Checkpoint, passages: list[str]):
        self.checkpoint, self.passages = checkpoint, passages
        self.prediction = checkpoint.head.prediction  # None: a bare model, which has no loss

    @property
    def packing_applies(self) -> bool:
        """Masked LMs only: decoders always read packed blocks."""
        return not self.checkpoint.family.packed_text

    def require_loss(self) -> None:
        if self.prediction is None:
            raise SettingsError(
                f"Loss paths are computed for language-model heads and classifiers; these are {self.checkpoint.architecture}.",
                "Use language-model checkpoints (e.g. BertForMaskedLM, GPT2LMHeadModel) or sequence classifiers with labelled data.",
            )

    def batches(self, s, token_batches: TokenBatcher):
        """(token batches, what the head is scored on, or None for a head without a loss)."""
        batches = token_batches(self.passages, s.eval_tokens, s, "evaluation")
        scored = None if self.prediction is None else prediction_batches(
            self.prediction.targets, batches, self.checkpoint.tokenizer, self.checkpoint.config.vocab_size, seed=s.mask_seed)
        return batches, scored

    def evaluate(self, model, batches, device: str) -> dict:
        result = mlm_loss(model, self.checkpoint.head.mlm_module, batches[1], device)
        return {"loss": result.loss, "accuracy": result.accuracy}

    def sequences(self, batches):
        return batches[0]

    def model_inputs(self, batches) -> list[dict]:
        return [dict(input_ids=i, attention_mask=m) for i, m in batches[0]]

    def report_eval(self, s, batches) -> dict:
        tokens, scored = batches
        return {"num_predictions": int(sum(int(b.positions.sum()) for b in scored)), "mask_seed": s.mask_seed,
                "loss": self.prediction.loss, "predicted": self.prediction.predicted, "sequences": tokens.num_sequences,
                "packing": s.eval_packing if self.packing_applies else "blocks"}  # (decoders always read packed blocks)

    def report_curves(self, paths) -> dict:
        return {}  # the accuracy curves are every report's

    # ---- how pages name it -------------------------------------------------------------------
    @property
    def loss_name(self) -> str:
        return self.prediction.loss

    @property
    def metrics(self) -> list[str]:
        return ["accuracy"]

    def metric_label(self, metric: str) -> str:
        return self.prediction.accuracy

    @property
    def explanation(self) -> str:
        return self.prediction.explanation

    def scored_on(self, s) -> str:
        return f"{s.eval_tokens:,} evaluation tokens"

    def path_caption(self, metric: str) -> str:
        p = self.prediction
        return f"{p.explanation} {p.accuracy.capitalize()}: how often the most likely token is the right one, over the {p.predicted}."


class LabelledTaskObjective:
    """A sequence classifier's (or regressor's) task loss and metrics on every example of a
    labelled file; no token budget, no masks, no packing."""

    packing_applies = False
    uses_eval_tokens = False

    def __init__(self, checkpoint: Checkpoint, path: str, task: TaskSpec):
        self.checkpoint, self.task = checkpoint, task
        config = checkpoint.config
        self.data = load_labelled(path, task.text_column, task.label_column, task.pair_column, label_names(config),
                                  task.regression or config.num_labels == 1)
        pairs = self.data.pairs or [""] * len(self.data.texts)
        # The labels are part of the evaluation data's identity (and so of cache keys).
        self.passages = [f"{t}\t{p}\t{y}" for t, p, y in zip(self.data.texts, pairs, self.data.labels)]

    def require_loss(self) -> None:
        pass  # a classifier always has its task loss

    def batches(self, s, token_batches: TokenBatcher):
        return encode(self.checkpoint.tokenizer, self.data, None, s.max_length, s.batch_size)

    def evaluate(self, model, batches, device: str) -> dict:
        result = task_eval(model, batches, device)
        return {"loss": result.loss, **result.metrics}

    def sequences(self, batches):
        return batches

    def model_inputs(self, batches) -> list[dict]:
        return [dict(input_ids=i, attention_mask=m, token_type_ids=t) for i, m, t in zip(batches.input_ids, batches.attention_mask, batches.token_type_ids)]

    def report_eval(self, s, batches) -> dict:
        return {"num_predictions": batches.num_examples, "task": asdict(self.task), "label_names": self.data.label_names}

    def report_curves(self, paths) -> dict:
        """Every task metric along λ, per path (`paths`: (name, points) pairs)."""
        paths = list(paths)
        names = [k for k in paths[0][1][0] if k not in ("lambda", "loss")]
        return {"metric_curves": {which: {m: [[pt["lambda"], pt[m]] for pt in curve] for m in names} for which, curve in paths}}

    # ---- how pages name it -------------------------------------------------------------------
    @property
    def loss_name(self) -> str:
        return "task loss (MSE)" if self.checkpoint.config.num_labels == 1 else "task cross-entropy"

    @property
    def metrics(self) -> list[str]:
        return task_metric_names(self.checkpoint.config.num_labels)

    def metric_label(self, metric: str) -> str:
        return METRIC_LABELS[metric]

    @property
    def explanation(self) -> str:
        return "Task cross-entropy (mean squared error for one output) over every labelled evaluation example, in nats."

    def scored_on(self, s) -> str:
        return "every labelled example"

    def path_caption(self, metric: str) -> str:
        return f"Loss is the {self.loss_name} over {len(self.data.texts):,} labelled examples; the lower panel shows {self.metric_label(metric)}."


Objective = LanguageModelObjective | LabelledTaskObjective


def data_for(checkpoint: Checkpoint, match_data: str | None, eval_data: str | None, task: TaskSpec | None
             ) -> tuple[str, str, TaskSpec | None, list[str]]:
    """(matching file, evaluation file, task, notes on what was chosen) for a pair whose model A
    is `checkpoint`. A language model defaults to the bundled corpus. A classifier needs a
    labelled evaluation file and its columns (the bundled classifiers come with their task's
    files), and without a matching file it matches on that file's input texts."""
    notes: list[str] = []
    if checkpoint.head.kind == CLASSIFICATION:
        if eval_data is None and is_bundled_classifier(checkpoint.path):
            # The bundled fine-tuned pair comes with its task: match on its training texts,
            # evaluate on its held-out split.
            match_data = match_data or str(BUNDLED_TASK / "train.tsv")
            eval_data = str(BUNDLED_TASK / "eval.tsv")
            task = task or TaskSpec()
        if match_data is None and eval_data is not None:
            match_data = eval_data  # the task's input texts, as docs/method.md §8 asks
            notes.append("matching on the evaluation file's input texts (no separate matching file was given)")
        if task is None:
            raise SettingsError(
                f"{checkpoint.architecture} checkpoints are evaluated on labelled data.",
                "Give a labelled CSV/TSV/JSON Lines file for evaluation and name its text and label columns.",
            )
        if eval_data is None:
            raise SettingsError("Classifiers need labelled evaluation data; the bundled corpus has none.", "Give a labelled evaluation file.")
    return str(match_data or DEFAULT_MATCH_DATA), str(eval_data or DEFAULT_EVAL_DATA), task, notes


def objective_for(checkpoint: Checkpoint, eval_path: str, task: TaskSpec | None) -> Objective:
    """A classifier's labelled task (`task` names the columns of `eval_path`), else the
    language-model loss on the passages of `eval_path`."""
    if checkpoint.head.kind == CLASSIFICATION:
        return LabelledTaskObjective(checkpoint, eval_path, task)
    return LanguageModelObjective(checkpoint, read_passages(eval_path))
