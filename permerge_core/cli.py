"""Command line: `python -m permerge_core align|plane|ablate|grid|train|finetune ...`.

The CLI is the scriptable contract the app and the tests share. Bad input exits non-zero
with one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .errors import PermergeError, SettingsError
from .settings import WEIGHTS


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


def _grid_points(text: str) -> int:
    from .plane import MAX_GRID

    value = _positive_int(text)
    if not 2 <= value <= MAX_GRID:
        raise argparse.ArgumentTypeError(f"must be 2 to {MAX_GRID}, got {value}")
    return value


def _margin(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be zero or positive, got {value}")
    return value


def _add_inputs(parser: argparse.ArgumentParser, outputs: str, pair: bool = True) -> None:
    """The flags `align`, `plane`, `ablate` and `grid` share: the pair (not for `grid`, which
    takes --models), the data, every setting, the output folder (required for `grid`), the cache."""
    if pair:
        parser.add_argument("--model-a", default=None, help="folder or hub id (default: bundled seed 0)")
        parser.add_argument("--model-b", default=None, help="folder or hub id (default: bundled seed 1)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder, if not in the model folders (A's for a pair)")
    parser.add_argument("--match-data", default=None, help="text file, one passage per line (default: bundled)")
    parser.add_argument("--eval-data", default=None, help="text file, one passage per line (default: bundled)")
    add_settings(parser)
    if pair:
        parser.add_argument("--out", default="runs/latest", help=f"folder for {outputs}")
    else:
        parser.add_argument("--out", required=True, help=f"folder for {outputs}")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    parser.add_argument("--cache-dir", default=None, help="the disk cache (default $PERMERGE_CACHE, else ~/.cache/permerge; "
                                                          "on a Ray cluster: a folder every node shares)")
    parser.add_argument("--text-column", default="text", help="classifiers: column of the labelled file with the text")
    parser.add_argument("--pair-column", default=None, help="classifiers: column with the second sentence, if any")
    parser.add_argument("--label-column", default="label", help="classifiers: column with the label")
    parser.add_argument("--regression", action="store_true", help="classifiers: the label is a number (MSE, Pearson)")
    parser.add_argument("--quiet", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m permerge_core", description="Align two transformer checkpoints by permutation and measure the loss barrier.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    align = sub.add_parser("align", help="align B to A and compute the loss path")
    _add_inputs(align, "report.json and curve.csv")
    align.add_argument("--save-merged", default=None, help="write the merged model at --merge-lambda here")
    align.add_argument("--merge-lambda", type=_unit_float, default=0.5)
    align.add_argument("--overwrite", action="store_true", help="allow --save-merged into a non-empty folder")
    align.add_argument("--merge-repair", action="store_true",
                       help="REPAIR-correct the model written by --save-merged (docs/method.md §11); off: plain θ(λ), whatever --repair says")

    grid = sub.add_parser(
        "grid", help="every pair of several checkpoints (B aligned to A), in this process or as Ray tasks",
        description="Every pair i < j of --models (B = models[j] aligned to A = models[i]) with align's settings; writes "
                    "OUT/grid.json, grid.csv, matrix.csv and table.csv after every pair, so a rerun computes only the missing "
                    "pairs. Exits 1 if some pair failed (its cell says why). See docs/grid.md.")
    grid.add_argument("--models", nargs="+", required=True, metavar="MODEL", help="folders or hub ids, in the order of the matrix")
    _add_inputs(grid, "grid.json, grid.csv, matrix.csv and table.csv", pair=False)
    grid.add_argument("--variants", nargs="+", default=None, metavar="VARIANT",
                      help="several merge settings per pair, sharing its statistics: paper-attention, paper-residual, "
                           "or LABEL:key=value,... (keys: ffn, attention, residual, absolute)")
    grid.add_argument("--engine", choices=("local", "ray"), default="local", help="local: in this process; ray: one Ray task per pair")
    grid.add_argument("--ray-address", default=None, help="join this Ray cluster (host:port) instead of starting a local Ray")
    grid.add_argument("--cpus-per-task", type=_positive_int, default=1, help="ray: CPUs (torch threads) per pair")
    grid.add_argument("--gpus-per-task", type=float, default=None, help="ray: GPUs per pair (default 1 with --device cuda, else 0)")

    from .plane import DEFAULT_EVAL_TOKENS, DEFAULT_GRID, DEFAULT_MARGIN, MAX_GRID

    plane = sub.add_parser("plane", help="the loss over the plane through A, B and B′ (B aligned to A)")
    _add_inputs(plane, "plane.json and plane.csv")
    plane.add_argument("--grid", type=_grid_points, default=DEFAULT_GRID, help=f"points per axis, 2 to {MAX_GRID}: N² evaluations (default {DEFAULT_GRID})")
    plane.add_argument("--margin", type=_margin, default=DEFAULT_MARGIN,
                       help=f"how far past A, B and B′ the plane extends, in plane units (default {DEFAULT_MARGIN})")
    plane.set_defaults(eval_tokens=DEFAULT_EVAL_TOKENS)  # N² evaluations: a smaller budget than a path's

    from .ablation import DEFAULT_BUDGETS, DEFAULT_RESAMPLES

    ablate = sub.add_parser("ablate", help="how much matching text is enough: barriers and agreement over doubling token budgets",
                            description="Activation matching at token budgets that double from --start-tokens to --stop-tokens, "
                                        "--resamples disjoint slices of the matching text per budget (where it is long enough); "
                                        "writes ablation.json and ablation.csv. Model, data and merge flags are align's.")
    _add_inputs(ablate, "ablation.json and ablation.csv")
    ablate.add_argument("--start-tokens", type=_positive_int, default=DEFAULT_BUDGETS[0], help="smallest matching budget")
    ablate.add_argument("--stop-tokens", type=_positive_int, default=DEFAULT_BUDGETS[-1], help="largest matching budget (budgets double up to it)")
    ablate.add_argument("--budgets", type=_positive_int, nargs="+", default=None, metavar="N", help="explicit budgets instead of the doubling")
    ablate.add_argument("--resamples", type=_positive_int, default=DEFAULT_RESAMPLES, help="resamples (slices of the text) per budget")
    ablate.set_defaults(out="runs/ablation")

    train = sub.add_parser("train", help="pre-train a small BERT masked LM or GPT-2 decoder from scratch")
    from .training import OBJECTIVES, TrainConfig

    tdef = TrainConfig(seed=0, out="")
    train.add_argument("--seed", type=int, required=True)
    train.add_argument("--out", required=True)
    train.add_argument("--family", choices=list(OBJECTIVES), default=tdef.family,
                       help="; ".join(f"{name}: {objective.summary}" for name, objective in OBJECTIVES.items()))
    for name in ("layers", "hidden", "heads", "ffn", "steps", "batch_size", "warmup", "max_length", "eval_every", "save_every", "eval_tokens"):
        train.add_argument(f"--{name.replace('_', '-')}", type=_positive_int, default=getattr(tdef, name))
    train.add_argument("--lr", type=float, default=tdef.lr)
    train.add_argument("--dropout", type=float, default=tdef.dropout)
    train.add_argument("--device", default="cpu")
    train.add_argument("--threads", type=_positive_int, default=None)
    train.add_argument("--train-data", default=tdef.train_data)
    train.add_argument("--eval-data", default=tdef.eval_data)
    train.add_argument("--tokenizer", default=None, help="default: the family's bundled tokenizer")
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
        if args.command == "plane":
            return _plane(args)
        if args.command == "ablate":
            return _ablate(args)
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


def _data(args) -> dict:
    """The data fields of `Inputs` that the shared flags (`_add_inputs`) give: everything but
    the pair (and the device, where the settings' --device decides). A grid's spec has the
    same fields."""
    from .inputs import cache_folder
    from .settings import TaskSpec

    return dict(tokenizer=args.tokenizer, match_data=args.match_data, eval_data=args.eval_data,
                task=TaskSpec(args.text_column, args.label_column, args.pair_column, args.regression),
                cache_dir=None if args.no_cache else cache_folder(args.cache_dir))


def inputs_from_args(args):
    """The `Inputs` that the shared flags describe; without --model-a/--model-b, the bundled seeds."""
    from .inputs import Inputs
    from .pipeline import default_pair

    model_a, model_b = args.model_a, args.model_b
    if model_a is None or model_b is None:
        default_a, default_b = default_pair()
        model_a = model_a or default_a
        model_b = model_b or default_b
    return Inputs(model_a, model_b, **_data(args))


def command_line(inputs, settings, out: str | None = None, save_merged: str | None = None, merge_lambda: float | None = None,
                 merge_repair: bool = False, python: str = ".venv/bin/python") -> str:
    """The `.venv/bin/python -m permerge_core align` command (the interpreter `bash run.sh`
    sets up, as the README spells it) that computes exactly `inputs` under `settings`
    (`inputs_from_args` of its flags gives `inputs` back).

    Settings marked `always_in_command` (merge settings, the λ grid) are always spelled out;
    data, columns, the cache, token budgets and the other settings only where they differ from
    the defaults.
    """
    import shlex

    from .inputs import cache_folder
    from .settings import SETTINGS, TaskSpec

    args = [python, "-m", "permerge_core", "align", "--model-a", str(inputs.model_a), "--model-b", str(inputs.model_b)]
    for flag, value in (("--tokenizer", inputs.tokenizer), ("--match-data", inputs.match_data), ("--eval-data", inputs.eval_data)):
        if value:
            args += [flag, str(value)]
    task, default = inputs.task or TaskSpec(), TaskSpec()
    for flag, name in (("--text-column", "text_column"), ("--label-column", "label_column"), ("--pair-column", "pair_column")):
        if getattr(task, name) != getattr(default, name):
            args += [flag, getattr(task, name)]
    if task.regression:
        args.append("--regression")
    for spec in SETTINGS:
        value = getattr(settings, spec.name)
        if value == spec.default and not spec.always_in_command:
            continue
        if spec.type is bool:
            args.append(spec.flag if value else f"--no-{spec.flag[2:]}")
        else:
            args += [spec.flag, str(value)]
    if inputs.cache_dir is None:
        args.append("--no-cache")
    elif inputs.cache_dir != cache_folder():
        args += ["--cache-dir", str(inputs.cache_dir)]
    if out:
        args += ["--out", str(out)]
    if save_merged:
        args += ["--save-merged", str(save_merged), "--merge-lambda", f"{merge_lambda if merge_lambda is not None else 0.5:g}"]
        if merge_repair:
            args.append("--merge-repair")
    return " ".join(shlex.quote(a) for a in args)


def _pipeline(args, log):
    """The pipeline and settings that the shared flags (`_add_inputs`) describe."""
    from .pipeline import Pipeline
    from .settings import SETTINGS, AlignSettings

    _check_out_folder(Path(args.out))  # before loading anything: a bad --out would only fail at the very end
    settings = AlignSettings(**{spec.name: getattr(args, spec.name) for spec in SETTINGS})
    return Pipeline.from_inputs(inputs_from_args(args), progress=_progress_printer(log)), settings


def _log(args):
    return (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))


def _align(args) -> int:
    from .report import write_outputs

    if args.merge_repair and not args.save_merged:  # before the run: it would only fail at the end
        raise SettingsError("--merge-repair corrects the merged model, but no --save-merged folder was given.",
                            "Add --save-merged DIR, or drop --merge-repair.")
    log = _log(args)
    started = time.time()
    pipeline, settings = _pipeline(args, log)
    report = pipeline.run(settings)
    out = Path(args.out)
    write_outputs(report, out)
    if args.save_merged:
        pipeline.save_merged(settings, args.merge_lambda, args.save_merged, overwrite=args.overwrite, repair=args.merge_repair)
        log(f"merged model at λ={args.merge_lambda}{' (REPAIR-corrected)' if args.merge_repair else ''} written to {args.save_merged}")
    for note in report.get("notes", []):
        if note == pipeline.cache.warning:  # shown even with --quiet: something the user should fix
            print(f"permerge: warning: {note}", file=sys.stderr, flush=True)
        else:
            log(f"note: {note}")
    print(_summary(report, time.time() - started))
    print(f"wrote {out / 'report.json'} and {out / 'curve.csv'}")
    return 0


def _grid(args) -> int:
    from dataclasses import replace

    from . import grid
    from .settings import SETTINGS, AlignSettings

    log = _log(args)
    _check_out_folder(Path(args.out))
    base = AlignSettings(**{spec.name: getattr(args, spec.name) for spec in SETTINGS})
    cuda = base.device.startswith("cuda")
    # The driver of a Ray cluster need not have a GPU: the workers check the device.
    (replace(base, device="cpu") if args.engine == "ray" else base).validate()
    variants = grid.parse_variants(args.variants, base)
    spec = grid.GridSpec(models=list(args.models), variants=variants, **_data(args))
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


def _plane(args) -> int:
    from .plane import write_plane

    log = _log(args)
    started = time.time()
    pipeline, settings = _pipeline(args, log)
    plane = pipeline.plane(settings, args.grid, args.margin)
    out = write_plane(pipeline, settings, plane, args.out, args.grid, args.margin)
    if pipeline.cache.warning:  # shown even with --quiet, as for align
        print(f"permerge: warning: {pipeline.cache.warning}", file=sys.stderr, flush=True)
    for note in pipeline.notes:
        log(f"note: {note}")
    b, points = plane["basis"], plane["points"]
    print(
        f"plane through A, B and B′: {args.grid}×{args.grid} points, x {plane['x'][0]:.2f}…{plane['x'][-1]:.2f}, "
        f"y {plane['y'][0]:.2f}…{plane['y'][-1]:.2f}, {settings.eval_tokens:,} evaluation tokens\n"
        f"|u| = |B′ − A| = {b['norm_u']:.4g}, |B − A| = {b['distance_b']:.4g}, |v| = {b['norm_v']:.4g}, "
        f"angle(B − A, u) = {b['angle_degrees']:.1f}°, B at x = {b['x_b']:.3f}\n"
        f"loss: A {points['a']['loss']:.4f}  B {points['b']['loss']:.4f}  B′ {points['b_prime']['loss']:.4f}  "
        f"grid {min(v for row in plane['grid'] for v in row):.4f}…{max(v for row in plane['grid'] for v in row):.4f}\n"
        f"done in {time.time() - started:.1f} s"
    )
    print(f"wrote {out / 'plane.json'} and {out / 'plane.csv'}")
    return 0


def _check_out_folder(out: Path) -> None:
    """Refuse an --out that cannot become a folder: the path, or a folder above it, is a file."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                raise SettingsError(
                    f"--out {out}: {path} is a file, but the outputs (report.json and curve.csv, or plane.json and plane.csv) are written into a folder.",
                    "Give --out a new or existing folder path (or move that file away).",
                )
            if not os.access(path, os.W_OK | os.X_OK):
                raise SettingsError(f"--out {out}: {path} is not writable here.", "Give --out a folder you can write to.")
            return


def _ablate(args) -> int:
    from .ablation import doubling, run_ablation, write_ablation

    log = _log(args)
    started = time.time()
    budgets = args.budgets or doubling(args.start_tokens, args.stop_tokens)
    pipeline, settings = _pipeline(args, log)
    result = run_ablation(pipeline, settings, budgets, args.resamples)
    out = Path(args.out)
    write_ablation(result, out)
    for note in result["notes"]:
        log(f"note: {note}")
    print(f"vanilla barrier {result['vanilla_barrier']:.4f}; permuted barrier and agreement with the largest budget "
          f"({result['resamples']} resample(s) per budget):")
    for row in result["rows"]:
        b, kinds = row["barrier"], row["agreement_by_kind"]
        heads = "" if row["head_agreement_mean"] is None else f"  heads {row['head_agreement_mean']:.0%}"
        print(f"  {row['budget']:>8,} tokens{'' if row['disjoint'] else ' (overlapping)'}: barrier {b['mean']:.4f} ± {b['std']:.4f}  "
              + "  ".join(f"{k} {v:.0%}" for k, v in kinds.items()) + heads + f"  {row['seconds']:.1f} s")
    print(f"done in {time.time() - started:.1f} s")
    print(f"wrote {out / 'ablation.json'} and {out / 'ablation.csv'}")
    return 0


def _progress_printer(log):
    last = {"stage": None, "shown": -1.0}

    def progress(stage: str, fraction: float, message: str = "") -> None:
        pct = int(fraction * 100)
        if stage != last["stage"] or pct >= last["shown"] + 10 or fraction >= 1.0:
            log(f"[{stage}] {pct:3d}% {message}")
            last["stage"], last["shown"] = stage, pct

    return progress


def _matching_lines(report: dict) -> list[str]:
    """What the matcher did (weights: sweeps, objective, time) and, for `both`, how the two agree."""
    lines = []
    info = report.get("matching", {})
    if info.get("matcher") == WEIGHTS:
        lines.append(_weights_line(info))
    comparison = report.get("comparison")
    if comparison:
        lines.append(_weights_line(comparison["weights"]["matching"]))
        b = comparison["barrier"]
        agree = ", ".join(f"{kind} {value:.0%}" for kind, value in comparison["agreement_by_kind"].items())
        heads = [h["agreement"] for h in comparison["head_assignment"].values()]
        lines.append(f"matchers compared: barrier activations {b['activations']:.4f}  weights {b['weights']:.4f}; "
                     f"units paired alike: {agree or 'nothing permuted'}"
                     + (f"; head assignments alike: {sum(heads) / len(heads):.0%}" if heads else ""))
    return lines


def _weights_line(info: dict) -> str:
    objective = info["objective"]
    return (f"weight matching: {info['sweeps']} sweep(s){'' if info['converged'] else ' (stopped at the cap, not converged)'}, "
            f"objective {objective[0]:.6g} → {objective[-1]:.6g}, {info['seconds']:.2f} s, no data read")


def _summary(report: dict, seconds: float) -> str:
    b = report["barrier"]
    e = report["endpoint_loss"]
    s = report["settings"]
    lines = [
        f"A: {report['models']['a']['source']}   B: {report['models']['b']['source']}",
        f"settings: ffn={'on' if s['ffn'] else 'off'} attention={s['attention']} residual={s['residual']} "
        f"{'|corr|' if s['absolute'] else 'signed corr'}, {s['lambdas']} λ points",
        (
            f"endpoint loss: A {e['a']:.4f}  B {e['b']:.4f}  ({report['eval']['loss']} in nats, {report['eval']['num_predictions']:,} {report['eval']['predicted']})"
            if "metric_curves" not in report
            else f"endpoint task loss: A {e['a']:.4f}  B {e['b']:.4f}  ({report['eval']['num_predictions']:,} labelled examples); "
            + ", ".join(f"{m} A {c[-1][1]:.3f} B {c[0][1]:.3f}" for m, c in report["metric_curves"]["vanilla"].items())
        ),
        f"barrier: vanilla {b['vanilla']:.4f}  permuted {b['permuted']:.4f}"
        + (f"  permuted + REPAIR {b['permuted_repair']:.4f}" if "permuted_repair" in b else "") + "  (lower is better)",
        *_matching_lines(report),
        f"B' computes the same function as B: {'yes' if report['function_preserving'] else 'NO (non-preserving mode)'}; "
        f"max |Δlogit| = {report['max_abs_logit_diff']:.2e}",
        f"done in {seconds:.1f} s",
    ]
    return "\n".join(lines)
