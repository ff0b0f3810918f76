"""The topology section: live, in replay (scrubbing updates it, what it draws is what
GET /topology answers), the all-layers summary, and Compare overlaying two runs."""

import pytest

from tests.browser.conftest import scrub, section_screenshot

pytestmark = pytest.mark.browser

# Long enough for structure, short enough for a test: MNIST-5k, RigL at 90% sparsity.
MNIST_RIGL = {"task": "mnist", "hidden": [100], "method": "rigl", "density": 0.1, "epochs": 3,
              "interval_steps": 10, "keyframe_every": 4}
LIVE = {"task": "synthetic", "hidden": [32, 32], "epochs": 5000, "interval_steps": 5}


@pytest.fixture(scope="module")
def pair(server):
    rigl = server.start_run(name="mnist rigl", **MNIST_RIGL)
    sets = server.start_run(name="mnist set", **{**MNIST_RIGL, "method": "set"})
    steps = {}
    for run in (rigl, sets):
        server.wait(run["id"])
        steps[run["name"]] = server.http.get(f"/api/runs/{run['id']}/rewires").json()["steps"]
    return {"rigl": rigl["id"], "set": sets["id"], "steps": steps, "server": server}


def shown_step(page, prefix: str, step: int) -> None:
    page.wait_for_function(f"document.querySelector('#{prefix}').dataset.step === '{step}'",
                           timeout=30_000)


def trace(page, chart: str, index: int = 0) -> dict:
    return page.evaluate(f"(() => {{ const t = document.querySelector('#{chart}').data[{index}];"
                         " return {name: t.name, x: Array.from(t.x), y: Array.from(t.y)}; })()")


def test_replay_scrubbing_updates_the_section(page, pair):
    server, run_id, steps = pair["server"], pair["rigl"], pair["steps"]["mnist rigl"]
    page.goto(f"{page.base_url}/#/run/{run_id}")
    page.wait_for_selector("#connection[data-state='ended']", timeout=60_000)
    page.locator("#topology").scroll_into_view_if_needed()
    shown_step(page, "topology", steps[-1])
    for position in (len(steps) - 1, 3, 0, len(steps) // 2):
        scrub(page, position)
        shown_step(page, "topology", steps[position])
        stored = server.http.get(f"/api/runs/{run_id}/topology",
                                 params={"layer": 0, "step": steps[position]}).json()
        assert stored["rewire"] == position
        fan_in = trace(page, "topology-fan-in")
        assert [[x, y] for x, y in zip(fan_in["x"], fan_in["y"], strict=True)] == stored["fan_in"]
        assert "Erdős–Rényi" in trace(page, "topology-fan-in", 1)["name"]
        age = trace(page, "topology-age")
        assert [[x, y] for x, y in zip(age["x"], age["y"], strict=True)] == stored["age"]
        survival = trace(page, "topology-survival")
        assert [[x, y] for x, y in zip(survival["x"], survival["y"], strict=True)] == \
            stored["survival"]
        stats = page.locator("#topology-stats p").first
        assert stats.get_attribute("data-rewire") == str(position)
        assert f"dead: {stored['dead_out']} outputs, {stored['dead_in']} inputs" in stats.inner_text()
        # The charts over time mark the scrubber's step.
        page.wait_for_function("(document.querySelector('#topology-dead').layout?.shapes || [])"
                               f".some(shape => shape.x0 === {steps[position]})")
    # Log-log axes, then the picture for the docs.
    page.select_option("#topology-scale", "log")
    page.wait_for_function("document.querySelector('#topology-fan-out').layout.xaxis.type === 'log'")
    scrub(page, len(steps) - 1)
    shown_step(page, "topology", steps[-1])
    page.select_option("#topology-scale", "linear")
    page.wait_for_function("document.querySelector('#topology-fan-out').layout.xaxis.type !== 'log'")
    section_screenshot(page, "#topology", "topology-run.png")
    # The second layer, then every layer at once.
    page.select_option("#topology-layer", "1")
    page.wait_for_function("document.querySelector('#topology').dataset.layer === '1'")
    page.select_option("#topology-layer", "all")
    page.wait_for_function("document.querySelector('#topology').dataset.layer === 'all'")
    rows = page.eval_on_selector_all("#topology-summary tbody tr",
                                     "rows => rows.map(r => r.cells[0].textContent)")
    model = server.http.get(f"/api/runs/{run_id}/topology/model",
                            params={"step": steps[-1]}).json()
    assert rows == [layer["layer"] for layer in model["layers"]]
    assert "effective" in page.locator("#topology-stats").inner_text()


def test_live_run_updates_the_section(page, server):
    run = server.start_run(name="topology live", **LIVE)
    try:
        page.goto(f"{page.base_url}/#/run/{run['id']}")
        page.wait_for_selector("#topology .topology-controls")
        page.locator("#topology").scroll_into_view_if_needed()
        shown = ("(after) => { const step = Number(document.querySelector('#topology')"
                 ".dataset.step); return step > after ? step : false; }")
        first = page.wait_for_function(shown, arg=0, timeout=60_000).json_value()
        later = page.wait_for_function(shown, arg=first, timeout=60_000).json_value()
        assert page.locator("#live").get_attribute("aria-pressed") == "true"
        # The series over time grows with the run.
        page.wait_for_function(
            "(() => { const t = document.querySelector('#topology-distance').data;"
            " if (!t || !t.length) return false;"
            f" return t && t[0].x.length > 1 && t[0].x[t[0].x.length - 1] >= {first}; }})()",
            timeout=60_000)
        assert later > first
    finally:
        server.http.post(f"/api/runs/{run['id']}/stop")
        server.wait(run["id"], timeout_s=30)


def test_compare_overlays_two_runs(page, pair):
    page.goto(f"{page.base_url}/#/compare/{pair['rigl']},{pair['set']}")
    steps = sorted(set(pair["steps"]["mnist rigl"]) | set(pair["steps"]["mnist set"]))
    page.wait_for_selector("#compare-topology .topology-controls")
    page.locator("#compare-topology").scroll_into_view_if_needed()
    shown_step(page, "compare-topology", steps[-1])
    names = page.evaluate("document.querySelector('#compare-topology-fan-in').data.map(t => t.name)")
    assert sorted(names) == ["mnist rigl: Erdős–Rényi", "mnist rigl: measured",
                             "mnist set: Erdős–Rényi", "mnist set: measured"]
    for chart in ("compare-topology-survival", "compare-topology-dead",
                  "compare-topology-distance"):
        traces = page.evaluate(f"document.querySelector('#{chart}').data.map(t => t.name)")
        assert any(name.startswith("mnist rigl") for name in traces), chart
        assert any(name.startswith("mnist set") for name in traces), chart
    position = len(steps) // 2
    scrub(page, position, "#compare-scrubber")
    shown_step(page, "compare-topology", steps[position])
    section_screenshot(page, "#compare-topology", "topology-compare.png")
