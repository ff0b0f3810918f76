"""Run and compare view defects of issue 13, each pinned by a test: any numeric metric charted
(in Compare too), Compare charts that keep updating while a run streams, a bad compare link,
a big seed shown exactly, empty charts that say so, a queued run that says what it waits for."""

import threading
import time

import pytest
import torch
from torch import nn

from dst_core import SparseDriver
from dst_core.recording import Recorder
from dst_core.store import RunStore
from tests.browser.conftest import Server

pytestmark = pytest.mark.browser

BIG_SEED = 4369315837155030017  # > 2**53: a JavaScript number would round it
HOSTILE = '<a href="https://evil.example" target="_top">x</a><span style="font-size:90px">big</span>'
# A module name cannot hold a ".": the same attack without one, as a layer name.
HOSTILE_LAYER = "<a href=https:evil target=_top>x</a><span style=font-size:90px>big</span>"
LONG = {"task": "digits", "hidden": [16], "epochs": 500, "interval_steps": 5}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("defects")


@pytest.fixture(scope="module")
def logged(data_dir):
    """A script run that logs metrics the fixed charts do not know, and no topology."""
    with Recorder(data_dir, name="script metrics", seed=BIG_SEED) as recorder:
        for step in range(1, 21):
            recorder.log(step, loss=1 / step, val_top1=step / 40, val_top5=step / 25, lr=0.1 / step)
    return recorder.run_id


@pytest.fixture(scope="module")
def hostile(data_dir):
    """A run, a layer and a metric named with markup."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module(HOSTILE_LAYER, nn.Linear(12, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    driver = SparseDriver(model, optimizer, method="set", density=0.5, total_steps=4, interval_steps=1)
    with Recorder(data_dir, name=f"run {HOSTILE}", seed=0) as recorder:
        recorder.attach(driver)
        for _ in range(3):
            loss = model(torch.randn(4, 12)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            driver.step()
            recorder.log(driver.step_count, loss=float(loss.detach()), **{HOSTILE: 0.5})
    return recorder.run_id


@pytest.fixture(scope="module")
def server(data_dir, logged, hostile):
    instance = Server(data_dir)
    yield instance
    instance.close()


def test_every_numeric_metric_is_charted_and_empty_charts_say_so(page, logged):
    page.goto(f"{page.base_url}/#/run/{logged}")
    page.wait_for_function("document.querySelector('#chart-extra-0')?.data", timeout=30_000)
    groups = page.eval_on_selector_all(
        "#charts .chart-extra", "divs => divs.map(d => [d.dataset.group, d.data.map(t => t.name)])")
    assert ["lr", ["lr"]] in groups
    assert ["val", ["val_top1", "val_top5"]] in groups
    val = page.evaluate("document.querySelector(\"#charts [data-group='val']\").data[0].y")
    assert val == pytest.approx([step / 40 for step in range(1, 21)])
    # No topology recorded: those charts say they wait for data instead of drawing bare axes.
    page.wait_for_function("document.querySelector('#chart-turnover').dataset.empty === 'true'")
    assert "waiting for data" in page.locator("#chart-turnover").text_content()
    assert page.locator("#chart-loss").get_attribute("data-empty") == "false"


def test_a_big_seed_is_shown_exactly(page, logged):
    page.goto(f"{page.base_url}/#/run/{logged}")
    page.wait_for_function("document.querySelector('#run-provenance').textContent.includes('seed')")
    assert f"seed {BIG_SEED}" in page.locator("#run-provenance").text_content()


def test_a_ddp_jobs_layout_is_in_its_provenance(page, data_dir):
    layout = {"world_size": 4, "backend": "nccl", "rank": 0, "ranks": [0, 1, 2, 3],
              "local_world_size": 2, "nodes": 2}
    run = RunStore(data_dir).create_run({}, "ddp job", status="completed",
                                        info={"writer": "script", "distributed": layout})
    page.goto(f"{page.base_url}/#/run/{run['id']}")
    page.wait_for_function("document.querySelector('#run-provenance').textContent.includes('DDP')")
    assert "DDP: 4 ranks (nccl), recorded by rank 0" in page.locator("#run-provenance").text_content()


def test_a_bad_compare_link_says_so(page, logged):
    page.expected_statuses.add(404)
    page.goto(f"{page.base_url}/#/compare/{logged},00000000deadbeef")
    page.wait_for_function("document.querySelector('#compare-error').textContent.includes('Cannot compare')")
    assert "00000000deadbeef" in page.locator("#compare-error").text_content()
    assert page.locator("#compare-body").is_hidden()
    page.goto(f"{page.base_url}/#/compare/{logged}")
    page.wait_for_function("document.querySelector('#compare-error').textContent.includes('two or more')")


def test_compare_keeps_updating_while_a_run_streams(page, data_dir, logged):
    def stream():
        with Recorder(data_dir, name="streaming", seed=1) as recorder:
            holder["id"] = recorder.run_id
            for step in range(1, 40):
                recorder.log(step, loss=2 / step, val_top1=step / 80)
                time.sleep(0.25)

    holder = {}
    thread = threading.Thread(target=stream)
    thread.start()
    try:
        while "id" not in holder:
            time.sleep(0.05)
        page.goto(f"{page.base_url}/#/compare/{logged},{holder['id']}")
        chart = "#compare-chart-train_loss_running"
        page.wait_for_function(f"document.querySelector('{chart}')?.calcdata?.length === 2", timeout=30_000)
        drawn = page.evaluate(f"document.querySelector('{chart}').calcdata[1].length")
        # The streaming run's curve is redrawn as points arrive (not only its array grown).
        page.wait_for_function(f"document.querySelector('{chart}').calcdata[1].length > {drawn + 5}",
                               timeout=30_000)
        field = "#compare-charts [data-field='val_top1']"
        page.wait_for_function(f"document.querySelector(\"{field}\")?.data?.length === 2", timeout=30_000)
    finally:
        thread.join()


def test_a_queued_run_says_what_it_waits_for(page, server):
    first = server.start_run(name="ahead", **LONG)
    second = server.start_run(name="behind", **LONG)
    try:
        server.wait(first["id"], statuses={"running"}, timeout_s=120)
        page.goto(f"{page.base_url}/#/run/{second['id']}")
        page.wait_for_function("document.querySelector('#run-waiting').textContent.includes('training now')",
                               timeout=30_000)
        text = page.locator("#run-waiting").text_content()
        assert "ahead" in text and first["id"] in text
        assert page.locator("#status").get_attribute("data-status") == "queued"
    finally:
        for run in (second, first):
            server.http.post(f"/api/runs/{run['id']}/stop")


def no_markup(page):
    assert page.locator("a[href*='evil']").count() == 0
    assert page.locator("[target='_top']").count() == 0
    assert page.locator("span[style*='90px']").count() == 0


def test_names_are_text_not_markup(page, hostile):
    """Run, layer and metric names are plain text in the DOM and in every Plotly title, legend,
    axis and hover label."""
    page.goto(f"{page.base_url}/#/run/{hostile}")
    page.wait_for_function("window.sparsescope.settled()"
                           " && document.querySelector('#heatmap-0')?.dataset.step", timeout=30_000)
    page.wait_for_selector("#chart-extra-0 .gtitle", timeout=30_000)
    page.wait_for_timeout(400)
    no_markup(page)
    layer = f"{HOSTILE_LAYER}.weight"
    assert page.locator("#run-title").text_content() == f"run {HOSTILE}"
    assert page.locator("#run-label").text_content() == f"run {HOSTILE}"
    assert page.locator("#heatmap-0").get_attribute("data-layer") == layer
    assert page.locator("#layer-overview-table button.link").first.text_content() == layer
    assert page.locator("#heatmaps .panel-title").last.text_content().startswith(layer)
    ticks = page.eval_on_selector_all("#chart-density .ytick text", "els => els.map(e => e.textContent)")
    assert f"0: {layer}" in ticks
    # The metric's chart is titled by its group: the name up to its first "/".
    assert page.locator("#chart-extra-0 .gtitle").text_content() == '<a href="https:'
    assert page.locator("#chart-extra-0").get_attribute("data-group") == '<a href="https:'
    # The same run compared: its name in the legends, as text.
    page.goto(f"{page.base_url}/#/compare/{hostile},{hostile}")
    page.wait_for_function("document.querySelector('#compare-chart-train_loss_running')?.data?.length === 2",
                           timeout=30_000)
    page.wait_for_timeout(400)
    no_markup(page)
    legend = page.locator("#compare-chart-train_loss_running .legendtext").first.text_content()
    assert legend == f"run {HOSTILE}"
    assert page.locator("#compare-heatmaps .panel-title").first.text_content().startswith(f"run {HOSTILE}")
