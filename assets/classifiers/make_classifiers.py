"""Fine-tune the bundled seed models on the bundled task, bundle them, and measure their card.

    .venv/bin/python assets/classifiers/make_classifiers.py [--seeds 0 1] [--steps 300]

Each bundled masked LM `assets/models/seed-N` is fine-tuned as a BertForSequenceClassification
on `assets/tasks/source/train.tsv` (Bible or Shakespeare?) by `python -m permerge_core
finetune`, with the same classifier-head initialisation (`--head-seed 0`) for every seed and
the seed itself for data order (docs/method.md §8). The results are stored as float16 safetensors
in `assets/classifiers/source-seed-N`, then measured with the same pipeline the CLI and the app
use, on `assets/tasks/source/eval.tsv` with the default settings: each model's held-out loss
and accuracy against the majority-class baseline, and the barriers of the pair for vanilla
averaging and for permuted merging. Writes `card.json` (read by the tests) and `MODEL_CARD.md`.
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
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from permerge_app import views  # noqa: E402
from permerge_core import AlignSettings, Pipeline  # noqa: E402
from permerge_core.evaluation import barrier  # noqa: E402
from permerge_core.training import FinetuneConfig, finetune  # noqa: E402

TASK = ROOT / "assets" / "tasks" / "source"
MODELS = ROOT / "assets" / "models"
FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "finetune_info.json")

VARIANTS = [
    ("FFN + Head-Perm", dict(ffn=True, attention="heads", residual="none")),
    ("FFN + Head-Perm + residual first", dict(ffn=True, attention="heads", residual="first")),
    ("FFN + Head-Perm + residual all", dict(ffn=True, attention="heads", residual="all")),
]


def fine_tune_and_bundle(seeds: list[int], steps: int, lr: float, runs: Path) -> list[Path]:
    import torch
    from transformers import AutoModelForSequenceClassification

    out = []
    for seed in seeds:
        run = runs / f"source-seed-{seed}"
        cfg = FinetuneConfig(model=str(MODELS / f"seed-{seed}"), data=str(TASK / "train.tsv"), out=str(run),
                             seed=seed, head_seed=0, steps=steps, lr=lr)
        print(f"fine-tuning seed {seed}: {cfg}", flush=True)
        finetune(cfg, log=lambda msg: print(f"  {msg}", flush=True))
        dst = HERE / f"source-seed-{seed}"
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        model = AutoModelForSequenceClassification.from_pretrained(run, dtype=torch.float32)
        model.half().save_pretrained(dst)  # float16 storage; permerge computes in float32
        for name in FILES:
            shutil.copy2(run / name, dst / name)
        out.append(dst)
    return out


def measure(folders: list[Path]) -> dict:
    settings = AlignSettings()
    a, b = folders
    pipeline = Pipeline(str(a), str(b), cache_dir=None)  # bundled classifiers: the task's files by default
    started = time.time()
    vanilla = pipeline.curve(settings, "vanilla")
    data = pipeline.objective.data  # the task's labelled evaluation examples
    card = {
        "settings": asdict(settings),
        "task": {"train": str(TASK.relative_to(ROOT) / "train.tsv"), "eval": str(TASK.relative_to(ROOT) / "eval.tsv"),
                 "eval_examples": len(data.texts), "label_names": data.label_names,
                 "majority_baseline": views.majority_baseline(data), "balance": views.label_balance(data)},
        "models": {},
        "pair": {"vanilla": {"barrier": barrier([p["loss"] for p in vanilla]), "curve": vanilla}},
    }
    for folder, point in ((a, vanilla[-1]), (b, vanilla[0])):
        info = json.loads((folder / "finetune_info.json").read_text())
        card["models"][folder.name] = {
            "from": f"assets/models/{Path(info['config']['model']).name}",
            "config": {k: info["config"][k] for k in ("seed", "head_seed", "steps", "batch_size", "lr", "warmup", "max_length")},
            "train_seconds": info["train_seconds"], "hardware": info["hardware"],
            "held_out_loss": point["loss"], "held_out_accuracy": point["accuracy"], "held_out_f1": point["f1"], "held_out_mcc": point["mcc"],
        }
    for label, changes in VARIANTS:
        s = replace(settings, **changes)
        curve = pipeline.curve(s, "permuted")
        card["pair"][label] = {"barrier": barrier([p["loss"] for p in curve]), "curve": curve, "max_abs_logit_diff": pipeline.equivalence(s)}
        print(f"{label:40s} barrier {card['pair'][label]['barrier']:.3f}", flush=True)
    card["measure_seconds"] = round(time.time() - started, 1)
    return card


def write_markdown(card: dict) -> str:
    task, models, pair = card["task"], card["models"], card["pair"]
    cfg = next(iter(models.values()))["config"]
    mid = lambda curve: curve[len(curve) // 2]  # noqa: E731  (λ = 0.5 on the default 21-point grid)
    lines = [
        "# Bundled fine-tuned pair",
        "",
        "The default seed models `assets/models/seed-0` and `seed-1`, each fine-tuned as a",
        "BertForSequenceClassification on the bundled task `assets/tasks/source` (which text a passage comes",
        "from: `bible` or `shakespeare`; how the labels were made and the class balance are in",
        "`assets/tasks/README.md`). Both start from the **same classifier-head initialisation**",
        f"(`--head-seed {cfg['head_seed']}`); each uses its own seed for data order (docs/method.md §8).",
        "",
        f"Fine-tuning: {cfg['steps']} steps, batch {cfg['batch_size']}, AdamW learning rate {cfg['lr']}, {cfg['warmup']} warm-up steps then",
        "linear decay, max length 128. Stored as float16 safetensors. Reproduce:",
        "",
        "    .venv/bin/python -m permerge_core finetune --model assets/models/seed-N --data assets/tasks/source/train.tsv \\",
        f"        --out runs/finetune/source-seed-N --seed N --head-seed {cfg['head_seed']} --steps {cfg['steps']} --lr {cfg['lr']}",
        "",
        "or `.venv/bin/python assets/classifiers/make_classifiers.py`, which also re-measures this card.",
        "",
        f"## Held-out results ({task['eval_examples']} examples of `eval.tsv`)",
        "",
        "| model | from | seed | training time | loss (nats) | accuracy | F1 (`shakespeare`) | Matthews |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in models.items():
        lines.append(f"| `{name}` | `{m['from']}` | {m['config']['seed']} | {m['train_seconds']:.0f} s | {m['held_out_loss']:.3f} | "
                     f"{m['held_out_accuracy']:.1%} | {m['held_out_f1']:.3f} | {m['held_out_mcc']:.3f} |")
    lines += [
        f"| majority class (`{max(task['balance'], key=lambda r: r['examples'])['label']}`) | | | | | {task['majority_baseline']:.1%} | | |",
        "",
        "## Merging the pair",
        "",
        "θ(λ) = λ·A + (1−λ)·B over every weight (pooler and classifier included), A = `source-seed-0`, B = `source-seed-1`;",
        f"{card['settings']['lambdas']} λ points; matching on the input texts of `train.tsv` ({card['settings']['match_tokens']:,}-token budget).",
        "Barrier = max over λ of the task loss − ½(L(A) + L(B)).",
        "",
        "| merge | barrier (nats) | loss at λ = 0.5 | accuracy at λ = 0.5 | min accuracy on the path |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, row in pair.items():
        curve = row["curve"]
        name = "vanilla averaging" if label == "vanilla" else label
        lines.append(f"| {name} | {row['barrier']:.3f} | {mid(curve)['loss']:.3f} | {mid(curve)['accuracy']:.1%} | "
                     f"{min(p['accuracy'] for p in curve):.1%} |")
    lines += ["", "_Generated by `assets/classifiers/make_classifiers.py`; the numbers are in `card.json`, which the tests check._", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs=2, default=[0, 1])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--runs", default=str(ROOT / "runs" / "finetune"))
    parser.add_argument("--no-train", action="store_true", help="measure the folders already in assets/classifiers")
    args = parser.parse_args()
    folders = [HERE / f"source-seed-{s}" for s in args.seeds] if args.no_train else fine_tune_and_bundle(args.seeds, args.steps, args.lr, Path(args.runs))
    card = measure(folders)
    (HERE / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    (HERE / "MODEL_CARD.md").write_text(write_markdown(card))
    print(f"wrote {HERE / 'card.json'} and {HERE / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
