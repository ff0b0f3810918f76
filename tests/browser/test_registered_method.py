"""A user-registered method (tests.plugins.tiny_method) trains from the dashboard's form, and
the structured options (srigl, N:M, RigL's reference options) arrive as chosen."""

import pytest

from tests.browser.conftest import Server

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    instance = Server(tmp_path_factory.mktemp("data"), plugins="tests.plugins.tiny_method")
    yield instance
    instance.close()


def open_form(page):
    page.goto(f"{page.base_url}/#/new")
    page.locator("#field-epochs").wait_for()


def launch(page):
    page.get_by_role("button", name="Launch run").click()
    page.wait_for_function("window.sparsescope.model && window.sparsescope.model.id")
    return page.evaluate("window.sparsescope.model.id")


def test_a_registered_method_is_offered_and_trains_from_the_form(page, server):
    open_form(page)
    methods = page.eval_on_selector_all("#field-method option", "os => os.map(o => o.value)")
    assert "tiny" in methods and "srigl" in methods
    page.select_option("#field-method", "tiny")
    page.fill("#field-hidden", "16")
    page.fill("#field-epochs", "1")
    page.fill("#field-interval_steps", "10")
    run = server.wait(launch(page))
    assert run["status"] == "completed", run.get("error")
    assert run["config"]["method"] == "tiny"
    rewires = [e for e in server.events(run["id"]) if e["type"] == "rewire"]
    assert rewires


def test_structured_and_reference_options_from_the_form(page, server):
    open_form(page)
    page.select_option("#field-method", "rigl")
    page.select_option("#field-structure", "n:m")
    page.select_option("#field-skip_update_on_rewire", "false")
    page.select_option("#field-first_layer_dense", "false")
    page.select_option("#field-distribution", "uniform")
    page.fill("#field-hidden", "16")
    page.fill("#field-epochs", "1")
    page.fill("#field-interval_steps", "10")
    run = server.wait(launch(page))
    assert run["status"] == "completed", run.get("error")
    config = run["config"]
    assert (config["structure"], config["skip_update_on_rewire"], config["first_layer_dense"],
            config["global_selection"]) == ("n:m", False, False, None)
