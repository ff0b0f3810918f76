"""The new-run form: every RunConfig field, 422s beside their field, start → watch → drop → stop."""

import pytest

from dst_core.store.config import RunConfig
from tests.browser.conftest import screenshot

pytestmark = pytest.mark.browser


def open_form(page):
    page.goto(f"{page.base_url}/#/new")
    page.locator("#field-epochs").wait_for()


def test_every_config_field_has_a_labelled_input_with_its_default(page):
    open_form(page)
    for name, field in RunConfig.model_fields.items():
        control = page.get_by_label(name, exact=True)
        assert control.count() == 1, name
        help_text = page.locator(f"#help-{name}").inner_text()
        assert "Default:" in help_text, name
        default = field.default
        if isinstance(default, bool):  # a yes/no field with a fixed default: a checkbox
            assert control.is_checked() == default, name
        elif isinstance(default, list):
            assert control.input_value() == ", ".join(map(str, default)), name
        elif default is None:
            assert control.input_value() == "", name
        else:
            assert float(control.input_value()) == default if isinstance(default, (int, float)) \
                else control.input_value() == default, name
    assert sorted(page.eval_on_selector_all("#form-fields .field", "els => els.map(e => e.dataset.field)")) \
        == sorted(RunConfig.model_fields)
    # lr, temperature and l1 are nullable: empty means the method's own default, and the
    # field shows the value the run will use (SET's, the form's default method).
    page.locator("#plan-summary:not(:empty)").wait_for()
    for name, used in (("lr", 0.05), ("temperature", 1.0), ("l1", 0.0)):
        assert RunConfig.model_fields[name].default is None, name
        placeholder = page.locator(f"#field-{name}").get_attribute("placeholder")
        label, value = placeholder.split(": ")
        assert label == "method default" and float(value) == used, name
        assert "method default" in page.locator(f"#help-{name}").inner_text(), name
    # epochs is nullable too, and empty means the task's default.
    assert page.locator("#field-epochs").get_attribute("placeholder") == "task default: 3000"
    assert page.locator("#field-distribution option").first.inner_text() == "method default: er"
    # A yes/no option left to the method is a three-way choice, not a checkbox that sends false.
    nullable_flags = [name for name, field in RunConfig.model_fields.items()
                      if field.default is None and field.annotation == (bool | None)]
    for name in nullable_flags:
        options = page.eval_on_selector_all(f"#field-{name} option", "os => os.map(o => o.value)")
        assert options == ["", "true", "false"], name


def test_the_form_shows_the_schedule_and_warns_of_zero_rewires_before_start(page):
    open_form(page)
    page.select_option("#field-task", "digits")
    page.select_option("#field-method", "rigl")
    page.fill("#field-epochs", "5")
    warning = page.locator("#plan-warnings .plan-warning")
    warning.wait_for()
    assert "no rewire" in warning.inner_text()
    summary = page.locator("#plan-summary").inner_text()
    assert "115 steps (5 epochs × 23)" in summary and "0 rewires" in summary
    assert page.locator("#field-interval_steps").get_attribute("placeholder") \
        == "method default: 100"
    # The task's default epochs rewire: the warning goes, the count of rewires shows.
    page.fill("#field-epochs", "")
    page.wait_for_function("document.querySelector('#run-form').dataset.planRewires > 0")
    assert page.locator("#plan-warnings li").count() == 0
    assert "rewires, every 100 steps" in page.locator("#plan-summary").inner_text()
    runs = page.evaluate("fetch('/api/runs').then(r => r.json())")
    assert runs == []  # the preview started nothing


def test_server_422_shows_beside_the_field_it_names(page):
    page.expected_statuses.add(422)
    open_form(page)
    page.fill("#field-density", "2")
    page.get_by_role("button", name="Launch run").click()
    error = page.locator("#error-density")
    error.wait_for(state="visible")
    assert "less than or equal to 1" in error.inner_text()
    assert page.locator("#field-density").get_attribute("aria-invalid") == "true"
    assert page.locator(".field-error:visible").count() == 1
    # A model-level rule names its field at the start of the message.
    page.fill("#field-density", "0.1")
    page.select_option("#field-model", "cnn")
    page.get_by_role("button", name="Launch run").click()
    model_error = page.locator("#error-model")
    model_error.wait_for(state="visible")
    assert "needs an image task" in model_error.inner_text()
    assert page.locator("#error-density").is_hidden()
    # An entry of a list field that is not a number.
    page.select_option("#field-model", "mlp")
    page.fill("#field-hidden", "64, wide")
    page.get_by_role("button", name="Launch run").click()
    page.locator("#error-hidden").wait_for(state="visible")
    screenshot(page, "new-run-form.png")  # the window: Launch sits in the bar at its bottom
    assert page.evaluate("location.hash") == "#/new"  # nothing started


def test_start_from_form_watch_reconnect_and_stop(page, server):
    open_form(page)
    page.fill("#field-name", "form run")
    page.fill("#field-hidden", "32, 32")
    page.fill("#field-epochs", "5000")  # long enough that Stop ends it
    page.fill("#field-interval_steps", "5")
    page.get_by_role("button", name="Launch run").click()
    page.wait_for_function("window.sparsescope.model && window.sparsescope.model.name === 'form run'")
    run_id = page.evaluate("window.sparsescope.model.id")
    try:
        watch_reconnect_and_stop(page, server, run_id)
    finally:  # a failure above must not leave a 5,000-epoch run holding the worker
        server.http.post(f"/api/runs/{run_id}/stop")


def watch_reconnect_and_stop(page, server, run_id: str) -> None:
    run = server.http.get(f"/api/runs/{run_id}").json()
    assert run["config"]["hidden"] == [32, 32] and run["config"]["interval_steps"] == 5
    page.wait_for_function("window.sparsescope.rewires >= 6", timeout=60_000)
    # The input view appears while following a run opened before its layout was known
    # (issue 28: it came only after reopening the run).
    page.wait_for_selector("#input-view[data-step]", timeout=30_000)
    first = int(page.locator("#heatmap-0").get_attribute("data-drawn") or 0)
    page.wait_for_function(
        f"Number(document.querySelector('#heatmap-0').dataset.drawn) > {first}", timeout=30_000)
    # A dropped connection resumes from the last applied seq.
    applied = page.evaluate("window.sparsescope.rewires")
    page.evaluate("window.sparsescope.dropConnection()")
    page.wait_for_selector("#connection[data-state='retrying'], #connection[data-state='connecting']",
                           timeout=10_000)
    page.wait_for_selector("#connection[data-state='open']", timeout=20_000)
    page.wait_for_function(f"window.sparsescope.rewires > {applied}", timeout=30_000)
    # Scrubbing back while live: the view stays on the chosen rewire as new frames arrive.
    page.locator("#scrubber").fill("2")
    chosen = page.evaluate("window.sparsescope.model.steps[2]")
    page.wait_for_function(f"document.querySelector('#heatmap-0').dataset.step === '{chosen}'")
    assert page.locator("#live").get_attribute("aria-pressed") == "false"
    applied = page.evaluate("window.sparsescope.rewires")
    page.wait_for_function(f"window.sparsescope.rewires > {applied + 3}", timeout=30_000)
    page.wait_for_timeout(300)
    assert page.locator("#heatmap-0").get_attribute("data-step") == str(chosen)
    # Clicked in the page: following live rewrites the address (?step=) and re-renders the
    # player at every rewire, so Playwright's wait for a stable, settled button never ends.
    page.locator("#live").dispatch_event("click")
    page.wait_for_function(f"Number(document.querySelector('#heatmap-0').dataset.step) > {chosen}")
    stop = page.get_by_role("button", name="Stop", exact=True)
    assert stop.is_enabled()
    stop.click(no_wait_after=True)
    page.wait_for_selector("#status[data-status='stopped']", timeout=15_000)
    page.wait_for_selector("#connection[data-state='ended']", timeout=15_000)
    # Every stored rewire is known exactly once, across the reconnect, in order.
    stored = server.http.get(f"/api/runs/{run_id}/rewires").json()["steps"]
    assert page.evaluate("window.sparsescope.model.steps") == stored
    assert server.http.get(f"/api/runs/{run_id}").json()["status"] == "stopped"


def test_a_failed_run_shows_its_error(page, server):
    open_form(page)
    page.fill("#field-name", "too hot")
    page.fill("#field-lr", "10")
    page.fill("#field-hidden", "256, 256")  # at lr 10 this one diverges within a few dozen steps
    page.fill("#field-epochs", "40")
    page.get_by_role("button", name="Launch run").click()
    page.wait_for_selector("#status[data-status='failed']", timeout=120_000)
    page.wait_for_function("document.querySelector('#run-error').textContent.includes('diverged')")
    assert page.get_by_role("button", name="Stop", exact=True).is_disabled()


def test_the_top_bar_start_starts_what_the_form_holds(page, server):
    """Issue 28, item 2: an edited New run form is what the top bar's Start launches (it says
    "Start edited"); untouched, or reset, it says "Start defaults"; Launch stays in sight."""
    start = page.locator("#start")
    assert start.inner_text() == "Start defaults"
    open_form(page)
    assert start.inner_text() == "Start defaults"
    page.fill("#field-name", "edited from the form")
    page.fill("#field-epochs", "3")
    page.select_option("#field-method", "rigl")
    page.wait_for_function("document.querySelector('#start').textContent === 'Start edited'")
    # Launch and the schedule stay on screen at the bottom of the window, below the fields.
    page.evaluate("window.scrollTo(0, 0)")
    launch = page.locator("#launch").bounding_box()
    assert 0 < launch["y"] + launch["height"] <= 900
    page.click("#form-reset")
    page.wait_for_function("document.querySelector('#start').textContent === 'Start defaults'")
    page.fill("#field-name", "edited from the form")
    page.fill("#field-epochs", "3")
    page.select_option("#field-method", "rigl")
    page.evaluate("window.scrollTo(0, 400)")
    start.click()
    page.wait_for_function("location.hash.startsWith('#/run/')", timeout=30_000)
    assert page.evaluate("window.scrollY") == 0  # the run view opens at its top
    run_id = page.evaluate("location.hash").split("/")[2].split("?")[0]
    run = server.http.get(f"/api/runs/{run_id}").json()
    assert run["name"] == "edited from the form"
    assert run["config"]["epochs"] == 3 and run["config"]["method"] == "rigl"
    server.wait(run_id)
