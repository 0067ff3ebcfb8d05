"""What a finished analysis reports: `report.json` (every number of a run, with the settings
and data that produced it) and `curve.csv`. The keys are the same for every family."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from .data import text_fingerprint
from .evaluation import barrier
from .matching import matched_statistics
from .repair import LABEL, REPAIRED, budget
from .settings import ACTIVATIONS


def build_report(p, s, stats, matching, vanilla, permuted, repaired=None) -> dict:
    """The report of pipeline `p` under settings `s`, from its computed stages (`stats` is
    None under weight matching, which reads no matching text). `repaired`, the REPAIR-corrected
    permuted curve, adds its curve and barrier under `permuted_repair` (only when computed).
    What the evaluation was, and any curves besides loss and accuracy, the pipeline's
    objective says (objectives.py)."""
    loss = lambda curve: [pt["loss"] for pt in curve]  # noqa: E731
    batches = p.eval_set(s)
    sequences = p.objective.sequences(batches)
    report = {
        "format": "permerge-report/1",
        "models": {"a": p.a.describe(), "b": p.b.describe()},
        "settings": asdict(s),
        "data": {
            "match": (
                {"path": p.match_path, "tokens": stats.num_tokens, "fingerprint": text_fingerprint(p.match_passages)}
                if stats is not None else {"path": None, "tokens": 0, "note": "weight matching reads no matching text"}
            ),
            # (a classifier's labelled batches count examples, not tokens)
            "eval": {"path": p.eval_path, "tokens": getattr(sequences, "num_tokens", None), "fingerprint": text_fingerprint(p.eval_passages)},
        },
        "eval": p.objective.report_eval(s, batches),
        # The matcher applied (`both` applies the activation matching; its comparison is added by the pipeline).
        "matching": {"matcher": matching.info.get("matcher", ACTIVATIONS), **matching.info},
        **matching.as_lists(),
        "curves": {
            "vanilla": [[pt["lambda"], pt["loss"]] for pt in vanilla],
            "permuted": [[pt["lambda"], pt["loss"]] for pt in permuted],
        },
        "accuracy_curves": {
            "vanilla": [[pt["lambda"], pt.get("accuracy", float("nan"))] for pt in vanilla],
            "permuted": [[pt["lambda"], pt.get("accuracy", float("nan"))] for pt in permuted],
        },
        "barrier": {"vanilla": barrier(loss(vanilla)), "permuted": barrier(loss(permuted))},
        "endpoint_loss": {"a": p.loss_of_a(s)["loss"], "b": vanilla[0]["loss"], "b_prime": permuted[0]["loss"]},
        "function_preserving": matching.function_preserving,
        "max_abs_logit_diff": p.equivalence(s),
        "matched_correlation": matched_statistics(stats, matching) if stats is not None else None,
        "notes": list(p.notes) + (list(stats.notes) if stats is not None else []) + list(sequences.notes) + list(p.cache.events),
    }
    if repaired is not None:
        report["curves"][REPAIRED] = [[pt["lambda"], pt["loss"]] for pt in repaired]
        report["accuracy_curves"][REPAIRED] = [[pt["lambda"], pt.get("accuracy", float("nan"))] for pt in repaired]
        report["barrier"][REPAIRED] = barrier(loss(repaired))
        report["repair"] = {"label": LABEL, "statistics": "matching text", "match_tokens_budget": budget(s.match_tokens),
                            "match_fingerprint": text_fingerprint(p.match_passages),
                            "corrected": "each layer's FFN pre-activation, layer by layer (docs/method.md §11)"}
    paths = (("vanilla", vanilla), ("permuted", permuted)) + (((REPAIRED, repaired),) if repaired is not None else ())
    report.update(p.objective.report_curves(paths))  # a classifier: every task metric along λ
    return report


def write_outputs(report: dict, out: str | Path) -> None:
    """report.json and curve.csv, each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    repaired = REPAIRED in report["curves"]  # the REPAIR columns come last, and only when computed
    rows = ["lambda,vanilla_loss,permuted_loss,vanilla_accuracy,permuted_accuracy"
            + (f",{REPAIRED}_loss,{REPAIRED}_accuracy" if repaired else "")]
    for k, ((lam, lv), (_, lp), (_, av), (_, ap)) in enumerate(zip(
        report["curves"]["vanilla"], report["curves"]["permuted"], report["accuracy_curves"]["vanilla"], report["accuracy_curves"]["permuted"]
    )):
        extra = f",{report['curves'][REPAIRED][k][1]:.6f},{report['accuracy_curves'][REPAIRED][k][1]:.6f}" if repaired else ""
        rows.append(f"{lam:.6g},{lv:.6f},{lp:.6f},{av:.6f},{ap:.6f}" + extra)
    for name, text in (("report.json", json.dumps(report, indent=1)), ("curve.csv", "\n".join(rows) + "\n")):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)
