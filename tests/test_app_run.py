"""`server.app_run` waits for the run an action started, however late it starts and however
short it is: checked on a stand-in page whose 'script state' the test drives, no Streamlit."""

from pathlib import Path

import pytest

from permerge_app.server import app_run, track_runs

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.browser

# A click starts a run `delay` ms later that lasts `length` ms, as Streamlit's frontend shows it;
# a run started while one is going replaces it, and the state stays "running" throughout.
PAGE = """<div data-testid="stApp" data-test-connection-state="CONNECTED" data-test-script-state="notRunning">app</div>
<script>
window.finished = 0;
let end = null;
function run(delay, length) {
  const app = document.querySelector('[data-testid="stApp"]');
  setTimeout(() => {
    clearTimeout(end);
    if (app.getAttribute('data-test-script-state') !== 'running') app.setAttribute('data-test-script-state', 'running');
    end = setTimeout(() => { window.finished += 1; app.setAttribute('data-test-script-state', 'notRunning'); }, length);
  }, delay);
}
</script>"""


@pytest.fixture(scope="module")
def page():
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.route("http://app.test/", lambda route: route.fulfill(body=PAGE, content_type="text/html"))
        track_runs(page)
        try:
            yield page
        finally:
            browser.close()


# A run that starts later than any fixed guess (the old 700 ms), and one over within 1 ms (between
# two of app_run's 100 ms polls: only the page's own record of the change can see it).
@pytest.mark.parametrize("delay, length", [(1500, 200), (50, 1)])
def test_app_run_waits_for_the_run_its_action_started(page, delay, length):
    page.goto("http://app.test/")  # a fresh document: nothing left over from another case
    with app_run(page, 20_000):
        page.evaluate(f"run({delay}, {length})")
    assert page.evaluate("window.finished") == 1


def test_app_run_acts_only_once_a_run_in_progress_is_over(page):
    """A click while a run is still going (a page's own rerun after its first run) restarts it
    without the state ever leaving 'running': app_run must wait for idle before acting, or it
    would wait for a start it can never see."""
    page.goto("http://app.test/")
    page.evaluate("run(0, 800)")
    page.wait_for_function("() => document.querySelector('[data-testid=\"stApp\"]').getAttribute('data-test-script-state') === 'running'")
    with app_run(page, 5_000):
        page.evaluate("run(0, 200)")
    assert page.evaluate("window.finished") == 2  # the run in progress, then the action's own
