"""The interactive target measured in the app itself: `python -m benchmarks.app_interactive`.

Starts the app (`streamlit run app.py`, as `bash run.sh app` does) on the bundled default
pair with its default settings, opens the Loss path page in Chromium (Playwright, Debian's
/usr/bin/chromium), and waits until both curves are drawn: statistics are then cached in the
server's memory. Then it changes one merge setting at a time in the sidebar, as a user would,
and reads the drawn chart in the browser every 20 ms: the time from the click to the first
point of the new permuted curve on screen, and to the whole curve on screen. Everything the
user waits for is inside those times: the rerun, matching, permuting, the evaluations, the
redraws, and the browser drawing them on the same two cores.

Prints a table and one JSON line prefixed with `BENCHMARK-RESULT ` (`python -m benchmarks
--only app` stores it with the other workloads).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from .report import render_app
from .worker import MARK

CHROMIUM = Path("/usr/bin/chromium")
# (sidebar control, option label) in the order they are changed; each starts a new permuted curve.
CHANGES = [
    ("Attention", "monotonic (head j ↔ head j)"),
    ("Residual stream", "all (averaged over nodes)"),
    ("Attention", "heads: Head-Perm (the paper's)"),
]
# Records (time, [trace name, points]) whenever the loss chart's traces change. Only charts
# that are not stale: while a rerun draws the new chart, the old one stays below it, marked
# data-stale, until the run ends.
POLLER = """() => {
  window.__traces = [];
  let last = "";
  const live = el => el.closest('[data-testid="stElementContainer"]')?.getAttribute('data-stale') !== 'true';
  const read = () => [...document.querySelectorAll('.js-plotly-plot')].filter(live).slice(0, 1).flatMap(el => (el.data || [])
      .filter(t => !/accuracy|barrier/.test(t.name || "")).map(t => [t.name, t.x ? t.x.length : 0]));
  window.__poll = setInterval(() => {
    const now = read(), key = JSON.stringify(now);
    if (key !== last) { window.__traces.push([performance.now(), now]); last = key; }
  }, 20);
}"""


def _cpu_seconds() -> dict[str, float]:
    """User+system CPU seconds so far of every process on this machine, from /proc: the
    browser's (chromium), everything else (the app server, this script), and of that the
    Python processes' ("python")."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"browser": 0.0, "other": 0.0, "python": 0.0}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        out["browser" if "chrom" in name.lower() else "other"] += seconds
        if name.startswith("python") or name.startswith("streamlit"):
            out["python"] += seconds
    return out


def _choose(page, control: str, option: str) -> float:
    """Pick `option` in the sidebar selectbox labelled `control`; browser time of the click (ms)."""
    box = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').filter(has_text=control)
    choice = page.locator('[role="option"]').filter(has_text=option).first
    for attempt in range(3):  # a rerun that redraws the sidebar closes an open list: open it again
        box.locator('input[role="combobox"]').click()
        try:
            choice.wait_for(timeout=5_000)
            break
        except Exception:
            if attempt == 2:
                raise
    clicked = page.evaluate("performance.now()")
    choice.click()
    return clicked


def _timings(log: list, clicked: float, lambdas: int) -> dict:
    """First point and whole curve of the new permuted path, from the poller's records."""
    first = full = None
    reset = False  # the new run's chart has replaced the old, complete one
    for t, traces in log:
        if t < clicked:
            continue
        permuted = [n for name, n in traces if name.startswith("permuted")]
        complete = any(name == "permuted" and n == lambdas for name, n in traces)
        if not complete:
            reset = True
        if reset and first is None and permuted and permuted[0] >= 1:
            first = t
        if reset and complete:
            full = t
            break
    as_s = lambda t: None if t is None else (t - clicked) / 1000  # noqa: E731
    return {"first_point": as_s(first), "full_curve": as_s(full)}


def measure(lambdas: int, watcher: str | None, initial_timeout_s: int) -> dict:
    from playwright.sync_api import sync_playwright

    from permerge_app.server import app_run, running_app, track_runs

    cache = tempfile.mkdtemp(prefix="permerge-bench-app-")
    env = {**os.environ, "PERMERGE_CACHE": cache, "HF_HUB_OFFLINE": "1"}
    args = ("--server.fileWatcherType", watcher) if watcher else ()
    log_path = Path(cache) / "streamlit.log"
    with running_app(env, log_path, args) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        track_runs(page)
        start = time.perf_counter()
        with app_run(page, initial_timeout_s * 1000):
            page.goto(f"{url}/loss_path")
        initial = time.perf_counter() - start
        page.evaluate(POLLER)
        idle_before = _cpu_seconds()
        page.wait_for_timeout(5000)
        idle_after = _cpu_seconds()
        idle = {k: (idle_after[k] - idle_before[k]) / 5 for k in idle_after}
        changes = []
        for control, option in CHANGES:
            cpu_before, wall_before = _cpu_seconds(), time.perf_counter()
            with app_run(page, 300_000):
                clicked = _choose(page, control, option)
            page.wait_for_timeout(200)  # the poller's last reading
            cpu_after, wall = _cpu_seconds(), time.perf_counter() - wall_before
            cpu = {k: cpu_after[k] - cpu_before[k] for k in cpu_after}
            changes.append({"control": control, "option": option, "wall": wall, "cpu": cpu,
                            **_timings(page.evaluate("window.__traces"), clicked, lambdas)})
        browser.close()
    inotify = sum("Inotify queue overflowed" in line for line in log_path.read_text().splitlines())
    return {"initial_page": initial, "changes": changes, "idle_cpu_per_s": idle, "lambdas": lambdas, "file_watcher": watcher or "app config",
            "inotify_overflows": inotify}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.app_interactive", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lambdas", type=int, default=None, help="the app's λ grid (default: the app's default)")
    parser.add_argument("--file-watcher", default=None, help="override server.fileWatcherType (auto, watchdog, poll, none)")
    parser.add_argument("--initial-timeout", type=int, default=600, help="seconds allowed for the first page (statistics and both curves)")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        raise SystemExit("app_interactive: /usr/bin/chromium is missing (Debian's chromium package)")
    from permerge_core.settings import AlignSettings

    lambdas = args.lambdas or int(os.environ.get("PERMERGE_LAMBDAS") or AlignSettings().lambdas)
    if args.lambdas:
        os.environ["PERMERGE_LAMBDAS"] = str(args.lambdas)
    result = measure(lambdas, args.file_watcher, args.initial_timeout)
    print("\n".join(render_app(result)))
    print(MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
