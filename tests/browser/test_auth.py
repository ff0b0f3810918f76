"""A server with a token: the page asks once, keeps it for the tab, and streams with it."""

import pytest

from tests.browser.conftest import Server

pytestmark = pytest.mark.browser

TOKEN = "browser-test-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    instance = Server(tmp_path_factory.mktemp("data"), token=TOKEN)
    yield instance
    instance.close()


def test_token_is_asked_once_and_used_for_rest_and_websocket(page, server):
    page.expected_statuses.add(401)  # the first calls, before the token is known
    dialog = page.locator("#token-dialog")
    dialog.wait_for(state="visible")
    page.get_by_label("Token", exact=True).fill(TOKEN)
    page.get_by_role("button", name="Use token").click()
    dialog.wait_for(state="hidden")
    assert page.evaluate("sessionStorage.getItem('sparsescope.token')") == TOKEN
    page.locator("#runs-empty").wait_for(state="visible")  # the list loaded with the token
    page.get_by_role("button", name="Start").click()
    page.wait_for_function("window.sparsescope.rewires >= 3", timeout=60_000)
    run_id = page.evaluate("window.sparsescope.model.id")
    # Reloading keeps the token for this tab: no second prompt, the run replays.
    page.reload()
    page.wait_for_function("window.sparsescope.rewires >= 3", timeout=60_000)
    assert dialog.is_hidden()
    assert page.evaluate("window.sparsescope.model.id") == run_id
    assert server.http.post(f"/api/runs/{run_id}/stop").json()["status"] == "stopped"
