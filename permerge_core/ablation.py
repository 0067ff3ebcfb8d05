"""How much matching text is enough: the data ablation behind `python -m permerge_core ablate`
and the app's Stability page (docs/method.md §10).

Protocol. The matching text is tokenised in text order, as the family reads it (passages
wrapped in [CLS] … [SEP], `data.token_sequences`, or packed into blocks, `data.packed_sequences`),
and cut into R equal consecutive parts; resample r reads from the start of part r on,
wrapping around the end of the text, for as many tokens as the largest budget. Budget b of
resample r is the first b tokens of that stream, so the R resamples of a budget are disjoint
slices of the text whenever R·b tokens fit in it (each budget row says whether they did), and
the budgets of one resample are nested prefixes.

Cost. One statistics pass per resample serves every budget: the running sums are snapshotted
at each budget's boundary (`statistics.collect_statistics(snapshot_after=…)`), so the smaller
budgets cost no pass of their own, only an assignment each and a loss path each (the path is
the expensive part: one evaluation of the merged model per λ).

Per budget, over the resamples: the permuted barrier (mean, standard deviation, minimum,
maximum); for every space, the fraction of A's units paired with the same B unit as by the
largest budget of the same resample (so 1.0 at the largest budget, by construction), and the
same between resamples of the budget; per layer, the fraction of head assignments equal to the
largest budget's; and the time to collect the budget's statistics and match them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from itertools import combinations
from pathlib import Path

import numpy as np

from .comparison import KINDS, by_kind, head_agreement, space_agreement
from .data import TokenBatches, batch_sequences, packed_sequences, special_token_ids, special_wrapping, text_fingerprint, token_sequences
from .errors import DataError, SettingsError
from .evaluation import barrier
from . import spaces as sp
from .matching import Matching, compute_matching, merge_settings
from .modes import MATCHERS
from .permuting import plan_for_matching
from .settings import ACTIVATIONS
from .statistics import collect_statistics

FORMAT = "permerge-ablation/1"
DEFAULT_BUDGETS = tuple(1024 * 2**k for k in range(7))  # 1k … 64k tokens
DEFAULT_RESAMPLES = 3
STAGE = "ablation"
MIN_BUDGET = 16  # tokens: a budget must hold some text besides the special tokens


def doubling(start: int, stop: int) -> list[int]:
    """start, 2·start, 4·start, … up to stop (stop included when it lies on the doubling)."""
    if start <= 0 or stop < start:
        raise SettingsError(f"Budgets from {start:,} to {stop:,} tokens make no doubling.", "Give a positive start no larger than the end, e.g. 1024 and 65536.")
    out = [start]
    while out[-1] * 2 <= stop:
        out.append(out[-1] * 2)
    return out


def split_at(sequences: list[list[int]], boundaries: list[int], wrap: tuple[list[int], list[int]]) -> list[list[list[int]]]:
    """`sequences` cut into consecutive segments at the cumulative token counts `boundaries`,
    plus the rest as the last segment. A sequence that crosses a boundary is split there, each
    piece wrapped again in the special tokens `wrap` (prefix, suffix), so every segment up to
    boundary k holds exactly boundaries[k] tokens; where a piece would hold no text the
    segment closes a few tokens short instead."""
    prefix, suffix = wrap
    specials = len(prefix) + len(suffix)
    segments: list[list[list[int]]] = []
    current: list[list[int]] = []
    used = 0
    targets = iter(boundaries)
    target = next(targets, None)
    for seq in sequences:
        while target is not None and used + len(seq) > target:
            room = target - used
            if room > specials:
                body = seq[len(prefix): len(seq) - len(suffix)]
                keep = room - specials
                current.append(prefix + body[:keep] + suffix)
                used += room
                seq = prefix + body[keep:] + suffix
            segments.append(current)
            current = []
            target = next(targets, None)
        current.append(seq)
        used += len(seq)
    segments.append(current)
    while len(segments) < len(boundaries) + 1:  # the text ended before the last boundaries
        segments.append([])
    return segments


def resample_streams(sequences: list[list[int]], total: int, resamples: int, length: int, wrap) -> list[list[list[int]]]:
    """R token streams of `length` tokens: stream r starts at token r·total/R of the text (the
    sequences, `total` tokens in all) and wraps around its end."""
    parts = split_at(sequences, [total * r // resamples for r in range(1, resamples)], wrap)
    streams = []
    for r in range(resamples):
        rotated = [seq for part in parts[r:] + parts[:r] for seq in part]
        streams.append(split_at(rotated, [length], wrap)[0])
    return streams


def checked_budgets(budgets, resamples: int) -> list[int]:
    """The budgets sorted and each once; SettingsError for what no study can use."""
    budgets = sorted(set(int(b) for b in budgets))
    if not budgets or budgets[0] < MIN_BUDGET:
        raise SettingsError(f"The ablation needs token budgets of at least {MIN_BUDGET} tokens.", "Give budgets such as 1024 2048 4096.")
    if resamples < 1:
        raise SettingsError(f"{resamples} resamples per budget is too few.", "Use at least 1 (3 is the default).")
    return budgets


def plan_budgets(budgets: list[int], resamples: int, available: int) -> tuple[list[int], list[str]]:
    """The budgets that `available` tokens of text can serve, and notes on what they cannot."""
    notes = []
    kept = [b for b in budgets if b <= available]
    if len(kept) < len(budgets):
        notes.append(f"The matching text has {available:,} tokens: budget(s) {', '.join(f'{b:,}' for b in budgets if b > available)} "
                     "cannot be served and are left out.")
    if not kept:
        raise DataError(f"The matching text has only {available:,} tokens, fewer than the smallest budget ({budgets[0]:,}).",
                        "Give a longer matching text or smaller budgets.")
    shared = [b for b in kept if b * resamples > available]
    if shared:
        notes.append(f"The matching text has {available:,} tokens, fewer than {resamples} × {shared[0]:,}: from that budget on the "
                     f"{resamples} resamples overlap (each starts {available // resamples:,} tokens after the previous, wrapping around "
                     "the end), so their spread understates the variation between independent samples.")
    return kept, notes


def _fields(p, s, budgets: list[int], resamples: int) -> dict:
    """What the whole study depends on: the pair, the text, the merge and evaluation settings."""
    stats = {k: v for k, v in p.stats_fields(s).items() if k != "match_tokens"}
    return {**stats, **s.merge_fields(), **p.eval_fields(s), "lambdas": s.lambdas, "budgets": budgets, "resamples": resamples,
            "protocol": FORMAT}


def run_ablation(p, s, budgets=DEFAULT_BUDGETS, resamples: int = DEFAULT_RESAMPLES) -> dict:
    """The ablation of pipeline `p`'s pair under settings `s` (activation matching; the merge
    modes, evaluation data and λ grid are `s`'s). Cached on disk whole and point by point, so
    an interrupted study resumes where it stopped."""
    s.validate()
    if not MATCHERS[s.matcher].reads_text:
        raise SettingsError("The data ablation studies activation matching; weight matching reads no text.",
                            "Use --matcher activations (or both).")
    s = replace(s, matcher=ACTIVATIONS)
    progress = p.progress
    tokenizer = p.a.tokenizer
    wanted = checked_budgets(budgets, resamples)
    progress(STAGE, 0.0, "reading the matching text")
    packed = p.a.family.packed_text
    layout, wrap = (packed_sequences, ([], [])) if packed else (token_sequences, special_wrapping(tokenizer))
    # A little more than R × the largest budget, so that a cut at the end cannot leave less.
    needed = resamples * wanted[-1]
    sequences, read, text_notes = layout(tokenizer, p.match_passages, needed + resamples * s.max_length, s.max_length)
    usable = p.a.family.usable_positions(p.a.config)
    longest = max(map(len, sequences))
    if usable is not None and longest > usable:
        raise SettingsError(f"The matching text makes sequences of {longest} tokens, but the models have only {usable} positions.",
                            f"Set the maximum length to {usable} or less.")
    available = min(read, needed)
    budgets, notes = plan_budgets(wanted, resamples, available)
    fields = _fields(p, s, budgets, resamples)
    cached = p.cache.load_json(STAGE, fields)
    if cached is not None:
        progress(STAGE, 1.0, "cached")
        return cached
    streams = resample_streams(sequences, available, resamples, budgets[-1], wrap)
    steps = resamples * (1 + len(budgets))
    done = 0
    points: dict[tuple[int, int], dict] = {}
    for r, stream in enumerate(streams):
        found = {b: p.cache.load_json("ablation-match", {**fields, "budget": b, "resample": r}) for b in budgets}
        if any(v is None for v in found.values()):
            found = _matchings(p, s, split_at(stream, budgets, wrap)[: len(budgets)], budgets, r, resamples, fields,
                               lambda f, m: progress(STAGE, (done + f) / steps, m))
        done += 1
        for b in budgets:
            key = {**fields, "budget": b, "resample": r}
            curve = p.cache.load_json("ablation-curve", key)
            if curve is None:
                progress(STAGE, done / steps, f"resample {r + 1}/{resamples}, {b:,} tokens: loss path")
                started = time.perf_counter()
                matching = _as_matching(found[b], s)
                losses = p.path(s, plan_for_matching(p.b.family, p.b.head, p.b.num_layers, matching), STAGE)
                curve = {"curve": [[pt["lambda"], pt["loss"]] for pt in losses], "seconds": time.perf_counter() - started}
                p.cache.save_json("ablation-curve", key, curve)
            points[(b, r)] = {**found[b], **{"curve": curve["curve"], "curve_seconds": curve["seconds"]}}
            done += 1
    vanilla = barrier([pt["loss"] for pt in p.curve(s, "vanilla")])
    result = _summarise(p, s, budgets, resamples, points, vanilla, available, notes + text_notes)
    p.cache.save_json(STAGE, fields, result)
    progress(STAGE, 1.0, "done")
    return result


def _matchings(p, s, segments, budgets, r, resamples, fields, progress) -> dict[int, dict]:
    """One statistics pass over resample r's stream, matched at every budget's boundary."""
    batches, ends, total = [], [], 0
    for segment in segments:
        part = batch_sequences(segment, p.a.tokenizer, s.batch_size)
        batches += list(part)
        total += part.num_tokens
        ends.append(len(batches) - 1)
    joined = TokenBatches([ids for ids, _ in batches], [mask for _, mask in batches], total, sum(len(ids) for ids, _ in batches))
    found: dict[int, dict] = {}
    clock = {"start": time.perf_counter(), "matching": 0.0}

    def on_snapshot(step: int, stats) -> None:
        collected = time.perf_counter() - clock["start"] - clock["matching"]
        started = time.perf_counter()
        m = compute_matching(stats, p.a.spaces, s)
        seconds = time.perf_counter() - started
        clock["matching"] += seconds
        point = {
            "tokens": stats.num_tokens, "statistics_seconds": collected, "matching_seconds": seconds,
            "permutations": {k: [int(x) for x in v] for k, v in m.permutations.items()},
            "heads": {str(i): [int(x) for x in h.assignment] for i, h in m.heads.items()},
        }
        for b, end in zip(budgets, ends):  # budgets whose boundary fell after no new batch share it
            if end == step:
                found[b] = point
                p.cache.save_json("ablation-match", {**fields, "budget": b, "resample": r}, point)

    p.a.model.to(s.device)
    p.b.model.to(s.device)
    collect_statistics(
        p.a.model, p.b.model, p.a.family, p.a.config, joined, special_ids=special_token_ids(p.a.tokenizer), drop_special=s.drop_special,
        device=s.device, snapshot_after=set(ends), on_snapshot=on_snapshot,
        progress=lambda _, f, msg: progress(f, f"resample {r + 1}/{resamples}: statistics, {msg}"),
    )
    return found


def _as_matching(point: dict, s) -> Matching:
    perms = {k: np.asarray(v, dtype=np.int64) for k, v in point["permutations"].items()}
    return Matching(perms, {}, merge_settings(s))


def _spread(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "min": float(v.min()), "max": float(v.max())}


def _summarise(p, s, budgets, resamples, points, vanilla, available, notes) -> dict:
    largest = budgets[-1]
    rows = []
    for b in budgets:
        runs = [points[(b, r)] for r in range(resamples)]
        refs = [points[(largest, r)] for r in range(resamples)]
        per_space = [space_agreement(run["permutations"], ref["permutations"]) for run, ref in zip(runs, refs)]
        agreement = {space: float(np.mean([a[space] for a in per_space])) for space in per_space[0]}
        between = [by_kind(space_agreement(x["permutations"], y["permutations"])) for x, y in combinations(runs, 2)]
        per_layer = [head_agreement(run["heads"], ref["heads"]) for run, ref in zip(runs, refs)]
        heads = {layer: float(np.mean([h[layer] for h in per_layer])) for layer in per_layer[0]}
        barriers = [barrier([loss for _, loss in run["curve"]]) for run in runs]
        rows.append({
            "budget": b,
            "tokens": float(np.mean([run["tokens"] for run in runs])),
            "disjoint": b * resamples <= available,
            "barrier": {**_spread(barriers), "values": barriers},
            "agreement": agreement,
            "agreement_by_kind": by_kind(agreement),
            "agreement_between_resamples": {k: float(np.mean([x[k] for x in between])) for k in KINDS if between and k in between[0]},
            "head_agreement": {sp.layer_name(int(layer)): v for layer, v in sorted(heads.items(), key=lambda kv: int(kv[0]))},
            "head_agreement_mean": float(np.mean(list(heads.values()))) if heads else None,
            "seconds": float(np.mean([run["statistics_seconds"] + run["matching_seconds"] for run in runs])),
            "statistics_seconds": float(np.mean([run["statistics_seconds"] for run in runs])),
            "matching_seconds": float(np.mean([run["matching_seconds"] for run in runs])),
            "curve_seconds": float(np.mean([run["curve_seconds"] for run in runs])),
        })
    return {
        "format": FORMAT,
        "models": {"a": p.a.describe(), "b": p.b.describe()},
        "settings": asdict(s),
        "data": {"match": {"path": p.match_path, "fingerprint": text_fingerprint(p.match_passages), "tokens_read": available},
                 "eval": {"path": p.eval_path, "fingerprint": text_fingerprint(p.eval_passages)}},
        "budgets": budgets,
        "resamples": resamples,
        "protocol": ("resample r reads the matching text from token r·N/R on (N tokens read, wrapping around); budget b is the "
                     "first b tokens of that stream; one statistics pass per resample, snapshotted at every budget; agreement "
                     "is with the largest budget of the same resample, in the report's convention perm[i] = j"),
        "vanilla_barrier": vanilla,
        "rows": rows,
        "notes": list(notes),
    }


CSV_COLUMNS = ("budget", "tokens", "disjoint", "barrier_mean", "barrier_std", "barrier_min", "barrier_max",
               *(f"agreement_{k}" for k in KINDS), *(f"between_resamples_{k}" for k in KINDS), "head_agreement", "seconds", "curve_seconds")


def ablation_csv(result: dict) -> str:
    """One line per budget: barrier spread, agreement by kind of space, head agreement, time."""
    lines = [",".join(CSV_COLUMNS)]
    for row in result["rows"]:
        kinds, between = row["agreement_by_kind"], row["agreement_between_resamples"]
        values = [row["budget"], f"{row['tokens']:.0f}", str(row["disjoint"]).lower(),
                  *(f"{row['barrier'][k]:.6f}" for k in ("mean", "std", "min", "max")),
                  *(f"{kinds[k]:.6f}" if k in kinds else "" for k in KINDS),
                  *(f"{between[k]:.6f}" if k in between else "" for k in KINDS),
                  "" if row["head_agreement_mean"] is None else f"{row['head_agreement_mean']:.6f}",
                  f"{row['seconds']:.3f}", f"{row['curve_seconds']:.3f}"]
        lines.append(",".join(map(str, values)))
    return "\n".join(lines) + "\n"


def write_ablation(result: dict, out: str | Path) -> None:
    """ablation.json and ablation.csv, each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("ablation.json", json.dumps(result, indent=1)), ("ablation.csv", ablation_csv(result))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)
