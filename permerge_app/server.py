"""The app as a server process on 127.0.0.1, for the browser test and the app benchmark.

`running_app(env, log_path)` starts `streamlit run app.py` on a free local port with the
repository's `.streamlit/config.toml` (what `bash run.sh app` runs), waits until Streamlit
answers its health check, yields the URL, and stops the server afterwards. In a Playwright
page prepared with `track_runs`, `with app_run(page, timeout_ms): <action>` waits until the
script run that the action (a page load, a click) started has finished.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(env: dict, log_path: Path, extra_args: tuple[str, ...] = (), start_timeout: float = 120):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.address", "127.0.0.1", "--server.port", str(port),
             "--server.headless", "true", "--browser.gatherUsageStats", "false", *extra_args],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.time() + start_timeout
            while True:
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read().strip() == b"ok":
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"streamlit did not start (exit code {proc.poll()}); see {log_path}")
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


# Installed in every document of a tracked page before the app's own scripts: counts how often
# the app's script state has left "notRunning" (a rerun requested or a run started), from
# the DOM's own record of every change, so no start is missed however short the run.
RUN_COUNTER = """
window.__permergeDocument = Math.random();
window.__permergeRuns = 0;
new MutationObserver(records => {
  for (const r of records) if (r.oldValue === 'notRunning') window.__permergeRuns += 1;
}).observe(document, {subtree: true, attributes: true, attributeOldValue: true, attributeFilter: ['data-test-script-state']});
"""

# The app is connected and idle, and a run started since the reading `[document, runs]`: in
# the same document, the count went up; in a new one (a page load), its state is no longer
# "initial", which it is until the first run.
RAN_SINCE = """([doc, runs]) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-connection-state') !== 'CONNECTED') return false;
  if (app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  return window.__permergeDocument !== doc || window.__permergeRuns > runs;
}"""


# No page yet, or the app connected and not running: the moment to act on it.
IDLE = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app) return true;
  return app.getAttribute('data-test-connection-state') === 'CONNECTED' && app.getAttribute('data-test-script-state') === 'notRunning';
}"""

POLL_MS = 100


def track_runs(page) -> None:
    """Count the app's script runs in `page` from its next page load on (for `app_run`)."""
    page.add_init_script(RUN_COUNTER)


@contextmanager
def app_run(page, timeout_ms: int) -> Iterator[None]:
    """Wait, after the block, until the app run started by the block's action has finished:
    not a guess at how long a rerun takes to start, but that it started and ended.

    The block runs only once the app is idle: an action taken while a run is still going (a
    page's own `st.rerun()` after its first run) would restart that run without its state ever
    leaving "running", so no new start could be counted. Both waits are checked every 100 ms,
    not on every animation frame (Playwright's default), which kept the browser busy on the
    cores the app computes on for as long as the run lasted."""
    page.wait_for_function(IDLE, timeout=timeout_ms, polling=POLL_MS)
    before = page.evaluate("[window.__permergeDocument ?? null, window.__permergeRuns ?? 0]")
    yield
    page.wait_for_function(RAN_SINCE, arg=before, timeout=timeout_ms, polling=POLL_MS)
