"""The run view's chart toolbar (issue 28): smoothing, x axis (step / wall time / epoch), log y,
units on the axes, remembered across a reload.

What a chart draws is compared with the stored metrics (GET /metrics) and with the smoothing
computed here."""

import math

import pytest
import torch
from torch import nn

from dst_core import SparseDriver
from dst_core.recording import Recorder
from tests.browser.conftest import Server

pytestmark = pytest.mark.browser

STEPS = 40
RUNNING = "train loss (running)"
# A trace of the loss chart by name: its x, y and opacity (null while not drawn).
TRACE_JS = """([selector, name]) => {
  const trace = (document.querySelector(selector).data || []).find((t) => t.name === name);
  return trace ? { x: trace.x, y: trace.y, opacity: trace.opacity ?? 1 } : null;
}"""
LAYOUT_JS = "(selector) => document.querySelector(selector).layout"


def wall_time(step: int) -> float:
    """Seconds since the start, not proportional to the step (a slow start)."""
    return 1.5 + 0.25 * step + 0.02 * step ** 1.5


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("chart-controls")


@pytest.fixture(scope="module")
def logged(data_dir):
    """A script run with rewires that logs a noisy loss and wall_time_s every step (no epoch)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    driver = SparseDriver(model, optimizer, method="set", density=0.5, total_steps=STEPS, interval_steps=5)
    with Recorder(data_dir, name="chart controls", seed=0) as recorder:
        recorder.attach(driver)
        for _ in range(STEPS):
            loss = model(torch.randn(4, 12)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            driver.step()
            step = driver.step_count
            noisy = 2 / (1 + 0.1 * step) + 0.3 * ((step * 7) % 5 - 2) / 5
            recorder.log(step, loss=noisy, wall_time_s=wall_time(step))
    return recorder.run_id


@pytest.fixture(scope="module")
def server(data_dir, logged):
    instance = Server(data_dir)
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def stored(server, logged):
    """The run's stored loss and wall_time_s, as the page reads them (the metrics answer)."""
    body = server.http.get(f"/api/runs/{logged}/metrics", params={"buckets": 500}).json()["metrics"]
    assert body["loss"]["step"] == body["wall_time_s"]["step"]
    return {"step": body["loss"]["step"], "loss": body["loss"]["last"], "wall": body["wall_time_s"]["last"]}


def ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard's debiased exponential moving average."""
    average, smoothed = 0.0, []
    for count, value in enumerate(values, start=1):
        average = average * weight + (1 - weight) * value
        smoothed.append(average / (1 - weight ** count))
    return smoothed


def open_run(page, run_id: str, points: int) -> None:
    page.goto(f"{page.base_url}/#/run/{run_id}")
    page.wait_for_selector("#connection[data-state='ended']", timeout=60_000)
    page.wait_for_function(
        f"""(() => {{ const t = (document.querySelector('#chart-loss').data || [])
              .find((t) => t.name === '{RUNNING}'); return t && t.x.length === {points}; }})()""",
        timeout=60_000)


def trace(page, name: str, selector: str = "#chart-loss"):
    return page.evaluate(TRACE_JS, [selector, name])


def wait_trace(page, name: str, selector: str = "#chart-loss") -> None:
    page.wait_for_function(f"({TRACE_JS})({[selector, name]!r})", timeout=30_000)


def test_smoothing_draws_the_ema_over_a_faint_raw_line(page, logged, stored):
    open_run(page, logged, len(stored["step"]))
    assert trace(page, f"{RUNNING} (raw)") is None  # 0 = raw: one line
    assert trace(page, RUNNING)["y"] == pytest.approx(stored["loss"])
    page.get_by_label("Smoothing").fill("0.9")
    wait_trace(page, f"{RUNNING} (raw)")
    raw = trace(page, f"{RUNNING} (raw)")
    smoothed = trace(page, RUNNING)
    assert raw["y"] == pytest.approx(stored["loss"])
    assert raw["opacity"] < 0.5
    assert smoothed["y"] == pytest.approx(ema(raw["y"], 0.9), rel=1e-9)
    assert smoothed["y"] != pytest.approx(raw["y"])
    assert page.locator("#chart-smoothing-value").inner_text() == "0.90"
    # Every metric chart at once: the ITOP rate too, not the per-rewire turnover.
    wait_trace(page, "ITOP rate (raw)", "#chart-itop")
    assert not any(t.endswith("(raw)") for t in page.evaluate(
        "document.querySelector('#chart-turnover').data.map((t) => t.name)"))


def test_wall_time_axis_and_the_marker(page, logged, stored):
    open_run(page, logged, len(stored["step"]))
    epoch = page.locator("#chart-xaxis option[value='epoch']")
    assert epoch.is_disabled()
    assert "epoch" in epoch.get_attribute("title")
    assert not page.locator("#chart-xaxis option[value='wall']").is_disabled()
    page.get_by_label("X axis").select_option("wall")
    page.wait_for_function("document.querySelector('#chart-loss').layout.xaxis.title.text.includes('wall')")
    assert trace(page, RUNNING)["x"] == stored["wall"]
    layout = page.evaluate(LAYOUT_JS, "#chart-loss")
    assert layout["xaxis"]["title"]["text"] == "wall time (s since start)"
    # The scrubber's step (an ended run opens at its newest rewire), at its wall time.
    step = page.evaluate("window.sparsescope.player.step")
    assert [shape["x0"] for shape in layout["shapes"]] == [pytest.approx(wall_time(step))]
    # The per-rewire charts keep the step axis, and their marker at the step.
    for selector in ("#chart-turnover", "#chart-density", "#chart-rewire-response"):
        other = page.evaluate(LAYOUT_JS, selector)
        assert other["xaxis"]["title"]["text"] == "step"
        assert [shape["x0"] for shape in other["shapes"]] == [step]


def test_log_scale_units_and_reload(page, logged, stored):
    open_run(page, logged, len(stored["step"]))
    layout = page.evaluate(LAYOUT_JS, "#chart-loss")
    assert layout["yaxis"]["type"] == "linear"
    titles = {selector: page.evaluate(LAYOUT_JS, selector) for selector in
              ("#chart-loss", "#chart-accuracy", "#chart-itop", "#chart-turnover", "#chart-density")}
    assert titles["#chart-loss"]["xaxis"]["title"]["text"] == "step"
    assert titles["#chart-loss"]["yaxis"]["title"]["text"] == "loss"  # a script's loss: no unit claimed
    assert titles["#chart-accuracy"]["yaxis"]["title"]["text"] == "accuracy (share)"
    assert titles["#chart-itop"]["yaxis"]["title"]["text"] == "share of all connections"
    assert titles["#chart-turnover"]["yaxis"]["title"]["text"] == "connections"
    assert titles["#chart-turnover"]["yaxis2"]["title"]["text"] == "turnover (added / active)"
    assert titles["#chart-density"]["yaxis2"]["title"]["text"] == "global (share)"
    # Keyboard: the checkbox toggles with Space, the slider moves with the arrow keys.
    page.locator("#chart-log").focus()
    page.keyboard.press("Space")
    page.wait_for_function("document.querySelector('#chart-loss').layout.yaxis.type === 'log'")
    assert page.evaluate(LAYOUT_JS, "#chart-accuracy")["yaxis"]["type"] == "log"
    page.locator("#chart-smoothing").focus()
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    wait_trace(page, f"{RUNNING} (raw)")
    page.get_by_label("X axis").select_option("wall")
    page.wait_for_function("document.querySelector('#chart-loss').layout.xaxis.title.text.includes('wall')")

    page.reload()
    open_run(page, logged, len(stored["step"]))
    assert page.locator("#chart-log").is_checked()
    assert page.locator("#chart-smoothing").input_value() == "0.05"
    assert page.locator("#chart-xaxis").input_value() == "wall"
    page.wait_for_function("document.querySelector('#chart-loss').layout.yaxis.type === 'log'")
    wait_trace(page, f"{RUNNING} (raw)")
    smoothed = trace(page, RUNNING)
    assert smoothed["x"] == stored["wall"]
    assert smoothed["y"] == pytest.approx(ema(stored["loss"], 0.05), rel=1e-9)


def test_a_built_in_run_has_epochs_and_cross_entropy(page, server):
    run = server.start_run(name="epochs", task="digits", hidden=[16], epochs=2, interval_steps=5)
    ended = server.wait(run["id"])
    per_epoch = ended["settings"]["steps_per_epoch"]
    body = server.http.get(f"/api/runs/{run['id']}/metrics", params={"buckets": 500}).json()["metrics"]
    open_run(page, run["id"], len(body["loss"]["step"]))
    assert page.evaluate(LAYOUT_JS, "#chart-loss")["yaxis"]["title"]["text"] == "loss (cross-entropy)"
    page.get_by_label("X axis").select_option("epoch")
    page.wait_for_function("document.querySelector('#chart-loss').layout.xaxis.title.text === 'epoch'")
    assert trace(page, RUNNING)["x"] == pytest.approx([step / per_epoch for step in body["loss"]["step"]])
    assert math.isclose(trace(page, "test loss")["x"][-1], 2.0)
