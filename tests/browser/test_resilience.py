"""The page when things go wrong: a reload mid-run, a deleted run's link, a server that stops."""

import re
import time

import pytest

from tests.browser.conftest import FINAL, Server

pytestmark = pytest.mark.browser

SLOW = {"name": "long digits", "task": "digits", "hidden": [64, 32], "epochs": 200, "interval_steps": 5}
# The browser's own line for a request that failed at the network level: refused, reset, or a
# socket that closed under it, depending on when in the request the server went.
# A request answered while the server was shutting down may be its 503.
NETWORK_FAILURE = re.compile(r"^Failed to load resource: net::ERR_[A-Z_]+$|WebSocket connection to .* failed"
                             r"|^Failed to load resource: the server responded with a status of 503")


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
    # The page leaves first: one still showing the run may be reading it as it goes.
    page.goto("about:blank")
    assert server.http.delete(f"/api/runs/{run['id']}").status_code in (200, 204)
    # The deleted run's URL: a message on the runs view, no failed request in the console.
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


# Every request the page makes, when (its own clock) and how many are still unanswered: each
# one that fails once the server is gone is one line in the browser's console.
COUNT_REQUESTS = """(() => {
  const attempts = [];
  let unanswered = 0;
  const fetchOriginal = window.fetch.bind(window);
  window.fetch = (...args) => {
    attempts.push(["fetch", String(args[0]?.url ?? args[0]), Date.now()]);
    unanswered += 1;
    return fetchOriginal(...args).finally(() => { unanswered -= 1; });
  };
  window.WebSocket = class extends window.WebSocket {
    constructor(...args) {
      super(...args);
      attempts.push(["websocket", String(args[0]), Date.now()]);
    }
  };
  window.requestsMade = { attempts, unanswered: () => unanswered };
})()"""


def settle(page) -> None:
    """Until every request the page has made is answered (refused, once the server is gone)."""
    deadline = time.monotonic() + 30
    while page.evaluate("window.requestsMade.unanswered()") > 0:
        assert time.monotonic() < deadline, "a request of the page never ended"
        time.sleep(0.02)


def test_a_stopped_server_is_shown_without_error_spam(browser, own_server):
    run = own_server.start_run(**SLOW)
    context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
    context.add_init_script(COUNT_REQUESTS)
    page = context.new_page()
    # The page's timers run on a clock this test can stop and move on: 20 s of the page's
    # life after the server went are played in a second or two, each step only once what it
    # started has ended (a loaded machine cannot bunch up or stretch its retries).
    page.clock.install()
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
    page.clock.pause_at(page.evaluate("Date.now()") / 1000 + 1)  # in seconds, a second on
    settle(page)
    before = page.evaluate("window.requestsMade.attempts.length")
    for _second in range(20):
        page.clock.run_for(1000)
        settle(page)
    retries = page.evaluate("window.requestsMade.attempts")[before:]
    # Only the browser's own lines for refused connections, and few of them: the page backs off.
    assert [text for text in errors if not NETWORK_FAILURE.search(text)] == []
    assert 1 <= len(retries) <= 4, retries  # it does try again, now and then
    assert page.locator("#connection").get_attribute("data-state") == "unreachable"
    context.close()
