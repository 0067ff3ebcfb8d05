"""Fine-tuned classifiers (docs/method.md §8): labelled data, task loss and task metrics.

Labelled data come from local CSV / TSV / JSON Lines files, read through `datasets`, with a
text column (or two, for sentence pairs) and a label column chosen by the user. A single
output unit means regression (STS-B style): mean squared error and Pearson correlation.
Otherwise cross-entropy, accuracy, and F1 (two classes) or Matthews correlation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import DataError
from .evaluation import chunk_sizes, row_slices
from .parallel import map_chunks

FORMATS = {".csv": ("csv", ","), ".tsv": ("csv", "\t"), ".jsonl": ("json", None), ".json": ("json", None)}


@dataclass
class LabelledData:
    texts: list[str]
    pairs: list[str] | None  # second sentence, for sentence-pair tasks
    labels: list[float]
    label_names: list[str] | None  # for classification: names in id order, if the file used names
    source: str
    notes: list[str] = field(default_factory=list)


# "glue:sst2" (validation split) or "glue:mrpc:train": a GLUE task by name, fetched through
# `datasets` from the Hugging Face hub, so only when online.
GLUE_SPEC = re.compile(r"^glue[:/](?P<task>[a-z0-9_]+)(?::(?P<split>[a-z_]+))?$")
GLUE_TASKS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli", "ax")


def is_glue(spec: str | Path) -> bool:
    return bool(GLUE_SPEC.match(str(spec))) and not Path(spec).exists()


def _read_glue(spec: str):
    from datasets import load_dataset

    from .checkpoints import hub_reachable

    match = GLUE_SPEC.match(spec)
    task, split = match["task"], match["split"] or ("validation_matched" if match["task"] == "mnli" else "validation")
    if task not in GLUE_TASKS:
        raise DataError(f"{task!r} is not a GLUE task.", f"Use one of: {', '.join(GLUE_TASKS)} (e.g. glue:sst2 or glue:mrpc:train).")
    if not hub_reachable():
        raise DataError(
            f"Cannot reach the Hugging Face hub to fetch GLUE task {task!r} (offline).",
            "Download the task's files once where you are online and give their path (CSV, TSV or JSON Lines).",
        )
    try:
        return load_dataset("nyu-mll/glue", task, split=split)
    except Exception as err:
        raise DataError(f"GLUE task {task!r}, split {split!r} could not be loaded ({type(err).__name__}: {str(err).splitlines()[0][:200]}).",
                        "Check the task and split names (e.g. glue:sst2, glue:mrpc:train).") from None


def read_table(path: Path):
    from datasets import load_dataset

    if is_glue(path):
        return _read_glue(str(path))
    if not path.exists():
        raise DataError(f"Labelled data file {path} does not exist.", "Give a CSV, TSV or JSON Lines file.")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path.name}: unknown format {path.suffix!r}.", "Use .csv, .tsv or .jsonl.")
    builder, sep = kind
    try:
        kwargs = {"delimiter": sep} if sep else {}
        return load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as err:
        raise DataError(f"{path.name} cannot be read as {path.suffix[1:].upper()} ({type(err).__name__}: {str(err).splitlines()[0][:200]}).", "Check the file's format and encoding (UTF-8).") from None


def input_texts(path: str | Path, text_column: str, pair_column: str | None = None) -> list[str]:
    """The input texts of a labelled file (labels unused): what matching reads for a classifier.
    A sentence pair is joined with a space."""
    path = Path(path)
    table = read_table(path)
    if text_column not in table.column_names:
        raise DataError(f"{path.name} has no column {text_column!r}.", f"Choose one of: {', '.join(table.column_names)}.")
    texts = [str(t or "") for t in table[text_column]]
    if pair_column and pair_column in table.column_names:
        texts = [f"{t} {str(u or '')}" for t, u in zip(texts, table[pair_column])]
    return texts


def label_names(config) -> list[str] | None:
    """A classifier config's label names, or None when they are transformers' LABEL_i placeholders."""
    names = [config.id2label[i] for i in range(config.num_labels)] if getattr(config, "id2label", None) else None
    return None if not names or all(n.startswith("LABEL_") for n in names) else names


def preview(path: str | Path, rows: int = 5) -> tuple[list[str], list[dict]]:
    """Column names and the first rows, for choosing columns in the app."""
    table = read_table(Path(path))
    return list(table.column_names), [table[i] for i in range(min(rows, len(table)))]


def load_labelled(
    path: str | Path,
    text_column: str,
    label_column: str,
    pair_column: str | None = None,
    label_names: list[str] | None = None,
    regression: bool = False,
) -> LabelledData:
    """Texts and numeric labels. String labels are mapped through `label_names` (or sorted)."""
    path = Path(path)
    table = read_table(path)
    for column in [text_column, label_column] + ([pair_column] if pair_column else []):
        if column not in table.column_names:
            raise DataError(f"{path.name} has no column {column!r} (it has {', '.join(table.column_names)}).", "Choose the text and label columns from those.")
    if len(table) == 0:
        raise DataError(f"{path.name} has no rows.", "Give a file with labelled examples.")
    texts = [str(t) if t is not None else "" for t in table[text_column]]
    pairs = [str(t) if t is not None else "" for t in table[pair_column]] if pair_column else None
    raw = table[label_column]
    notes = []
    if regression:
        try:
            labels = [float(x) for x in raw]
        except (TypeError, ValueError):
            raise DataError(f"Column {label_column!r} holds non-numeric values, so it cannot be a regression target.", "Choose a numeric label column.") from None
        names = None
    elif all(isinstance(x, (int, bool)) or (isinstance(x, float) and float(x).is_integer()) for x in raw):
        labels = [float(int(x)) for x in raw]
        names = label_names
    else:
        names = label_names or sorted({str(x) for x in raw})
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted({str(x) for x in raw} - set(index))
        if unknown:
            raise DataError(f"Labels {unknown[:3]} are not among the model's labels {names}.", "Use the label names the models were fine-tuned with.")
        labels = [float(index[str(x)]) for x in raw]
        notes.append(f"label names mapped to ids: {dict(index)}")
    empty = sum(1 for t in texts if not t.strip())
    if empty == len(texts):
        raise DataError(f"Column {text_column!r} of {path.name} is empty.", "Choose the column that holds the text.")
    if empty:
        notes.append(f"{empty} row(s) with empty text kept (they still have labels).")
    return LabelledData(texts, pairs, labels, names, str(path), notes)


@dataclass
class LabelledBatches:
    input_ids: list[torch.Tensor]
    attention_mask: list[torch.Tensor]
    token_type_ids: list[torch.Tensor]
    labels: list[torch.Tensor]
    num_examples: int
    notes: list[str] = field(default_factory=list)


def encode(tokenizer, data: LabelledData, max_examples: int | None = None, max_length: int = 128, batch_size: int = 32) -> LabelledBatches:
    """Tokenise (truncating to max_length, and saying how many were cut) into padded batches."""
    n = len(data.texts) if max_examples is None else min(max_examples, len(data.texts))
    texts, pairs, labels = data.texts[:n], (data.pairs[:n] if data.pairs else None), data.labels[:n]
    # Measured untruncated only to count the cut ones (quietly: the note below says it).
    full = tokenizer(texts, pairs, truncation=False, verbose=False)["input_ids"]
    cut = sum(len(ids) > max_length for ids in full)
    notes = list(data.notes)
    if cut:
        notes.append(f"{cut} example(s) longer than {max_length} tokens were truncated.")
    if max_examples is not None and max_examples < len(data.texts):
        notes.append(f"used the first {n:,} of {len(data.texts):,} examples.")
    out = LabelledBatches([], [], [], [], n, notes)
    for start in range(0, n, batch_size):
        enc = tokenizer(
            texts[start : start + batch_size], pairs[start : start + batch_size] if pairs else None,
            truncation=True, max_length=max_length, padding=True, return_tensors="pt",
        )
        out.input_ids.append(enc["input_ids"])
        out.attention_mask.append(enc["attention_mask"])
        out.token_type_ids.append(enc.get("token_type_ids", torch.zeros_like(enc["input_ids"])))
        out.labels.append(torch.tensor(labels[start : start + batch_size]))
    return out


@dataclass(frozen=True)
class TaskResult:
    loss: float
    metrics: dict  # name -> value


def accuracy(pred: torch.Tensor, gold: torch.Tensor) -> float:
    return float((pred == gold).float().mean())


def f1_binary(pred: torch.Tensor, gold: torch.Tensor, positive: int = 1) -> float:
    tp = int(((pred == positive) & (gold == positive)).sum())
    fp = int(((pred == positive) & (gold != positive)).sum())
    fn = int(((pred != positive) & (gold == positive)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews(pred: torch.Tensor, gold: torch.Tensor, num_classes: int) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K); 0 when undefined."""
    conf = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    for g, p in zip(gold.tolist(), pred.tolist()):
        conf[int(g), int(p)] += 1
    t, p_, c, s = conf.sum(1), conf.sum(0), conf.trace(), conf.sum()
    num = c * s - (t * p_).sum()
    den = math.sqrt(float(s**2 - (p_ * p_).sum())) * math.sqrt(float(s**2 - (t * t).sum()))
    return 0.0 if den == 0 else float(num / den)


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    den = float(x.norm() * y.norm())
    return 0.0 if den == 0 else float((x * y).sum() / den)


@torch.no_grad()
def task_eval(model, batches: LabelledBatches, device: str = "cpu") -> TaskResult:
    """Task loss and metrics of a sequence classifier (or regressor) over all batches.

    Like `evaluation.mlm_loss`, the batches go through the model in row chunks cut to their
    longest row, run side by side on the CPU's cores (`parallel.map_chunks`); every example's
    logits are computed on their own, and come back in order."""
    model.eval()
    ffn_width, budget = chunk_sizes(model, device)
    chunks = [
        (ids[rows, :width], mask[rows, :width], types[rows, :width])
        for ids, mask, types in zip(batches.input_ids, batches.attention_mask, batches.token_type_ids)
        for rows, width in row_slices(mask, ffn_width, budget)
    ]

    @torch.no_grad()  # (grad mode is per thread)
    def chunk_logits(chunk) -> torch.Tensor:
        ids, mask, types = (t.to(device) for t in chunk)
        return model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.float().cpu()

    logits = torch.cat(map_chunks(chunk_logits, chunks, device, cost=lambda c: c[0].numel()))
    gold = torch.cat(batches.labels)
    if logits.shape[1] == 1:
        pred = logits[:, 0]
        return TaskResult(float(F.mse_loss(pred, gold.float())), {"pearson": pearson(pred, gold)})
    gold_ids = gold.long()
    pred = logits.argmax(-1)
    score = {"accuracy": lambda: accuracy(pred, gold_ids), "f1": lambda: f1_binary(pred, gold_ids),
             "mcc": lambda: matthews(pred, gold_ids, logits.shape[1])}
    metrics = {name: score[name]() for name in task_metric_names(logits.shape[1])}
    return TaskResult(float(F.cross_entropy(logits, gold_ids)), metrics)


def task_metric_names(num_outputs: int) -> list[str]:
    """The metrics `task_eval` reports for a head with this many outputs, in display order."""
    if num_outputs == 1:
        return ["pearson"]
    return ["accuracy", "f1", "mcc"] if num_outputs == 2 else ["accuracy", "mcc"]
