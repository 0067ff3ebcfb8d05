"""`python -m benchmarks`: time permerge against plain forward passes, print a table, write JSON.

    python -m benchmarks                       # everything, on the bundled default pair
    python -m benchmarks --pair DIR_A DIR_B    # another pair stands in for the default pair
    python -m benchmarks --only default,whole  # a subset: default, bert, matching, scaling, whole, app
    python -m benchmarks --quick               # a smoke run with tiny budgets (numbers mean little)
    python -m benchmarks --render FILE.json    # print the tables of an earlier run
    python -m benchmarks --compare OLD.json NEW.json   # key numbers side by side

Workloads (each in a fresh process, so every peak RSS is its own):
  default   the default pair with the default AlignSettings, stage by stage, with the
            yardstick, then the interactive case (statistics cached, attention mode changed)
  bert      a randomly initialised BERT-base-size pair (12×768, 12 heads, FFN 3072, vocab
            30522): 8,192 matching tokens, 4,096 evaluation tokens, 11 λ points
  matching  the matching stage alone (FFN + Head-Perm + residual first) on a randomly
            initialised 4-layer pair (width 256, FFN 1,024, 4 heads; 8,192 matching tokens):
            the first call in a fresh process and again, against direct sequential scipy
            calls on the same correlation matrices (`worker.direct_scipy_matching`)
  scaling   statistics of the default pair at 1×, 4× and 16× a 4,096-token matching budget,
            each budget in --repeats fresh processes (the one with the median peak is reported)
  whole     `python -m permerge_core align --lambdas 11 --no-cache` as one process against
            `python -m benchmarks.plain_forward` (only the forward passes) as one process
  app       the interactive case in the app itself, in Chromium: merge settings changed in the
            sidebar, time until the new permuted curve's first point and whole curve are on
            screen (`python -m benchmarks.app_interactive`; skipped without /usr/bin/chromium)
  grid      `python -m permerge_core grid` over the three bundled seeds (3 pairs, small budgets,
            --no-cache), --engine ray (one task at a time, and one per CPU side by side) against
            --engine local, each a whole process (Ray's start included); skipped without Ray

In default and bert the statistics pass runs --repeats times (3), each run between two plain
encoder passes after an untimed one; the run with the median ratio is reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .app_interactive import CHROMIUM
from .report import check_targets, compare, median_by_peak, render
from .worker import MARK

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "latest.json"
WORKLOADS = ("default", "bert", "matching", "scaling", "whole", "app", "grid")
# The mid-size shape of the matching workload: FFN spaces of 1,024 units, small enough that
# worker processes cost more than they save.
MATCHING_SHAPE = {"num_hidden_layers": 4, "hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4}


def _machine() -> dict:
    model = "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(), "gpu": None}


def _background_load() -> dict:
    """What else is running: permerge training processes distort every timing."""
    try:
        found = subprocess.run(["pgrep", "-f", "permerge_core train"], capture_output=True, text=True, check=False).stdout.split()
    except OSError:
        found = []
    return {"loadavg": list(os.getloadavg()), "training_processes": len(found)}


def _wait(proc: subprocess.Popen) -> tuple[int, float]:
    """Reap the child ourselves to read its own peak RSS (MiB)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024


def _result(stdout: str) -> dict:
    """The JSON result a benchmark process printed last, behind MARK."""
    line = [x for x in stdout.splitlines() if x.startswith(MARK)][-1]
    return json.loads(line[len(MARK):])


def run_worker(spec: dict) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.worker", json.dumps(spec)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    stdout = proc.stdout.read()
    rc, peak = _wait(proc)
    if rc != 0:
        raise SystemExit(f"benchmarks: worker {spec['kind']} failed with exit code {rc}")
    result = _result(stdout)
    # The worker may have reset the kernel's high-water mark (worker.PipelinePeak), which lowers
    # ru_maxrss; its own record of the process's peak is then the larger, true one.
    rss = result.setdefault("rss_mb", {})
    rss["peak_child"] = max(peak, rss.get("process_peak") or 0)
    return result


def timed_process(cmd: list[str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.stdout, proc.stderr
    stdout, stderr = out.read(), err.read()
    rc, peak = _wait(proc)
    seconds = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"benchmarks: {' '.join(cmd[:4])} … failed ({rc}): {stderr.strip()[-500:]}")
    return {"seconds": seconds, "peak_rss_mb": peak, "stdout_tail": stdout.strip().splitlines()[-3:]}


def run_app_benchmark(pair: list[str] | None, quick: bool, say) -> dict:
    """`benchmarks.app_interactive` in its own process (it starts the app and Chromium)."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return {"skipped": "playwright is not installed (pip install -r requirements-dev.txt)"}
    if not CHROMIUM.exists():
        return {"skipped": f"{CHROMIUM} is missing (Debian's chromium package)"}
    env = dict(os.environ)
    if pair:  # the app's sidebar starts on these instead of the bundled pair
        env.update(PERMERGE_MODEL_A=pair[0], PERMERGE_MODEL_B=pair[1])
    if quick:
        env.update(PERMERGE_MATCH_TOKENS="4096", PERMERGE_EVAL_TOKENS="2048")
    say("the app in Chromium: merge settings changed in the sidebar" + (" (quick budgets)" if quick else ""))
    cmd = [sys.executable, "-m", "benchmarks.app_interactive", *(["--lambdas", "5"] if quick else [])]
    load_start = os.getloadavg()[0]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmarks: app_interactive failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    result = _result(proc.stdout)
    result["loadavg_1min"] = {"start": load_start, "end": os.getloadavg()[0]}
    return result


def run_grid_benchmark(quick: bool, repeats: int, say) -> dict:
    """The grid command over the bundled seeds, engine local against engine ray, alternating;
    the run with the median ratio is reported."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return {"skipped": "Ray is not installed (pip install -r requirements-ray.txt)"}
    seeds = [str(p) for p in sorted((REPO / "assets" / "models").glob("seed-*"))]
    budget = ["--match-tokens", "2048", "--eval-tokens", "1024", "--lambdas", "3"] if quick else \
        ["--match-tokens", "8192", "--eval-tokens", "4096", "--lambdas", "5"]
    # ray: a task per CPU, side by side; ray_serial: one task at a time with every CPU, like the
    # local engine, so that its ratio is Ray's own cost (on a busy machine two processes also
    # get a larger share of the CPUs than one, which flatters the side-by-side ratio).
    engines = {"local": ["--engine", "local"], "ray": ["--engine", "ray"],
               "ray_serial": ["--engine", "ray", "--cpus-per-task", str(os.cpu_count() or 1)]}
    runs = []
    for run in range(repeats):
        times = {}
        for name, flags in engines.items():
            say(f"grid of {len(seeds)} bundled seeds, {' '.join(flags)} ({run + 1} of {repeats})")
            load_start = os.getloadavg()[0]
            with tempfile.TemporaryDirectory(prefix="permerge-bench-grid-") as tmp:
                times[name] = timed_process([sys.executable, "-m", "permerge_core", "grid", "--models", *seeds, *budget,
                                             *flags, "--no-cache", "--quiet", "--out", tmp])
                cells = json.loads((Path(tmp) / "grid.json").read_text())
            times[name].update(flags=" ".join(flags), workers=cells["workers"], pair_seconds=[c["seconds"] for c in cells["pairs"]],
                               loadavg_1min={"start": load_start, "end": os.getloadavg()[0]})
        runs.append({**times, "ratio": times["ray_serial"]["seconds"] / times["local"]["seconds"],
                     "ratio_side_by_side": times["ray"]["seconds"] / times["local"]["seconds"]})
    chosen = sorted(runs, key=lambda r: r["ratio"])[(len(runs) - 1) // 2]
    return {**chosen, "pairs": len(seeds) * (len(seeds) - 1) // 2, "settings": " ".join(budget) + " --no-cache",
            "runs": [[r["ratio"], r["ratio_side_by_side"]] for r in runs]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", nargs=2, metavar=("DIR_A", "DIR_B"), help="stand-in for the bundled default pair")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder, if not in the pair's folders")
    parser.add_argument("--only", default=",".join(WORKLOADS), help=f"comma-separated subset of {','.join(WORKLOADS)}")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test of the benchmark itself")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the workers (default: torch's own)")
    parser.add_argument("--scale-base", type=int, default=4096, help="matching tokens of the 1× scaling run")
    parser.add_argument("--scales", default="1,4,16")
    parser.add_argument("--repeats", type=int, default=None,
                        help="statistics runs per measurement: in-process for default and bert, fresh processes per scaling budget (default 3; 1 with --quick)")
    parser.add_argument("--render", metavar="JSON", help="print the tables of an earlier results file and exit")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="print two results files side by side and exit")
    args = parser.parse_args(argv)

    if args.render:
        print(render(json.loads(Path(args.render).read_text())))
        return 0
    if args.compare:
        print(compare(*(json.loads(Path(f).read_text()) for f in args.compare)))
        return 0
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = set(only) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(sorted(unknown))}")

    if args.pair:
        pair = [str(Path(p).resolve()) for p in args.pair]
        pair_label = "given pair"
    else:
        sys.path.insert(0, str(REPO))
        seeds = sorted((REPO / "assets" / "models").glob("seed-*"))
        if len(seeds) < 2 and any(w != "bert" for w in only):
            parser.error("the bundled default pair (assets/models/seed-*) is missing; pass --pair DIR_A DIR_B")
        pair = [str(p) for p in seeds[:2]]
        pair_label = "bundled default pair"

    q = args.quick
    repeats = args.repeats if args.repeats is not None else (1 if q else 3)
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    base = {"threads": args.threads, "tokenizer": args.tokenizer}
    results: dict = {
        "format": "permerge-benchmark/1",
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": q,
        "machine": _machine(),
        "load_at_start": _background_load(),
        "git": subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True).stdout.strip(),
        "pair": {"label": pair_label, "a": pair[0] if pair else None, "b": pair[1] if pair else None},
        "workloads": {},
    }
    w = results["workloads"]

    def say(msg):
        print(f"benchmarks: {msg}", file=sys.stderr, flush=True)

    if "default" in only:
        settings = {"match_tokens": 4096, "eval_tokens": 2048, "lambdas": 5} if q else {}
        say(f"default pair, settings {settings or 'default'}")
        w["default"] = run_worker({**base, "kind": "pipeline", "a": pair[0], "b": pair[1], "settings": settings,
                                       "interactive": [["attention", "monotonic"], ["residual", "all"]], "statistics_floor": True,
                                       "repeats": repeats})

    if "bert" in only:
        with tempfile.TemporaryDirectory(prefix="permerge-bench-bert-") as tmp:
            config = {"num_hidden_layers": 2} if q else {}
            folders = [str(Path(tmp) / "seed-0"), str(Path(tmp) / "seed-1")]
            say("writing a randomly initialised BERT-base-size pair")
            made = run_worker({"kind": "make_pair", "config": config, "out": folders})
            settings = {"match_tokens": 2048, "eval_tokens": 1024, "lambdas": 3} if q else {"match_tokens": 8192, "eval_tokens": 4096, "lambdas": 11}
            say(f"BERT-base-size pair, settings {settings}")
            w["bert"] = run_worker({**base, "kind": "pipeline", "a": folders[0], "b": folders[1], "settings": settings, "tokenizer": None,
                                    "repeats": repeats})
            w["bert"]["pair_config"] = made["config"]
            w["bert"]["pair_note"] = (
                "randomly initialised BertForMaskedLM (torch seeds 0 and 1), saved as float32; text tokenised with the "
                "bundled 4,096-entry WordPiece tokenizer, so input ids are < 4096 while the output layer covers all 30,522"
            )

    if "matching" in only:
        with tempfile.TemporaryDirectory(prefix="permerge-bench-matching-") as tmp:
            folders = [str(Path(tmp) / "seed-0"), str(Path(tmp) / "seed-1")]
            say("writing a randomly initialised 4-layer pair (width 256, FFN 1,024, 4 heads)")
            made = run_worker({"kind": "make_pair", "config": MATCHING_SHAPE, "out": folders})
            settings = {"match_tokens": 2048 if q else 8192}
            say(f"matching alone, settings {settings}")
            w["matching"] = run_worker({**base, "kind": "matching", "a": folders[0], "b": folders[1], "settings": settings,
                                        "tokenizer": None, "repeats": repeats})
            w["matching"]["pair_config"] = made["config"]

    if "scaling" in only:
        base_tokens = 1024 if q else args.scale_base
        scales = [1, 4] if q else [int(x) for x in args.scales.split(",")]
        w["scaling"] = {}
        for k in scales:
            runs = []
            for run in range(repeats):  # fresh processes: a heap's history is part of what is measured
                say(f"statistics at {k}× {base_tokens:,} matching tokens (process {run + 1} of {repeats})")
                runs.append(run_worker({**base, "kind": "statistics", "a": pair[0], "b": pair[1], "settings": {"match_tokens": k * base_tokens}}))
            w["scaling"][f"x{k}"] = median_by_peak(runs)

    if "whole" in only:
        lambdas = 5 if q else 11
        budget = ["--match-tokens", "4096", "--eval-tokens", "2048"] if q else []
        tok = ["--tokenizer", args.tokenizer] if args.tokenizer else []
        load_start = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(prefix="permerge-bench-run-") as tmp:
            say(f"whole run: align CLI, {lambdas} λ points, --no-cache")
            align = timed_process([sys.executable, "-m", "permerge_core", "align", "--model-a", pair[0], "--model-b", pair[1], *tok, *budget,
                                   "--lambdas", str(lambdas), "--no-cache", "--quiet", "--out", tmp])
            say("whole run: plain forward passes")
            plain = timed_process([sys.executable, "-m", "benchmarks.plain_forward", pair[0], pair[1], *tok, *budget, "--lambdas", str(lambdas)])
        w["whole"] = {"lambdas": lambdas, "align": align, "plain": plain, "ratio": align["seconds"] / plain["seconds"],
                      "loadavg_1min": {"start": load_start, "end": os.getloadavg()[0]},
                      "settings": "default AlignSettings (FFN on, Head-Perm attention, residual first), " + (" ".join(budget) or "default budgets")}

    if "app" in only:
        w["app"] = run_app_benchmark(pair if args.pair else None, q, say)

    if "grid" in only:
        w["grid"] = run_grid_benchmark(q, args.repeats or 1, say)

    results["load_at_end"] = _background_load()
    results["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    results["targets"] = check_targets(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(render(results))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
