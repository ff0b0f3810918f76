"""The page when things go wrong: a reload mid-run, a deleted run's link, a server that stops."""

import re

import pytest

from tests.browser.conftest import FINAL, Server

pytestmark = pytest.mark.browser

SLOW = {"name": "long digits", "task": "digits", "hidden": [64, 32], "epochs": 200, "interval_steps": 5}
# The browser's own line for a request that failed at the network level: refused, reset, or a
# socket that closed under it, depending on when in the request the server went.
NETWORK_FAILURE = re.compile(r"^Failed to load resource: net::ERR_[A-Z_]+$|WebSocket connection to .* failed")


def test_reload_mid_run_resumes_and_a_deleted_runs_link_is_a_message(page, server):
    run = server.start_run(**SLOW)
    page.goto(f"{server.url}/#/run/{run['id']}")
    page.wait_for_function("window.sparsescope.rewires >= 2", timeout=120_000)
    page.reload()
    page.wait_for_function("window.sparsescope.rewires >= 2", timeout=120_000)
    page.wait_for_selector("#connection[data-state='open']")
    assert page.locator("#status").get_attribute("data-status") == "running"
    assert page.locator("#stop").is_enabled()
    page.locator("#stop").click()
    page.wait_for_function("['stopped', 'completed'].includes("
                           "document.querySelector('#status').dataset.status)", timeout=30_000)
    assert server.wait(run["id"])["status"] in FINAL
    assert server.http.delete(f"/api/runs/{run['id']}").status_code in (200, 204)
    # The deleted run's URL: a message on the runs view, no failed request in the console.
    page.goto("about:blank")
    page.goto(f"{server.url}/#/run/{run['id']}")  # a fresh load, as from a bookmark
    page.wait_for_function("location.hash === '#/runs'")
    message = page.locator("#runs-message")
    page.wait_for_function(f"document.querySelector('#runs-message').textContent.includes('{run['id']}')",
                           timeout=10_000)
    assert "does not exist" in message.text_content()


@pytest.fixture
def own_server(tmp_path):
    instance = Server(tmp_path / "data")
    yield instance
    instance.close()


def test_a_stopped_server_is_shown_without_error_spam(browser, own_server):
    run = own_server.start_run(**SLOW)
    context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
    page = context.new_page()
    errors = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.goto(f"{own_server.url}/#/run/{run['id']}")
    page.wait_for_function("window.sparsescope.rewires >= 2", timeout=120_000)
    assert errors == []
    own_server.close()
    page.wait_for_selector("#connection[data-state='unreachable']", timeout=30_000)
    assert page.locator("#connection-text").text_content() == "server unreachable"
    # What was in flight when the server went (the visible panels' fetches, the stream) fails
    # once; after that the page backs off instead of retrying every few seconds.
    in_flight = len(errors)
    page.wait_for_timeout(20_000)
    # Only the browser's own lines for refused connections, and few of them: the page backs off.
    assert all(NETWORK_FAILURE.search(text) for text in errors), errors
    assert len(errors) - in_flight <= 4, errors[in_flight:]
    assert page.locator("#connection").get_attribute("data-state") == "unreachable"
    context.close()
