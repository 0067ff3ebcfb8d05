"""Command line: `python -m permerge_core align|grid|train|finetune ...`.

The CLI is the scriptable contract the app and the tests share. Bad input exits non-zero
with one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .errors import PermergeError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as for every other bad input
        sys.stderr.write(f"permerge: error: {message} (see --help)\n")
        sys.exit(2)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _bounded_int(spec):
    """An argparse type for an int setting: a whole number within the setting's bounds."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        try:
            spec.check(value)
        except PermergeError as err:
            raise argparse.ArgumentTypeError(str(err).rstrip(".")) from None
        return value

    return parse


def add_settings(parser: argparse.ArgumentParser) -> None:
    """One flag per row of the settings table (settings.SETTINGS)."""
    from .settings import SETTINGS

    for spec in SETTINGS:
        if spec.type is bool:
            parser.add_argument(spec.flag, action=argparse.BooleanOptionalAction, default=spec.default, help=spec.help)
        elif spec.choices:
            parser.add_argument(spec.flag, choices=spec.choices, default=spec.default, help=spec.help)
        elif spec.type is int:
            parser.add_argument(spec.flag, type=_bounded_int(spec), default=spec.default, help=spec.help)
        else:
            parser.add_argument(spec.flag, type=spec.type, default=spec.default, help=spec.help)


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"λ must be in [0, 1], got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m permerge_core", description="Align two transformer checkpoints by permutation and measure the loss barrier.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    align = sub.add_parser("align", help="align B to A and compute the loss path")
    align.add_argument("--model-a", default=None, help="folder or hub id (default: bundled seed 0)")
    align.add_argument("--model-b", default=None, help="folder or hub id (default: bundled seed 1)")
    align.add_argument("--tokenizer", default=None, help="tokenizer folder, if not in model A's folder")
    align.add_argument("--match-data", default=None, help="text file, one passage per line (default: bundled)")
    align.add_argument("--eval-data", default=None, help="text file, one passage per line (default: bundled)")
    add_settings(align)
    align.add_argument("--out", default="runs/latest", help="folder for report.json and curve.csv")
    align.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    align.add_argument("--cache-dir", default=None)
    align.add_argument("--save-merged", default=None, help="write the merged model at --merge-lambda here")
    align.add_argument("--merge-lambda", type=_unit_float, default=0.5)
    align.add_argument("--overwrite", action="store_true", help="allow --save-merged into a non-empty folder")
    align.add_argument("--text-column", default="text", help="classifiers: column of the labelled file with the text")
    align.add_argument("--pair-column", default=None, help="classifiers: column with the second sentence, if any")
    align.add_argument("--label-column", default="label", help="classifiers: column with the label")
    align.add_argument("--regression", action="store_true", help="classifiers: the label is a number (MSE, Pearson)")
    align.add_argument("--quiet", action="store_true")

    grid = sub.add_parser(
        "grid", help="every pair of several checkpoints (B aligned to A), in this process or as Ray tasks",
        description="Every pair i < j of --models (B = models[j] aligned to A = models[i]) with align's settings; writes "
                    "OUT/grid.json, grid.csv, matrix.csv and table.csv after every pair, so a rerun computes only the missing "
                    "pairs. Exits 1 if some pair failed (its cell says why). See docs/grid.md.")
    grid.add_argument("--models", nargs="+", required=True, metavar="MODEL", help="folders or hub ids, in the order of the matrix")
    grid.add_argument("--tokenizer", default=None, help="tokenizer folder, if not in the models' folders")
    grid.add_argument("--match-data", default=None, help="text file, one passage per line (default: bundled)")
    grid.add_argument("--eval-data", default=None, help="text file, one passage per line (default: bundled)")
    add_settings(grid)
    grid.add_argument("--variants", nargs="+", default=None, metavar="VARIANT",
                      help="several merge settings per pair, sharing its statistics: paper-attention, paper-residual, "
                           "or LABEL:key=value,... (keys: ffn, attention, residual, absolute)")
    grid.add_argument("--engine", choices=("local", "ray"), default="local", help="local: in this process; ray: one Ray task per pair")
    grid.add_argument("--ray-address", default=None, help="join this Ray cluster (host:port) instead of starting a local Ray")
    grid.add_argument("--cpus-per-task", type=_positive_int, default=1, help="ray: CPUs (torch threads) per pair")
    grid.add_argument("--gpus-per-task", type=float, default=None, help="ray: GPUs per pair (default 1 with --device cuda, else 0)")
    grid.add_argument("--out", required=True, help="folder for grid.json, grid.csv, matrix.csv and table.csv")
    grid.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    grid.add_argument("--cache-dir", default=None, help="the disk cache (on a cluster: a folder every node shares)")
    grid.add_argument("--text-column", default="text", help="classifiers: column of the labelled file with the text")
    grid.add_argument("--pair-column", default=None, help="classifiers: column with the second sentence, if any")
    grid.add_argument("--label-column", default="label", help="classifiers: column with the label")
    grid.add_argument("--regression", action="store_true", help="classifiers: the label is a number (MSE, Pearson)")
    grid.add_argument("--quiet", action="store_true")

    train = sub.add_parser("train", help="pre-train a small BERT masked LM from scratch")
    from .training import TrainConfig

    tdef = TrainConfig(seed=0, out="")
    train.add_argument("--seed", type=int, required=True)
    train.add_argument("--out", required=True)
    for name in ("layers", "hidden", "heads", "ffn", "steps", "batch_size", "warmup", "max_length", "eval_every", "save_every", "eval_tokens"):
        train.add_argument(f"--{name.replace('_', '-')}", type=_positive_int, default=getattr(tdef, name))
    train.add_argument("--lr", type=float, default=tdef.lr)
    train.add_argument("--dropout", type=float, default=tdef.dropout)
    train.add_argument("--device", default="cpu")
    train.add_argument("--threads", type=_positive_int, default=None)
    train.add_argument("--train-data", default=tdef.train_data)
    train.add_argument("--eval-data", default=tdef.eval_data)
    train.add_argument("--tokenizer", default=tdef.tokenizer)
    train.add_argument(
        "--init-from", default=None, metavar="DIR",
        help="continue an earlier, finished run (its --out): its weights, a fresh schedule, data read on from where it stopped",
    )
    train.add_argument("--export-only", action="store_true", help="write the model from the last saved state and stop")
    fine = sub.add_parser("finetune", help="fine-tune a masked LM as a sequence classifier")
    fine.add_argument("--model", required=True, help="masked-LM checkpoint folder")
    fine.add_argument("--data", required=True, help="labelled CSV/TSV/JSON Lines")
    fine.add_argument("--out", required=True)
    fine.add_argument("--seed", type=int, default=0, help="data order and dropout")
    fine.add_argument("--head-seed", type=int, default=0, help="classifier initialisation (keep equal across a pair)")
    fine.add_argument("--text-column", default="text")
    fine.add_argument("--pair-column", default=None)
    fine.add_argument("--label-column", default="label")
    fine.add_argument("--regression", action="store_true")
    fine.add_argument("--steps", type=_positive_int, default=300)
    fine.add_argument("--batch-size", type=_positive_int, default=32)
    fine.add_argument("--lr", type=float, default=1e-4)
    fine.add_argument("--device", default="cpu")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "align":
            return _align(args)
        if args.command == "grid":
            return _grid(args)
        if args.command == "train":
            return _train(args)
        if args.command == "finetune":
            from .training import FinetuneConfig, finetune

            fields = FinetuneConfig.__dataclass_fields__
            finetune(FinetuneConfig(**{k: v for k, v in vars(args).items() if k in fields}), log=lambda m: print(m, flush=True))
            return 0
    except PermergeError as err:
        sys.stderr.write(f"permerge: error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("permerge: interrupted\n")
        return 130
    except Exception as err:  # a bug in permerge, not the user's input
        if os.environ.get("PERMERGE_DEBUG"):
            raise
        sys.stderr.write(f"permerge: internal error: {type(err).__name__}: {err} (please report it; PERMERGE_DEBUG=1 shows the traceback)\n")
        return 1
    return 0


def _train(args) -> int:
    import torch

    from .training import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    fields = TrainConfig.__dataclass_fields__
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    if args.export_only:
        from .training import export_checkpoint

        export_checkpoint(cfg, log=lambda msg: print(msg, flush=True))
        return 0
    train(cfg, log=lambda msg: print(msg, flush=True))
    return 0


def _align(args) -> int:
    from .pipeline import Pipeline, default_pair
    from .report import write_outputs
    from .settings import SETTINGS, AlignSettings, TaskSpec

    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    model_a, model_b = args.model_a, args.model_b
    if model_a is None or model_b is None:
        default_a, default_b = default_pair()
        model_a = model_a or default_a
        model_b = model_b or default_b
    settings = AlignSettings(**{spec.name: getattr(args, spec.name) for spec in SETTINGS})
    started = time.time()
    pipeline = Pipeline(
        model_a,
        model_b,
        tokenizer=args.tokenizer,
        match_data=args.match_data,
        eval_data=args.eval_data,
        cache_dir=None if args.no_cache else (args.cache_dir or "default"),
        progress=_progress_printer(log),
        task=TaskSpec(args.text_column, args.label_column, args.pair_column, args.regression),
    )
    report = pipeline.run(settings)
    out = Path(args.out)
    write_outputs(report, out)
    if args.save_merged:
        pipeline.save_merged(settings, args.merge_lambda, args.save_merged, overwrite=args.overwrite)
        log(f"merged model at λ={args.merge_lambda} written to {args.save_merged}")
    for note in report.get("notes", []):
        log(f"note: {note}")
    print(_summary(report, time.time() - started))
    print(f"wrote {out / 'report.json'} and {out / 'curve.csv'}")
    return 0


def _grid(args) -> int:
    from dataclasses import replace

    from . import grid
    from .cache import default_cache_dir
    from .settings import SETTINGS, AlignSettings, TaskSpec

    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    base = AlignSettings(**{spec.name: getattr(args, spec.name) for spec in SETTINGS})
    cuda = base.device.startswith("cuda")
    # The driver of a Ray cluster need not have a GPU: the workers check the device.
    (replace(base, device="cpu") if args.engine == "ray" else base).validate()
    variants = grid.parse_variants(args.variants, base)
    spec = grid.GridSpec(
        models=list(args.models), variants=variants, tokenizer=args.tokenizer, match_data=args.match_data,
        eval_data=args.eval_data, task=TaskSpec(args.text_column, args.label_column, args.pair_column, args.regression),
        cache_dir=None if args.no_cache else str(Path(args.cache_dir or default_cache_dir()).expanduser().resolve()),
    )
    if args.engine == "ray":
        gpus = args.gpus_per_task if args.gpus_per_task is not None else (1.0 if cuda else 0.0)
        engine = grid.RayEngine(args.ray_address, cpus_per_task=args.cpus_per_task, gpus_per_task=gpus)
    else:
        engine = grid.LocalEngine(progress=_progress_printer(log))
    started = time.time()
    with engine:
        n = len(spec.pairs())
        log(f"[grid] {len(spec.models)} models, {n} pairs, {len(variants)} variant(s) each; engine {engine.name}, "
            f"{engine.workers()} worker(s)")
        result = grid.run_grid(spec, engine, args.out, log=log)
    failed = [c for c in result["pairs"] if "error" in c]
    print(grid.table_text(result))
    print(f"{len(result['pairs']) - len(failed)} of {n} pairs done ({result['computed_this_run']} computed in this run) "
          f"in {time.time() - started:.1f} s; wrote {Path(args.out) / 'grid.json'}, grid.csv, matrix.csv, table.csv")
    for cell in failed:
        sys.stderr.write(f"permerge: pair {cell['a']} / {cell['b']} failed: {cell['error']}\n")
    return 1 if failed else 0


def _progress_printer(log):
    last = {"stage": None, "shown": -1.0}

    def progress(stage: str, fraction: float, message: str = "") -> None:
        pct = int(fraction * 100)
        if stage != last["stage"] or pct >= last["shown"] + 10 or fraction >= 1.0:
            log(f"[{stage}] {pct:3d}% {message}")
            last["stage"], last["shown"] = stage, pct

    return progress


def _summary(report: dict, seconds: float) -> str:
    b = report["barrier"]
    e = report["endpoint_loss"]
    s = report["settings"]
    lines = [
        f"A: {report['models']['a']['source']}   B: {report['models']['b']['source']}",
        f"settings: ffn={'on' if s['ffn'] else 'off'} attention={s['attention']} residual={s['residual']} "
        f"{'|corr|' if s['absolute'] else 'signed corr'}, {s['lambdas']} λ points",
        (
            f"endpoint loss: A {e['a']:.4f}  B {e['b']:.4f}  (masked-LM nats, {report['eval']['num_predictions']:,} masked tokens)"
            if "metric_curves" not in report
            else f"endpoint task loss: A {e['a']:.4f}  B {e['b']:.4f}  ({report['eval']['num_predictions']:,} labelled examples); "
            + ", ".join(f"{m} A {c[-1][1]:.3f} B {c[0][1]:.3f}" for m, c in report["metric_curves"]["vanilla"].items())
        ),
        f"barrier: vanilla {b['vanilla']:.4f}  permuted {b['permuted']:.4f}  (lower is better)",
        f"B' computes the same function as B: {'yes' if report['function_preserving'] else 'NO (non-preserving mode)'}; "
        f"max |Δlogit| = {report['max_abs_logit_diff']:.2e}",
        f"done in {seconds:.1f} s",
    ]
    return "\n".join(lines)
