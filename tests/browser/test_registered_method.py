"""A user-registered method (tests.plugins.tiny_method) trains from the dashboard's form, and
the structured options (srigl, N:M, RigL's reference options) arrive as chosen."""

import base64

import numpy as np
import pytest

from tests.browser.conftest import Server, topology_frames
from tests.dst_core.test_registered_method import assert_lowest_free_growth

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
    events = server.events(run["id"])
    rewires = [e for e in events if e["type"] == "rewire"]
    grown = lowest_free_growth(topology_frames(events))
    # The stream's rewire counts are the frames' own, and the method did rewire the model.
    assert sum(layer["added"] for r in rewires for layer in r["layers"].values()) == grown > 0


def lowest_free_growth(frames: list[dict]) -> int:
    """The websocket's frames (base64 packed bits, base64 uint32 indices) decoded to the
    in-process form and replayed by the engine test's check: every rewire grew the lowest
    inactive flat indices. Returns how many connections grew in all."""
    decoded = [{**frame, **({"bits": np.frombuffer(base64.b64decode(frame["bits"]), np.uint8)}
                            if frame["keyframe"] else
                            {key: np.frombuffer(base64.b64decode(frame[key]), "<u4")
                             for key in ("added", "removed")})}
               for frame in frames]
    return assert_lowest_free_growth(decoded)


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
