"""A real browser on the dashboard: Start, watch the heatmap change, Stop."""

from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "img"

pytestmark = pytest.mark.browser


@pytest.fixture
def page(live_server):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is missing: `make test` installs it with apt-get")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.console_errors = []
        page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
        page.on("pageerror", lambda e: page.console_errors.append(str(e)))
        page.goto(live_server)
        yield page
        browser.close()


def test_start_watch_stop(page):
    page.get_by_role("button", name="Start").click()
    page.wait_for_function("window.sparsescope.framesApplied >= 3", timeout=30_000)
    first_step = page.evaluate("window.sparsescope.lastStep")
    page.wait_for_function(f"window.sparsescope.lastStep > {first_step}", timeout=30_000)
    heatmap = page.locator("#heatmap-0")
    heatmap.locator(".hm, .heatmaplayer, image").first.wait_for(timeout=10_000)
    assert int(heatmap.get_attribute("data-step")) > 0
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "dashboard.png"))
    stop = page.get_by_role("button", name="Stop")
    assert stop.is_enabled()
    stop.click()
    page.wait_for_selector("#status[data-status='stopped']", timeout=10_000)
    assert page.console_errors == []
