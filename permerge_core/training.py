"""Pre-training from scratch, for the bundled seed models: BERT masked LMs and GPT-2 decoders.

Models that differ only in `seed` (initialisation, data order, masks, dropout) are exactly
what the method compares. How a fresh model is built (config class, head, bundled tokenizer)
is the family's `Training` declaration (`families/`); what depends on the objective (the
training rows, the loss and the held-out evaluation) follows what the trained head predicts,
masked tokens or the next token, as one `Objective` per family; the loop, the seeded data
order, the schedule, saving, resuming, --init-from and the export are shared. Everything
random is derived from (seed, step), so a run is deterministic for a given seed and device,
and resuming from the last checkpoint continues the very same run. Masked LM: only masked
positions go through the vocabulary projection. Next-token LM: the training text is packed
into blocks of `max_length` tokens, every line ending in the end-of-text token (standard
causal-LM packing); the loss is next-token cross-entropy.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .data import CORPUS, draw_mlm_masks, masked_batches, packed_stream, read_passages, special_token_ids, tokenize
from .evaluation import mlm_logits_at, mlm_loss
from .errors import SettingsError
from .families import FAMILIES
from .families.schema import CLASSIFICATION, MASKED_LM, NEXT_TOKEN, Family

ASSETS = Path(__file__).resolve().parent.parent / "assets"  # the families' bundled tokenizers


@dataclass
class TrainConfig:
    seed: int
    out: str
    family: str = "bert"  # a family that declares its training: a key of OBJECTIVES
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    ffn: int = 1024
    max_length: int = 128
    steps: int = 20000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 1000
    weight_decay: float = 0.01
    dropout: float = 0.1
    device: str = "cpu"
    train_data: str = str(CORPUS / "train.txt")
    eval_data: str = str(CORPUS / "eval.txt")
    tokenizer: str | None = None  # None: the family's bundled tokenizer
    eval_every: int = 500
    eval_tokens: int = 16384
    save_every: int = 250
    save_dtype: str = "float16"
    init_from: str | None = None  # an earlier run's --out: start from its weights, new schedule

    def __post_init__(self):
        if self.family not in OBJECTIVES:
            raise SettingsError(f"Unknown model family {self.family!r}.", f"Use one of: {', '.join(OBJECTIVES)}.")
        if self.tokenizer is None:
            self.tokenizer = str(OBJECTIVES[self.family].tokenizer)


# Settings a continued run must share with the run it starts from: they fix the model's shape,
# its vocabulary and the text it has learned from.
_SHAPE_FIELDS = ("family", "layers", "hidden", "heads", "ffn", "max_length", "tokenizer", "train_data", "seed")


def _stream_seed(seed: int, stream: int, step: int) -> int:
    """A distinct, reproducible RNG seed per (run seed, purpose, step)."""
    return (seed * 1_000_003 + stream) * 10_000_019 + step


def build_model(cfg: TrainConfig, vocab_size: int, pad_id: int):
    """A freshly initialised model of the run's family, seeded by the run's seed: the config
    class and the head its `Training` names, the run's shape under the family's ConfigKeys."""
    import transformers

    family = FAMILIES[cfg.family]
    how, keys = family.training, family.config_keys
    config = getattr(transformers, how.config_class)(
        vocab_size=vocab_size,
        **{keys.hidden: cfg.hidden, keys.layers: cfg.layers, keys.heads: cfg.heads, keys.ffn: cfg.ffn},
        **{keys.positions: cfg.max_length + keys.position_offset},
        **dict.fromkeys(how.dropout, cfg.dropout),
        **dict.fromkeys(how.token_ids, pad_id),
    )
    torch.manual_seed(_stream_seed(cfg.seed, 0, 0))
    return getattr(transformers, family.heads[how.head].model_class)(config)


# ------------------------------------------------------------------ masked LM

def _masked_rows(cfg: TrainConfig, tokenizer) -> tuple[list[torch.Tensor], int]:
    """One unpadded row per passage (cut at max_length), and the number of tokens."""
    batches = tokenize(tokenizer, read_passages(cfg.train_data), 10**12, cfg.max_length, batch_size=1)
    return [ids[0] for ids in batches.input_ids], batches.num_tokens


def _masked_eval_set(cfg: TrainConfig, tokenizer):
    return masked_batches(
        tokenize(tokenizer, read_passages(cfg.eval_data), cfg.eval_tokens, cfg.max_length, 64), tokenizer, len(tokenizer), seed=1234
    )


def _masked_batch_loss(mlm_module: str, model, rows, tokenizer, cfg: TrainConfig, data_step: int) -> tuple[torch.Tensor, int]:
    """Masked-LM loss of one batch of rows (padded here), and how many real tokens it had."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, seq in enumerate(rows):
        ids[r, : len(seq)] = seq
        mask[r, : len(seq)] = 1
    batch = draw_mlm_masks(
        ids, mask, special_token_ids(tokenizer), tokenizer.mask_token_id, len(tokenizer),
        torch.Generator().manual_seed(_stream_seed(cfg.seed, 2, data_step)),
    )
    torch.manual_seed(_stream_seed(cfg.seed, 3, data_step))  # dropout
    logits = mlm_logits_at(
        model, mlm_module, batch.input_ids.to(cfg.device), mask.to(cfg.device), batch.positions.to(cfg.device),
        tail_at_positions=False,  # keeps training bit-identical to the runs that made assets/models
    )
    return F.cross_entropy(logits.float(), batch.targets.to(cfg.device)), int(mask.sum())


def _masked_evaluate(mlm_module: str, model, eval_set, device: str) -> tuple[float, float]:
    result = mlm_loss(model, mlm_module, eval_set, device)
    return result.loss, result.accuracy


# ------------------------------------------------------------ next-token LM

def packed_ids(tokenizer, path: str) -> torch.Tensor:
    """All lines of a text file as one id stream, each line followed by the end-of-text token
    (`data.packed_stream`, as the pipeline evaluates decoders)."""
    return torch.tensor(packed_stream(tokenizer, read_passages(path)), dtype=torch.long)


def _next_rows(cfg: TrainConfig, tokenizer) -> tuple[list[torch.Tensor], int]:
    """The packed training stream cut into whole blocks of max_length ids (the rest dropped)."""
    stream = packed_ids(tokenizer, cfg.train_data)
    blocks = len(stream) // cfg.max_length
    if blocks == 0:
        raise SettingsError(f"{cfg.train_data} has fewer than {cfg.max_length} tokens.", "Give more training text or a smaller --max-length.")
    return list(stream[: blocks * cfg.max_length].view(blocks, cfg.max_length)), len(stream)


def _next_eval_set(cfg: TrainConfig, tokenizer) -> list[torch.Tensor]:
    """The first eval_tokens ids of the packed eval text, in blocks of max_length (the last may be shorter)."""
    stream = packed_ids(tokenizer, cfg.eval_data)[: cfg.eval_tokens]
    return [block for block in stream.split(cfg.max_length) if len(block) >= 2]


def _next_batch_loss(model, rows, tokenizer, cfg: TrainConfig, data_step: int) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over every predicted position of a batch of full blocks."""
    ids = torch.stack(rows).to(cfg.device)
    torch.manual_seed(_stream_seed(cfg.seed, 3, data_step))  # dropout
    logits = model(input_ids=ids).logits[:, :-1]
    return F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten()), int(ids.numel())


@torch.no_grad()
def _next_evaluate(model, eval_set: list[torch.Tensor], device: str) -> tuple[float, float]:
    """Mean next-token loss (nats) and accuracy over all predicted positions of the eval blocks."""
    model.eval()
    total, hits, count = torch.zeros((), dtype=torch.float64), 0, 0
    for block in eval_set:
        ids = block.unsqueeze(0).to(device)
        logits = model(input_ids=ids).logits[0, :-1].float()
        targets = ids[0, 1:]
        total += F.cross_entropy(logits, targets, reduction="sum").double().cpu()
        hits += int((logits.argmax(-1) == targets).sum())
        count += int(targets.numel())
    return float(total / count), hits / count


@dataclass(frozen=True)
class Objective:
    """What `train` does differently per family: its bundled tokenizer, and the rows, loss and
    held-out evaluation of its objective (masked or next-token)."""

    tokenizer: Path  # the bundled default
    rows: Callable  # (cfg, tokenizer) -> (training rows, token count)
    eval_set: Callable  # (cfg, tokenizer) -> fixed held-out data
    batch_loss: Callable  # (model, rows, tokenizer, cfg, data_step) -> (loss, tokens in the batch)
    evaluate: Callable  # (model, eval_set, device) -> (loss, accuracy)
    summary: str = ""  # for --help: what is trained


def _objective(family: Family) -> Objective:
    """The family's training objective, from what its trained head predicts."""
    head = family.heads[family.training.head]
    tokenizer = ASSETS / family.training.tokenizer
    if head.prediction == MASKED_LM:
        return Objective(tokenizer, _masked_rows, _masked_eval_set, partial(_masked_batch_loss, head.mlm_module), partial(_masked_evaluate, head.mlm_module),
                         f"masked LM ({head.model_class})")
    if head.prediction == NEXT_TOKEN:
        return Objective(tokenizer, _next_rows, _next_eval_set, _next_batch_loss, _next_evaluate, f"causal decoder ({head.model_class})")
    raise ValueError(f"{family.name} trains {head.model_class}, which predicts neither masked nor next tokens")


# Every family that declares how it is trained, by name: read from the families, not a list of its own.
OBJECTIVES = {name: _objective(family) for name, family in FAMILIES.items() if family.training is not None}


def _schedule(cfg: TrainConfig):
    def factor(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return max(0.0, 1.0 - progress) * 0.95 + 0.05  # linear decay to 5%

    return factor


def train(cfg: TrainConfig, log=print) -> dict:
    """Train (or resume) one seed model; returns the final summary written to train_info.json."""
    from transformers import AutoTokenizer

    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise SettingsError("CUDA was requested but no GPU is available.", "Use --device cpu.")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "training_state.pt"
    objective = OBJECTIVES[cfg.family]
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    vocab_size = len(tokenizer)

    sequences, num_tokens = objective.rows(cfg, tokenizer)
    eval_set = objective.eval_set(cfg, tokenizer)
    batches_per_epoch = len(sequences) // cfg.batch_size
    if batches_per_epoch == 0:
        raise SettingsError(f"{cfg.train_data} makes {len(sequences)} training rows, fewer than one batch of {cfg.batch_size}.", "Give more text or a smaller --batch-size.")
    log(f"{len(sequences):,} training sequences, {num_tokens:,} tokens; {batches_per_epoch} batches/epoch")

    model = build_model(cfg, vocab_size, tokenizer.pad_token_id).to(cfg.device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg))
    step, tokens_seen, elapsed, history = 0, 0, 0.0, []
    data_offset = _source_steps(cfg)  # a continued run reads on from where its source stopped
    if state_path.exists():
        state = torch.load(state_path, weights_only=True, map_location=cfg.device)
        saved = {"family": "bert"} | state["config"]  # states from before the family setting
        wanted = asdict(cfg) | {"out": saved["out"]}
        # Before the end of warm-up the schedule does not depend on the total step count, so a
        # run may be shortened or lengthened there and still equal a fresh run of the new length.
        if saved != wanted and not (saved | {"steps": cfg.steps} == wanted and state["step"] <= cfg.warmup):
            raise SettingsError(f"{state_path} was written with other settings.", "Resume with the same settings, or use a new --out.")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, tokens_seen, elapsed = state["step"], state["tokens_seen"], state["elapsed"]
        history = json.loads(state["history"])
        if saved["steps"] != cfg.steps:
            history.append({"step": step, "note": f"total steps changed from {saved['steps']} to {cfg.steps} at the end of warm-up"})
        log(f"resumed at step {step}")
    elif cfg.init_from:
        _init_from(cfg, model, log)

    epoch_order: tuple[int, torch.Tensor] | None = None
    running, running_n = 0.0, 0
    started = time.time() - elapsed
    while step < cfg.steps:
        model.train()
        data_step = step + data_offset
        epoch, index = divmod(data_step, batches_per_epoch)
        if epoch_order is None or epoch_order[0] != epoch:
            order = torch.randperm(len(sequences), generator=torch.Generator().manual_seed(_stream_seed(cfg.seed, 1, epoch)))
            epoch_order = (epoch, order)
        rows = [sequences[k] for k in epoch_order[1][index * cfg.batch_size : (index + 1) * cfg.batch_size].tolist()]
        loss, batch_tokens = objective.batch_loss(model, rows, tokenizer, cfg, data_step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        tokens_seen += batch_tokens
        running += loss.item()
        running_n += 1
        if step % cfg.eval_every == 0 or step == cfg.steps:
            held_out_loss, held_out_accuracy = objective.evaluate(model, eval_set, cfg.device)
            elapsed = time.time() - started
            record = {
                "step": step,
                "tokens": tokens_seen,
                "train_loss": running / running_n,
                "held_out_loss": held_out_loss,
                "held_out_accuracy": held_out_accuracy,
                "lr": scheduler.get_last_lr()[0],
                "seconds": round(elapsed, 1),
            }
            history.append(record)
            log(
                f"step {step}/{cfg.steps}  tokens {tokens_seen/1e6:.1f}M  train {record['train_loss']:.3f}  "
                f"held-out {held_out_loss:.3f} (acc {held_out_accuracy:.3f})  {tokens_seen/elapsed:,.0f} tok/s"
            )
            running, running_n = 0.0, 0
        if step % cfg.save_every == 0 or step == cfg.steps:
            elapsed = time.time() - started
            _atomic_torch_save(
                {
                    "config": asdict(cfg),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": step,
                    "tokens_seen": tokens_seen,
                    "elapsed": elapsed,
                    "history": json.dumps(history),
                },
                state_path,
            )

    elapsed = time.time() - started
    return _export(cfg, model, tokenizer, eval_set, step, tokens_seen, elapsed, history, log)


def _source_steps(cfg: TrainConfig) -> int:
    """How many batches the runs before this one read, all stages of the chain together."""
    return sum(run["steps"] for run in source_runs(asdict(cfg)))


def _init_from(cfg: TrainConfig, model, log) -> None:
    """Load the full-precision weights of an earlier, finished run into `model`.

    The optimizer and the learning-rate schedule start afresh (a warm restart): the source
    run's schedule has decayed, and continuing it would train at its floor rate.
    """
    state = torch.load(Path(cfg.init_from) / "training_state.pt", weights_only=True, map_location=cfg.device)
    source = state["config"]
    differing = [k for k in _SHAPE_FIELDS if ({"family": "bert"} | source).get(k) != getattr(cfg, k)]
    if differing:
        raise SettingsError(
            f"--init-from {cfg.init_from} was trained with other {', '.join(differing)}.",
            "Continue with the same model shape, seed, tokenizer and training text.",
        )
    if state["step"] < source["steps"]:
        raise SettingsError(f"--init-from {cfg.init_from} stopped at step {state['step']} of {source['steps']}.", "Finish that run first.")
    model.load_state_dict(state["model"])
    log(f"starting from {cfg.init_from} (step {state['step']}, {state['tokens_seen'] / 1e6:.1f}M tokens)")


def source_runs(cfg_dict: dict) -> list[dict]:
    """The train_info.json of every run this one continues, oldest first."""
    runs, source = [], cfg_dict.get("init_from")
    while source:
        if not (Path(source) / "training_state.pt").exists():
            raise SettingsError(f"--init-from {source} has no training_state.pt.", "Give the --out folder of an earlier `train` run.")
        if not (Path(source) / "train_info.json").exists():
            raise SettingsError(f"--init-from {source} has not finished (no train_info.json).", "Finish that run first.")
        info = json.loads((Path(source) / "train_info.json").read_text())
        runs.insert(0, info)
        source = info["config"].get("init_from")
    return runs


def export_checkpoint(cfg: TrainConfig, log=print) -> dict:
    """Write the Hugging Face folder from the last saved training state, without training on.

    For a run that has to stop before its schedule ends; train_info.json records the step.
    """
    from transformers import AutoTokenizer

    out = Path(cfg.out)
    state = torch.load(out / "training_state.pt", weights_only=True, map_location="cpu")
    cfg = TrainConfig(**(state["config"] | {"out": cfg.out}))  # the run's own settings, family included
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    model = build_model(cfg, len(tokenizer), tokenizer.pad_token_id)
    model.load_state_dict(state["model"])
    eval_set = OBJECTIVES[cfg.family].eval_set(cfg, tokenizer)
    return _export(cfg, model, tokenizer, eval_set, state["step"], state["tokens_seen"], state["elapsed"], json.loads(state["history"]), log)


def _export(cfg, model, tokenizer, eval_set, step, tokens_seen, elapsed, history, log) -> dict:
    out = Path(cfg.out)
    final_loss, final_accuracy = OBJECTIVES[cfg.family].evaluate(model, eval_set, cfg.device)
    info = {
        "config": asdict(cfg) | {"out": str(out)},
        "steps": step,
        "stopped_before_schedule_end": step < cfg.steps,
        "tokens_seen": tokens_seen,
        "train_seconds": round(elapsed, 1),
        "hardware": _hardware(cfg.device),
        "torch": torch.__version__,
        "held_out_loss_training_eval_set": final_loss,
        "held_out_accuracy_training_eval_set": final_accuracy,
        "history": history,
        "earlier_runs": [
            {k: run[k] for k in ("config", "steps", "tokens_seen", "train_seconds", "hardware", "held_out_loss_training_eval_set")}
            for run in source_runs(asdict(cfg))
        ],
    }
    export = model.to(getattr(torch, cfg.save_dtype)).cpu()
    export.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "train_info.json").write_text(json.dumps(info, indent=1))
    log(f"saved {out} after {step} steps, {tokens_seen/1e6:.1f}M tokens, {elapsed/60:.1f} min")
    return info


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _hardware(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} threads"


@dataclass
class FinetuneConfig:
    model: str  # a masked-LM checkpoint folder
    data: str  # labelled CSV/TSV/JSON Lines
    out: str
    seed: int = 0  # data order and dropout
    head_seed: int = 0  # pooler and classifier initialisation: the same for every model of a pair
    text_column: str = "text"
    label_column: str = "label"
    pair_column: str | None = None
    regression: bool = False
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-4
    warmup: int = 30
    max_length: int = 128
    device: str = "cpu"


def finetune(cfg: FinetuneConfig, log=print) -> dict:
    """Fine-tune a masked LM as a sequence classifier, with a seeded head initialisation."""
    import transformers

    from .checkpoints import load_checkpoint
    from .tasks import encode, load_labelled

    source = load_checkpoint(cfg.model)
    if source.tokenizer is None:
        raise SettingsError(f"{cfg.model} has no tokenizer files.", "Copy the tokenizer files the model was trained with (tokenizer.json, …) into its folder.")
    data = load_labelled(cfg.data, cfg.text_column, cfg.label_column, cfg.pair_column, regression=cfg.regression)
    num_labels = 1 if cfg.regression else int(max(data.labels)) + 1
    config = source.config.__class__.from_dict(source.config.to_dict())
    config.num_labels = num_labels
    config.architectures = [source.family.head_of_kind(CLASSIFICATION).model_class]
    if data.label_names:
        config.id2label = dict(enumerate(data.label_names))
        config.label2id = {n: i for i, n in enumerate(data.label_names)}
    torch.manual_seed(cfg.head_seed)  # the new pooler/classifier start identical for every seed
    model = getattr(transformers, config.architectures[0])(config)
    encoder = {k: v for k, v in source.model.state_dict().items() if k.startswith(source.family.base_prefix)}
    missing = model.load_state_dict(encoder, strict=False).missing_keys
    if any(not (k.startswith("classifier") or "pooler" in k) for k in missing):
        raise SettingsError(f"{cfg.model} lacks encoder weights ({missing[0]}).", "Fine-tune from a masked-LM checkpoint of the same family.")
    model.to(cfg.device)
    batches = encode(source.tokenizer, data, None, cfg.max_length, batch_size=1)
    rows = list(zip(batches.input_ids, batches.attention_mask, batches.token_type_ids, batches.labels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: min(1.0, (k + 1) / cfg.warmup) * max(0.0, 1 - k / cfg.steps))
    started = time.time()
    for step in range(cfg.steps):
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(_stream_seed(cfg.seed, 4, step // max(1, len(rows) // cfg.batch_size))))
        start = (step % max(1, len(rows) // cfg.batch_size)) * cfg.batch_size
        chosen = [rows[i] for i in order[start : start + cfg.batch_size].tolist()]
        width = max(r[0].shape[1] for r in chosen)
        pad = source.tokenizer.pad_token_id or 0
        ids = torch.stack([F.pad(r[0][0], (0, width - r[0].shape[1]), value=pad) for r in chosen])
        mask = torch.stack([F.pad(r[1][0], (0, width - r[1].shape[1])) for r in chosen])
        types = torch.stack([F.pad(r[2][0], (0, width - r[2].shape[1])) for r in chosen])
        labels = torch.cat([r[3] for r in chosen])
        torch.manual_seed(_stream_seed(cfg.seed, 5, step))
        model.train()
        logits = model(input_ids=ids.to(cfg.device), attention_mask=mask.to(cfg.device), token_type_ids=types.to(cfg.device)).logits
        loss = F.mse_loss(logits[:, 0], labels.float().to(cfg.device)) if cfg.regression else F.cross_entropy(logits, labels.long().to(cfg.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if (step + 1) % 50 == 0 or step + 1 == cfg.steps:
            log(f"step {step + 1}/{cfg.steps}  loss {loss.item():.4f}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model.cpu().save_pretrained(out)
    source.tokenizer.save_pretrained(out)
    info = {"config": asdict(cfg), "train_seconds": round(time.time() - started, 1), "hardware": _hardware(cfg.device)}
    (out / "finetune_info.json").write_text(json.dumps(info, indent=1))
    log(f"saved {out}")
    return info
