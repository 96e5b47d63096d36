"""The explorer in a real browser: served by `streamlit run` on 127.0.0.1, driven in headless
Chromium (Debian's package; Playwright uses it, it downloads nothing).

Skipped when Chromium or Playwright is missing, unless TESTBED_REQUIRE_BROWSER=1 (CI), where a
missing browser is a failure. TESTBED_UPDATE_SCREENSHOT=1 also refreshes docs/explorer.png.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from testbed import explore

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "explorer.png"

pytestmark = pytest.mark.browser


def _require_browser() -> None:
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} not found (apt-get install -y chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "playwright is not installed (pip install -e '.[dev]')"
    if missing is None:
        return
    if os.environ.get("TESTBED_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser test required (TESTBED_REQUIRE_BROWSER=1) but {missing}")
    pytest.skip(missing)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path):
    """`streamlit run app.py` on a free port of 127.0.0.1, in its own process group."""
    _require_browser()
    port = _free_port()
    log = (tmp_path / "streamlit.log").open("w")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        explore.streamlit_command("127.0.0.1", port), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not come up: {(tmp_path / 'streamlit.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def test_explorer_in_chromium_reruns_on_a_control_waits_for_run_on_a_big_one_and_shows_verdicts_and_charts(served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(served)
            expect(page.get_by_text("SLA violated: p99 ttft (during faults)")).to_be_visible(timeout=30_000)
            # Switch the fallback tier off: with both clouds dark nothing serves, availability fails.
            page.get_by_text("fallback tier", exact=True).click()
            expect(page.get_by_text("SLA violated: availability, p99 ttft (during faults)")).to_be_visible(timeout=30_000)
            expect(page.get_by_text("beyond the limit").first).to_be_visible()  # margins in words, not arrows
            # A what-if over the auto-run limit waits for the Run button instead of rerunning.
            rate = page.get_by_label("arrival rate (requests/s)")
            rate.fill("40")
            rate.press("Enter")
            stale = page.get_by_text("The knobs changed since the last run")
            expect(stale).to_be_visible(timeout=30_000)
            page.get_by_role("button", name="Run simulation").click()
            expect(stale).to_have_count(0, timeout=60_000)
            expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=30_000)
            assert page.locator(".js-plotly-plot").count() >= 3
            page.wait_for_timeout(500)  # let the charts finish their first draw
            page.screenshot(path=tmp_path / "explorer.png", full_page=True)
            if os.environ.get("TESTBED_UPDATE_SCREENSHOT") == "1":
                # The page scrolls inside Streamlit's own container, so "full page" is the
                # viewport: make it tall enough for the verdicts and the first charts.
                page.set_viewport_size({"width": 1400, "height": 1900})
                page.wait_for_timeout(1500)
                SCREENSHOT.parent.mkdir(exist_ok=True)
                page.screenshot(path=SCREENSHOT, full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "explorer.png").stat().st_size > 10_000
