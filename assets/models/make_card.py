"""Bundle trained seed models into assets/models and measure what their model card reports.

    .venv/bin/python assets/models/make_card.py --runs runs/train --seeds 0 1 [2]

Copies each `runs/train/seed-N` (written by `python -m permerge_core train`) as a Hugging Face
folder (config, fp16 safetensors, tokenizer, training log), then measures, with the same
pipeline the CLI uses and its default settings on the evaluation split: each model's held-out
MLM loss, and the barriers of the default pair (seeds 0 and 1) for vanilla averaging and for
each alignment variant. The evaluation is the default `--eval-packing` (blocks, the paper's
protocol); each model's loss with `lines` (one passage per sequence, the way the models were
trained) is reported beside it. Writes `card.json` (read by the tests) and `MODEL_CARD.md`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from permerge_core import AlignSettings, Pipeline  # noqa: E402
from permerge_core.evaluation import barrier  # noqa: E402

FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "train_info.json")

# (label, settings changes): the paper's comparisons, on our pair.
VARIANTS = [
    ("FFN only", dict(ffn=True, attention="none", residual="none")),
    ("FFN + monotonic attention", dict(ffn=True, attention="monotonic", residual="none")),
    ("FFN + Head-Perm", dict(ffn=True, attention="heads", residual="none")),
    ("FFN + Head-Perm + residual first", dict(ffn=True, attention="heads", residual="first")),
    ("FFN + Head-Perm + residual last", dict(ffn=True, attention="heads", residual="last")),
    ("FFN + Head-Perm + residual all", dict(ffn=True, attention="heads", residual="all")),
    ("residual first only", dict(ffn=False, attention="none", residual="first")),
    ("residual all only", dict(ffn=False, attention="none", residual="all")),
    ("FFN + ignore-heads (not function-preserving)", dict(ffn=True, attention="ignore-heads", residual="none")),
    ("FFN + Head-Perm + residual sep (not function-preserving)", dict(ffn=True, attention="heads", residual="sep")),
]


def bundle(runs: Path, seeds: list[int]) -> list[Path]:
    out = []
    for seed in seeds:
        src, dst = runs / f"seed-{seed}", HERE / f"seed-{seed}"
        if not (src / "model.safetensors").exists():
            raise SystemExit(f"{src} has no finished model (train it first)")
        dst.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            shutil.copy2(src / name, dst / name)
        out.append(dst)
    return out


def measure(folders: list[Path]) -> dict:
    settings = AlignSettings()
    card = {"settings": asdict(settings), "models": {}, "pairs": {}}
    for folder in folders:
        info = json.loads((folder / "train_info.json").read_text())
        # A model continued with `train --init-from` carries the runs before it: report each
        # stage's schedule and the totals over all of them.
        runs = info.get("earlier_runs", []) + [info]
        stages = [
            {
                **{k: run["config"][k] for k in ("steps", "lr", "warmup")},
                "tokens_seen": run["tokens_seen"],
                "train_minutes": round(run["train_seconds"] / 60, 1),
                "hardware": run["hardware"],
            }
            for run in runs
        ]
        card["models"][folder.name] = {
            "config": {k: info["config"][k] for k in ("seed", "layers", "hidden", "heads", "ffn", "max_length", "batch_size", "dropout")},
            "stages": stages,
            "steps": sum(run["steps"] for run in runs),
            "tokens_seen": sum(run["tokens_seen"] for run in runs),
            "train_minutes": round(sum(run["train_seconds"] for run in runs) / 60, 1),
            "hardware": info["hardware"],
            "stopped_before_schedule_end": info.get("stopped_before_schedule_end", False),
        }
    a, b = folders[0], folders[1]
    pipeline = Pipeline(str(a), str(b), cache_dir=None)
    started = time.time()
    vanilla = pipeline.curve(settings, "vanilla")
    losses = [p["loss"] for p in vanilla]
    card["models"][a.name]["held_out_loss"] = losses[-1]
    card["models"][b.name]["held_out_loss"] = losses[0]
    card["models"][a.name]["held_out_accuracy"] = vanilla[-1]["accuracy"]
    card["models"][b.name]["held_out_accuracy"] = vanilla[0]["accuracy"]
    pair = {"vanilla": {"barrier": barrier(losses), "curve": losses, "midpoint_loss": losses[len(losses) // 2]}}
    for label, changes in VARIANTS:
        s = replace(settings, **changes)
        curve = [p["loss"] for p in pipeline.curve(s, "permuted")]
        pair[label] = {"barrier": barrier(curve), "curve": curve, "midpoint_loss": curve[len(curve) // 2],
                       "function_preserving": s.function_preserving, "max_abs_logit_diff": pipeline.equivalence(s)}
        print(f"{label:60s} barrier {pair[label]['barrier']:.3f}", flush=True)
    card["pairs"][f"{a.name}/{b.name}"] = pair
    for extra in folders[2:]:  # other seeds: their own held-out loss against seed 0's eval masks
        p = Pipeline(str(a), str(extra), cache_dir=None)
        v = p.curve(settings, "vanilla")
        card["models"][extra.name]["held_out_loss"] = v[0]["loss"]
        card["models"][extra.name]["held_out_accuracy"] = v[0]["accuracy"]
    per_passage = replace(settings, eval_packing="lines", lambdas=2)  # the endpoints only
    for extra in folders[1:]:
        ends = Pipeline(str(a), str(extra), cache_dir=None).curve(per_passage, "vanilla")
        card["models"][a.name]["held_out_loss_lines"] = ends[-1]["loss"]
        card["models"][extra.name]["held_out_loss_lines"] = ends[0]["loss"]
    card["measure_seconds"] = round(time.time() - started, 1)
    card["eval_predictions"] = int(sum(int(m.positions.sum()) for m in pipeline.eval_set(settings)[1]))
    return card


def write_markdown(card: dict) -> str:
    models = card["models"]
    first = next(iter(models.values()))
    cfg = first["config"]
    lines = [
        "# Bundled seed models",
        "",
        "Small BERT masked LMs that differ **only in their random seed** (initialisation, data order,",
        "masks, dropout), trained from scratch by `python -m permerge_core train` on the training split of",
        "`assets/corpus` (King James Bible + Shakespeare, public domain; see `assets/corpus/README.md`).",
        "They exist so that permerge shows something real offline: the first two are the default pair.",
        "",
        "## Configuration (shared)",
        "",
        f"BertForMaskedLM, {cfg['layers']} layers, hidden {cfg['hidden']}, {cfg['heads']} heads (d_k = {cfg['hidden'] // cfg['heads']}), "
        f"FFN {cfg['ffn']}, vocabulary 4096 (WordPiece, lower-cased), max length {cfg['max_length']}, dropout {cfg['dropout']}. "
        f"AdamW (β = 0.9, 0.98; weight decay 0.01), batch {cfg['batch_size']} passages (~2.9k tokens), 80/10/10 masking of 15% of tokens, "
        "vocabulary projection only at masked positions. Weights stored as float16 safetensors (computed in float32).",
        "",
    ]
    stages = first["stages"]
    if len(stages) > 1:
        lines += [
            f"Trained in {len(stages)} stages; each later stage starts from the weights of the one before "
            "(`train --init-from`: fresh optimizer and schedule, data read on from where the earlier stage stopped):",
            "",
        ]
    lines += ["| stage | steps | peak learning rate | warm-up steps, then | tokens | time |", "|---:|---:|---:|---|---:|---:|"]
    for k, st in enumerate(stages, 1):
        lines.append(f"| {k} | {st['steps']:,} | {st['lr']} | {st['warmup']}, linear decay to 5% | {st['tokens_seen'] / 1e6:.1f} M | {st['train_minutes']} min |")
    shape = (f"--layers {cfg['layers']} --hidden {cfg['hidden']} --heads {cfg['heads']} --ffn {cfg['ffn']} "
             f"--batch-size {cfg['batch_size']} --dropout {cfg['dropout']} --threads 1")
    lines += ["", "Reproduce one (N = the seed):", "", "```"]
    for k, st in enumerate(stages, 1):
        init = f" --init-from runs/stage{k - 1}/seed-N" if k > 1 else ""
        lines.append(f".venv/bin/python -m permerge_core train --seed N --out runs/stage{k}/seed-N{init} {shape} "
                     f"--steps {st['steps']} --lr {st['lr']} --warmup {st['warmup']}")
    lines += [
        f".venv/bin/python assets/models/make_card.py --runs runs/stage{len(stages)} --seeds 0 1 2   # bundle and re-measure",
        "```",
        "",
        "## Models",
        "",
        "| model | seed | steps (all stages) | tokens seen | training time | hardware | held-out MLM loss (nats) | masked-token accuracy | loss, `lines` evaluation |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    stopped = [n for n, m in models.items() if m.get("stopped_before_schedule_end")]
    for name, m in models.items():
        lines.append(
            f"| `{name}` | {m['config']['seed']} | {m['steps']:,} | {m['tokens_seen'] / 1e6:.1f} M | {m['train_minutes']} min | {m['hardware']} | "
            f"{m['held_out_loss']:.3f} | {m['held_out_accuracy']:.3f} | {m['held_out_loss_lines']:.3f} |"
        )
    s = card["settings"]
    lines += [
        "",
        "Training time is the wall-clock time of each training process, pauses included; the three seeds of a stage",
        "trained at the same time, one thread each, sharing two CPU cores with other work.",
    ]
    if stopped:
        lines += [
            "",
            f"**Training was stopped before its schedule ended** ({', '.join(stopped)}: its last stage stopped before step "
            f"{models[stopped[0]]['stages'][-1]['steps']:,}, learning rate not yet decayed) to fit the time available on two CPU cores. "
            "See *Against the project's bar* below.",
        ]
    lines += [
        "",
        f"Held-out loss: the evaluation split, first {s['eval_tokens']:,} tokens, {card['eval_predictions']:,} masked positions "
        f"drawn once with seed {s['mask_seed']} (the CLI's defaults). A context-free unigram guess scores about 6.2 on such text.",
        "",
        f"**Evaluation protocol of every number on this card: `--eval-packing {s['eval_packing']}`**"
        + (f" (the paper's: the evaluation text concatenated and cut into blocks of {s['max_length']} tokens, each wrapped as "
           "`[CLS] … [SEP]`, as transformers' `run_mlm` does)." if s["eval_packing"] == "blocks" else " (one passage per sequence).")
        + " The models were trained one passage per sequence; the last column evaluates them that way (`--eval-packing lines`, "
        "the same token budget and mask seed), which they find easier: blocks join passages they never saw side by side.",
        "",
    ]
    for pair_name, pair in card["pairs"].items():
        van = pair["vanilla"]["barrier"]
        lines += [
            f"## Loss barriers between `{pair_name.replace('/', '` and `')}`",
            "",
            f"Barrier = max over λ of L(θ(λ)) − ½(L(A) + L(B)), {s['lambdas']} λ points, matching on the match split "
            f"({s['match_tokens']:,} tokens), signed correlation. Lower is better.",
            "",
            "| merge | barrier (nats) | loss at λ = 0.5 | % of vanilla | B′ same function as B |",
            "|---|---:|---:|---:|---|",
            f"| vanilla averaging | {van:.3f} | {pair['vanilla']['midpoint_loss']:.3f} | 100% | — |",
        ]
        for label, row in pair.items():
            if label == "vanilla":
                continue
            same = f"yes (max Δlogit {row['max_abs_logit_diff']:.0e})" if row["function_preserving"] else f"**no** (max Δlogit {row['max_abs_logit_diff']:.1f})"
            lines.append(f"| {label} | {row['barrier']:.3f} | {row['midpoint_loss']:.3f} | {100 * row['barrier'] / van:.0f}% | {same} |")
        lines.append("")
    pair = next(iter(card["pairs"].values()))
    van = pair["vanilla"]["barrier"]
    best_label = min(("FFN + Head-Perm + residual first", "FFN + Head-Perm + residual all"), key=lambda k: pair[k]["barrier"])
    worst_loss = max(m["held_out_loss"] for m in models.values())
    check = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    lines += [
        "## Against the project's bar",
        "",
        "| criterion | target | measured | |",
        "|---|---|---|---|",
        f"| held-out MLM loss of each model | ≤ 4.5 nats | {worst_loss:.3f} (worst) | {check(worst_loss <= 4.5)} |",
        f"| vanilla barrier of the default pair | ≥ 1.0 nat | {van:.3f} | {check(van >= 1.0)} |",
        f"| full alignment ({best_label}) | ≤ 90% of vanilla | {100 * pair[best_label]['barrier'] / van:.0f}% | {check(pair[best_label]['barrier'] <= 0.9 * van)} |",
        f"| seed models shipped | 3 | {len(models)} | {check(len(models) >= 3)} |",
        "",
        f"What these small models gain: FFN + Head-Perm alone leaves {100 * pair['FFN + Head-Perm']['barrier'] / van:.0f}% of the vanilla barrier, "
        f"adding the residual stream ({best_label.rsplit(' ', 1)[1]}) leaves {100 * pair[best_label]['barrier'] / van:.0f}%: "
        "the residual stream matters most for small models, as docs/method.md §16 says.",
        "",
    ]
    if worst_loss > 4.5 or van < 1.0:
        lines += [
            f"The loss and barrier targets are not met: after {first['tokens_seen'] / 1e6:.1f} M training tokens on two shared CPU cores the",
            "models are still descending from the masked-LM plateau, and pairs this far from convergence sit in a shallow",
            "region (a small vanilla barrier). Longer training (a GPU session with `--device cuda`, or a longer CPU schedule",
            "in a fresh `--out`) is what is missing, not a change of method.",
            "",
        ]
    lines += ["_Generated by `assets/models/make_card.py`; the numbers are in `card.json`, which the tests check._", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/train")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-copy", action="store_true", help="measure the folders already in assets/models")
    args = parser.parse_args()
    folders = [HERE / f"seed-{s}" for s in args.seeds] if args.no_copy else bundle(Path(args.runs), args.seeds)
    card = measure(folders)
    (HERE / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    (HERE / "MODEL_CARD.md").write_text(write_markdown(card))
    print(f"wrote {HERE / 'card.json'} and MODEL_CARD.md")


if __name__ == "__main__":
    main()
