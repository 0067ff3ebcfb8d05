"""Tables (Markdown, readable in a terminal) and target checks for a benchmark results dict."""

from __future__ import annotations

GB = 1e9 / 2**20  # 3 GB in MiB is 3 × this

TARGETS = [
    # (name, workload path, limit, description)
    ("statistics ratio, default pair", "default.ratios.statistics", 1.5, "statistics time / plain encoder passes of A and B (median run)"),
    ("statistics ratio, BERT-base-size", "bert.ratios.statistics", 2.0, "statistics time / plain encoder passes of A and B (median run)"),
    ("loss-path ratio, default pair", "default.ratios.loss_path", 1.15, "loss-path time / plain masked-LM passes"),
    ("whole-run ratio", "whole.ratio", 1.3, "align CLI process / plain forward-pass process"),
    ("matching, BERT-base-size (s)", "bert.stages.matching", 10.0, "seconds"),
    ("matching alone, 4×256 (FFN 1024): first call / direct scipy", "matching.ratio", 1.0, "the stage's first call in a process / direct sequential scipy calls (median)"),
    ("peak RSS ×16 / ×1 (statistics)", "scaling_growth", 1.10, "pipeline peak RSS of the largest / smallest budget (median process each)"),
    ("peak RSS, BERT-base-size (MiB)", "bert.pipeline_peak", 3 * GB, "3 GB, pipeline peak (yardstick passes excluded)"),
    ("interactive: first point (s)", "default.interactive.0.first_point", 2.0, "after a change of attention mode"),
    ("interactive: full curve (s)", "default.interactive.0.full_curve", 10.0, "after a change of attention mode"),
    ("interactive, residual change: first point (s)", "default.interactive.1.first_point", 2.0, "after residual first → all"),
    ("interactive, residual change: full curve (s)", "default.interactive.1.full_curve", 10.0, "after residual first → all"),
    ("app in Chromium: first point (s)", "app.changes.0.first_point", 2.0, "click on a new attention mode → first new point drawn"),
    ("app in Chromium: full curve (s)", "app.changes.0.full_curve", 10.0, "click on a new attention mode → whole new curve drawn"),
    ("app in Chromium, residual change: first point (s)", "app.changes.1.first_point", 2.0, "click on residual all → first new point drawn"),
    ("app in Chromium, residual change: full curve (s)", "app.changes.1.full_curve", 10.0, "click on residual all → whole new curve drawn"),
    ("grid, 3 pairs: engine ray / engine local", "grid.ratio", 1.2, "whole grid processes over the bundled seeds, Ray's start included, one task at a time"),
]


def pipeline_peak(workload: dict) -> float:
    """The pipeline's own peak RSS (yardstick passes excluded), or the process's in older runs."""
    return workload["rss_mb"].get("pipeline_peak") or workload["rss_mb"]["peak_child"]


def lower_median(items: list, key):
    """The item with the median key, the lower middle of an even count (so that it is one
    of the measured items, not an average of two)."""
    return sorted(items, key=key)[(len(items) - 1) // 2]


def median_by_peak(runs: list[dict]) -> dict:
    """Of several fresh-process statistics runs of one budget, the one with the median
    pipeline peak, with every run's numbers attached: the C heap's state varies from
    process to process, and one process's peak alone is a sample of that, not the budget's cost."""
    chosen = dict(lower_median(runs, pipeline_peak))
    chosen["processes"] = [
        {"pipeline_peak": pipeline_peak(r), "process_peak": r["rss_mb"].get("peak_child"),
         "statistics": r["stages"]["statistics"], "ratio": r["ratios"]["statistics"]}
        for r in runs
    ]
    return chosen


def render_statistics_runs(name: str, workload: dict) -> list[str]:
    """Every statistics run of a workload, when it was run more than once."""
    runs = workload.get("statistics_runs") or []
    if len(runs) < 2:
        return []
    each = ", ".join(f"{_f(r['ratio'])} ({_f(r['seconds'])} s / {_f(r['encoder_passes'])} s)" for r in runs)
    return [f"Statistics runs, {name} (each between two yardstick passes; the median is reported): {each}.", ""]


def _get(results: dict, path: str):
    if path == "scaling_growth":
        sc = results["workloads"].get("scaling") or {}
        if len(sc) < 2:
            return None
        keys = sorted(sc, key=lambda k: int(k[1:]))
        return pipeline_peak(sc[keys[-1]]) / pipeline_peak(sc[keys[0]])
    if path.endswith(".pipeline_peak"):
        workload = results["workloads"].get(path.split(".")[0])
        return pipeline_peak(workload) if workload else None
    node = results["workloads"]
    for part in path.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def check_targets(results: dict) -> list[dict]:
    out = []
    for name, path, limit, what in TARGETS:
        value = _get(results, path)
        out.append({"target": name, "value": value, "limit": limit, "met": None if value is None else value <= limit, "what": what})
    return out


def _f(x, digits=2):
    return "–" if x is None else f"{x:,.{digits}f}"


def render_app(app: dict) -> list[str]:
    """The `app` workload's table (`benchmarks.app_interactive`), or why it was skipped."""
    if app.get("skipped"):
        return [f"app in Chromium: skipped ({app['skipped']})"]
    idle = app.get("idle_cpu_per_s", {})
    lines = [
        f"| app in Chromium, default pair, {app['lambdas']} λ (first page: {_f(app['initial_page'])} s; "
        f"idle page: browser {_f(idle.get('browser'))} CPU s/s; file watcher: {app.get('file_watcher')}, "
        f"inotify overflows logged: {app.get('inotify_overflows')}) | first point s | full curve s | click to idle s "
        "| CPU s: browser | CPU s: app server and rest |",
        "|---|---|---|---|---|---|",
    ]
    for c in app["changes"]:
        lines.append(f"| → {c['control']}: {c['option']} | {_f(c['first_point'])} | {_f(c['full_curve'])} | {_f(c.get('wall'))} "
                     f"| {_f(c.get('cpu', {}).get('browser'))} | {_f(c.get('cpu', {}).get('other'))} |")
    return lines


def render_floor(workload: dict) -> list[str]:
    """The arithmetic floor of a λ point next to the measured points (worker.arithmetic_floor)."""
    f = workload.get("floor")
    if not f:
        return []
    points = [p["seconds"] for p in workload.get("lambda_vanilla", []) + workload.get("lambda_permuted", []) if p["seconds"] > 1e-3]
    measured = sorted(points)[len(points) // 2] if points else None
    return [
        f"Arithmetic floor: one λ point does {f['matmul_flops_per_point'] / 1e9:,.1f} GFLOP of matrix products (counted; attention, "
        f"GELU, LayerNorm and softmax not included); at this machine's best float32 matrix-product rate, "
        f"{f['gemm_flops_per_s'] / 1e9:,.0f} GFLOP/s on {f['threads']} threads, that is at least {_f(f['seconds_per_point'], 3)} s per point "
        f"and {_f(f['curve_seconds'])} s for a new {f['points']}-point permuted curve. Measured: {_f(measured, 3)} s per point "
        f"(median of the pipeline's evaluated points); the floor is {_f(None if measured is None else f['seconds_per_point'] / measured)} of that.",
        "",
    ]


def render_statistics_floor(workload: dict) -> list[str]:
    """The statistics' A×B products timed alone, as a floor under the statistics ratio
    (worker.cross_products_alone)."""
    c = workload.get("yardstick", {}).get("cross_products")
    if not c:
        return []
    plain = workload["yardstick"]["encoder_passes"]
    return [
        f"Statistics floor: the pass's {c['products']:,} A×B products ({c['multiply_adds'] / 1e9:,.1f} G multiply-adds over "
        f"{c['tokens']:,} tokens) take {_f(c['seconds'])} s alone in float32 on random data of the same shapes (best of "
        f"{len(c['runs'])}: {', '.join(_f(r) for r in c['runs'])} s), {_f(c['seconds'] / plain)} of the plain encoder passes "
        f"({_f(plain)} s). Unless its forward passes or products run faster than these, the statistics ratio cannot go below {_f(1 + c['seconds'] / plain)}; "
        f"measured: {_f(workload['ratios']['statistics'])}.",
        "",
    ]


def render(results: dict) -> str:
    w = results["workloads"]
    m = results["machine"]
    lines = []
    threads = next((v.get("torch_threads") for v in w.values() if isinstance(v, dict) and "torch_threads" in v), None)
    lines.append(f"machine: {m['cpu']}, {m['cores']} cores, torch threads {threads}; GPU: none (no GPU row)")
    la, lb = results.get("load_at_start", {}), results.get("load_at_end", {})
    lines.append(
        f"background: {la.get('training_processes', '?')} training process(es) at start, {lb.get('training_processes', '?')} at end; "
        f"load average at start {_f((la.get('loadavg') or [None])[0])}, at end {_f((lb.get('loadavg') or [None])[0])}"
        + ("  (QUICK smoke run: budgets are tiny, numbers mean little)" if results.get("quick") else "")
    )
    loads = []
    for name, r in w.items():
        for key, sub in ([(name, r)] if name != "scaling" else [(f"scaling {k}", v) for k, v in r.items()]):
            if isinstance(sub, dict) and "loadavg_1min" in sub:
                loads.append(f"{key} {sub['loadavg_1min']['start']:.1f}→{sub['loadavg_1min']['end']:.1f}")
    if loads:
        lines.append(f"1-min load average at start→end of each workload ({m['cores']} cores; higher means other work was running): " + ", ".join(loads))
    lines.append(f"git {results.get('git')}, pair: {results.get('pair', {}).get('label')}")
    lines.append("")

    rows = [(k, w[k]) for k in ("default", "bert") if k in w]
    if rows:
        lines.append("| workload | tokens (match / eval) | λ | load s | statistics s | matching s | permuting s | λ eval s (mean) | loss paths s | report s | total s | stats tok/s | eval tok/s | peak RSS MiB (process) | peak RSS MiB (pipeline) | stats ratio | loss ratio |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name, r in rows:
            st = r["stages"]
            # evaluated points only (runs before θ(1) was evaluated remembered it: ~0 s)
            pts = [p["seconds"] for p in r.get("lambda_vanilla", []) + r.get("lambda_permuted", []) if p["seconds"] > 1e-3]
            mean = sum(pts) / len(pts) if pts else None
            label = {"default": "default pair", "bert": "BERT-base-size (random init)"}[name]
            shape = r["model"]
            lines.append(
                f"| {label} ({shape['layers']}×{shape['hidden']}, FFN {shape['ffn']}, vocab {shape['vocab']}) | {r['num_tokens']:,} / {r['eval_tokens']:,} | {r['settings']['lambdas']} "
                f"| {_f(st['load'])} | {_f(st['statistics'])} | {_f(st['matching'])} | {_f(st['permuting'])} | {_f(mean)} | {_f(st['loss_path'])} "
                f"| {_f(st['report'])} | {_f(st['total'])} | {_f(r['tokens_per_second']['statistics'], 0)} | {_f(r['tokens_per_second']['loss_path'], 0)} "
                f"| {_f(r['rss_mb']['peak_child'], 0)} | {_f(r['rss_mb'].get('pipeline_peak'), 0)} | {_f(r['ratios']['statistics'])} | {_f(r['ratios']['loss_path'])} |"
            )
        lines.append("")
        lines.append("| yardstick (same process) | encoder passes A+B s | enc tok/s | masked-LM pass s (mean) | passes needed | masked-LM total s |")
        lines.append("|---|---|---|---|---|---|")
        for name, r in rows:
            y = r["yardstick"]
            lines.append(f"| {name} | {_f(y['encoder_passes'])} | {_f(r['tokens_per_second']['yardstick_encoders'], 0)} | {_f(y['mlm_pass_mean'], 3)} | {y['mlm_passes_needed']} | {_f(y['mlm_passes_total'])} |")
        lines.append("")
        for name, r in rows:
            lines += render_statistics_runs(name, r)
        for _, r in rows:
            lines += render_statistics_floor(r)

    if "matching" in w:
        r = w["matching"]
        shape, st = r["model"], r["settings"]
        lines.append(f"| matching alone, random {shape['layers']}×{shape['hidden']} pair (FFN {shape['ffn']}, {shape['heads']} heads; "
                     f"FFN {'on' if st['ffn'] else 'off'}, attention {st['attention']}, residual {st['residual']}) "
                     "| first call | again (each run) | direct scipy calls (each run) | first / direct (median) |")
        lines.append("|---|---|---|---|---|")
        for unit, name in (("wall", "ratio"), ("cpu", "cpu_ratio")):
            lines.append(f"| {unit} s ({r['num_tokens']:,} matching tokens) | {_f(r['first'][unit], 3)} | {', '.join(_f(x[unit], 3) for x in r['again'])} "
                         f"| {', '.join(_f(x[unit], 3) for x in r['direct_scipy'])} | {_f(r[name])} |")
        lines.append("")
        lines.append("CPU s counts every thread of the process and the assignment worker processes: under background load the wall time of "
                     "parallel code gains (more runnable threads get more of the cores), its CPU time does not.")
        lines.append("")

    if "scaling" in w:
        lines.append("| statistics, default pair | tokens | statistics s | tok/s | stats ratio | RSS after load MiB | peak RSS MiB (process) | peak RSS MiB (pipeline) | pipeline peak, each process MiB |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for key, r in sorted(w["scaling"].items(), key=lambda kv: int(kv[0][1:])):
            each = ", ".join(_f(x["pipeline_peak"], 0) for x in r.get("processes", []))
            lines.append(
                f"| {key[1:]}× | {r['num_tokens']:,} | {_f(r['stages']['statistics'])} | {_f(r['num_tokens'] / r['stages']['statistics'], 0)} "
                f"| {_f(r['ratios']['statistics'])} | {_f(r['rss_mb']['after_load'], 0)} | {_f(r['rss_mb']['peak_child'], 0)} | {_f(r['rss_mb'].get('pipeline_peak'), 0)} "
                f"| {each or '–'} |"
            )
        if any(len(r.get("processes", [])) > 1 for r in w["scaling"].values()):
            lines.append("")
            lines.append("Each budget ran in several fresh processes; its row is the process with the median pipeline peak.")
        lines.append("")

    if "whole" in w:
        r = w["whole"]
        lines.append(f"| whole run ({r['lambdas']} λ, {r['settings']}) | seconds | peak RSS MiB |")
        lines.append("|---|---|---|")
        lines.append(f"| `python -m permerge_core align --no-cache` | {_f(r['align']['seconds'])} | {_f(r['align']['peak_rss_mb'], 0)} |")
        lines.append(f"| plain forward passes (`python -m benchmarks.plain_forward`) | {_f(r['plain']['seconds'])} | {_f(r['plain']['peak_rss_mb'], 0)} |")
        lines.append(f"| ratio | {_f(r['ratio'])} | |")
        lines.append("")

    if "default" in w and w["default"].get("interactive"):
        lines.append("| interactive, default pair (statistics cached in memory) | matching s | permuting s | first point s | full curve s |")
        lines.append("|---|---|---|---|---|")
        for i in w["default"]["interactive"]:
            m = i["settings"]
            lines.append(f"| → attention {m['attention']}, residual {m['residual']} | {_f(i['matching'])} | {_f(i['permuting'])} "
                         f"| {_f(i['first_point'])} (λ={i['first_point_lambda']:g}) | {_f(i['full_curve'])} |")
        lines.append("")
        lines += render_floor(w["default"])

    if w.get("app"):
        lines += render_app(w["app"]) + [""]

    if w.get("grid") and "skipped" not in w["grid"]:
        r = w["grid"]
        lines.append(f"| grid, {r['pairs']} pairs of the bundled seeds ({r['settings']}) | seconds | workers | seconds per pair | peak RSS MiB (driver) |")
        lines.append("|---|---|---|---|---|")
        for engine in ("local", "ray_serial", "ray"):
            e = r[engine]
            lines.append(f"| `grid {e['flags']}` | {_f(e['seconds'])} | {e['workers']} | {', '.join(_f(x) for x in e['pair_seconds'])} "
                         f"| {_f(e['peak_rss_mb'], 0)} |")
        lines.append(f"| ratio ray (one task at a time) / local: Ray's cost | {_f(r['ratio'])} | | | |")
        lines.append(f"| ratio ray (a task per CPU) / local | {_f(r['ratio_side_by_side'])} | | | |")
        if len(r.get("runs", [])) > 1:
            lines.append(f"| ratios of every run (the median is reported) | {'; '.join(', '.join(_f(x) for x in pair) for pair in r['runs'])} | | | |")
        lines.append("")

    lines.append("| target | measured | limit | met |")
    lines.append("|---|---|---|---|")
    for t in results.get("targets", []):
        met = "–" if t["met"] is None else ("yes" if t["met"] else "NO")
        lines.append(f"| {t['target']} | {_f(t['value'])} | {_f(t['limit'])} | {met} |")
    return "\n".join(lines)


COMPARE = [
    ("default: statistics s", "default.stages.statistics"),
    ("default: statistics ratio", "default.ratios.statistics"),
    ("default: statistics ratio floor (products alone)", "default.ratios.statistics_floor"),
    ("default: matching s", "default.stages.matching"),
    ("default: permuting s", "default.stages.permuting"),
    ("default: loss-path ratio", "default.ratios.loss_path"),
    ("default: peak RSS MiB", "default.rss_mb.peak_child"),
    ("interactive (attention change): first point s", "default.interactive.0.first_point"),
    ("interactive (attention change): full curve s", "default.interactive.0.full_curve"),
    ("app in Chromium (attention change): first point s", "app.changes.0.first_point"),
    ("app in Chromium (attention change): full curve s", "app.changes.0.full_curve"),
    ("BERT-base-size: statistics s", "bert.stages.statistics"),
    ("BERT-base-size: statistics ratio", "bert.ratios.statistics"),
    ("BERT-base-size: matching s", "bert.stages.matching"),
    ("BERT-base-size: permuting s", "bert.stages.permuting"),
    ("BERT-base-size: report s", "bert.stages.report"),
    ("BERT-base-size: loss-path ratio", "bert.ratios.loss_path"),
    ("BERT-base-size: peak RSS MiB (process)", "bert.rss_mb.peak_child"),
    ("BERT-base-size: peak RSS MiB (pipeline)", "bert.pipeline_peak"),
    ("matching alone, 4×256 (FFN 1024): first call s", "matching.first.wall"),
    ("matching alone, 4×256 (FFN 1024): first call CPU s", "matching.first.cpu"),
    ("matching alone, 4×256 (FFN 1024): first / direct scipy", "matching.ratio"),
    ("scaling: peak RSS ×1 MiB", "scaling.x1.rss_mb.peak_child"),
    ("scaling: peak RSS ×16 MiB", "scaling.x16.rss_mb.peak_child"),
    ("scaling: peak RSS ×16 / ×1", "scaling_growth"),
    ("whole run: align s", "whole.align.seconds"),
    ("whole run: plain s", "whole.plain.seconds"),
    ("whole run: ratio", "whole.ratio"),
    ("grid: engine local s", "grid.local.seconds"),
    ("grid: engine ray s", "grid.ray.seconds"),
    ("grid: ray (one task at a time) / local", "grid.ratio"),
    ("grid: ray (a task per CPU) / local", "grid.ratio_side_by_side"),
]


def compare(before: dict, after: dict) -> str:
    """Key numbers of two results files side by side (Markdown)."""
    def load(r):
        return ", ".join(f"{k} {v['loadavg_1min']['start']:.1f}→{v['loadavg_1min']['end']:.1f}"
                         for k, v in r["workloads"].items() if isinstance(v, dict) and "loadavg_1min" in v)

    lines = [f"before: git {before.get('git')} (load: {load(before)}); after: git {after.get('git')} (load: {load(after)})", "",
             "| measure | before | after |", "|---|---|---|"]
    for name, path in COMPARE:
        lines.append(f"| {name} | {_f(_get(before, path))} | {_f(_get(after, path))} |")
    return "\n".join(lines)
