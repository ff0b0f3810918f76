"""The runs list (filter, sort, live updates, export/import, delete) and the comparison of runs."""

import sqlite3
from contextlib import closing

import pytest

from tests.browser.conftest import reveal_topology, screenshot, topology_frames

pytestmark = pytest.mark.browser

BASE = {"task": "synthetic", "hidden": [32, 32], "epochs": 20, "interval_steps": 20}


@pytest.fixture(scope="module")
def pair(server):
    alpha = server.start_run(name="alpha", density=0.1, **BASE)
    # Different in method and density only: what Compare's table of settings shows.
    beta = server.start_run(name="beta", method="rigl", density=0.3, **BASE)
    for run in (alpha, beta):
        server.wait(run["id"])
    return {run["name"]: {"id": run["id"], "frames": topology_frames(server.events(run["id"]))}
            for run in (alpha, beta)}


def row_names(page):
    return page.eval_on_selector_all("#runs-body tr td.name", "cells => cells.map(c => c.textContent)")


def test_filter_sort_and_live_updates(page, server, pair):
    page.goto(f"{page.base_url}/#/runs")
    page.wait_for_function("document.querySelectorAll('#runs-body tr').length === 2")
    assert row_names(page) == ["beta", "alpha"]  # newest first
    page.get_by_label("Filter").fill("alph")
    page.wait_for_function("document.querySelectorAll('#runs-body tr').length === 1")
    assert row_names(page) == ["alpha"]
    page.get_by_label("Filter").fill("")  # the server filters: the page asks again
    page.wait_for_function("document.querySelectorAll('#runs-body tr').length === 2")
    page.get_by_role("button", name="Density").click()
    assert row_names(page) == ["alpha", "beta"]
    assert page.locator("th[data-sort='density']").get_attribute("aria-sort") == "ascending"
    page.get_by_role("button", name="Density").click()
    assert row_names(page) == ["beta", "alpha"]
    page.get_by_label("Status").select_option("running")
    page.wait_for_function("document.querySelectorAll('#runs-body tr').length === 0")
    page.get_by_label("Status").select_option("")
    # A run started elsewhere (the API, the CLI) shows up and changes status without a reload.
    gamma = server.start_run(name="gamma", task="synthetic", hidden=[8], epochs=2)
    page.wait_for_selector(f"#runs-body tr[data-run-id='{gamma['id']}']", timeout=15_000)
    server.wait(gamma["id"])
    page.wait_for_selector(f"#runs-body tr[data-run-id='{gamma['id']}'][data-status='completed']",
                           timeout=15_000)
    # Delete asks twice, then the run is gone.
    page.get_by_role("button", name="Delete gamma").click()
    page.get_by_role("button", name="Delete gamma").click()
    page.wait_for_selector(f"#runs-body tr[data-run-id='{gamma['id']}']", state="detached")
    assert server.http.get(f"/api/runs/{gamma['id']}").status_code == 404


def test_export_and_import(page, server, pair, tmp_path):
    page.goto(f"{page.base_url}/#/runs")
    page.wait_for_selector("#runs-body tr")
    alpha = pair["alpha"]["id"]
    exported = server.http.get(f"/api/runs/{alpha}/export")
    assert exported.status_code == 200, exported.text
    assert exported.headers["content-type"] == "application/octet-stream"
    assert exported.headers["content-disposition"] == 'attachment; filename="alpha.sparsescope"'
    # The file is alpha and all of it: one SQLite run with every frame the stream sent.
    copy = tmp_path / "exported.sqlite3"
    copy.write_bytes(exported.content)
    with closing(sqlite3.connect(f"file:{copy}?mode=ro", uri=True)) as db:
        assert db.execute("SELECT id, name, status FROM runs").fetchall() == [
            (alpha, "alpha", "completed")]
        frames = db.execute("SELECT step, layer, keyframe FROM events WHERE type = 'topology' "
                            "ORDER BY seq").fetchall()
        assert db.execute("SELECT name FROM artifacts").fetchall() == [("model.pt",)]
    assert frames == [(frame["step"], frame["index"], int(frame["keyframe"]))
                      for frame in pair["alpha"]["frames"]]
    with page.expect_download() as info:
        page.get_by_role("button", name="Export alpha").click()
    assert info.value.suggested_filename == "alpha.sparsescope"
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    assert path.read_bytes() == exported.content
    known = {run["id"] for run in server.http.get("/api/runs").json()}
    before = len(known)
    page.locator("#import-file").set_input_files(str(path))
    page.wait_for_function("document.querySelector('#runs-message').textContent.startsWith('Imported')")
    page.wait_for_function(f"document.querySelectorAll('#runs-body tr').length === {before + 1}")
    [imported] = [run for run in server.http.get("/api/runs").json() if run["id"] not in known]
    assert imported["name"] == "alpha (imported)"
    assert imported["info"]["imported_from"] == alpha
    page.wait_for_function(f"document.querySelector('#runs-body tr[data-run-id=\"{imported['id']}\"] "
                           "td.name').textContent === 'alpha (imported)'")
    # The module's runs stay as they were for the tests after this one (names are labels).
    assert server.http.delete(f"/api/runs/{imported['id']}").status_code == 204


def test_model_is_offered_only_for_runs_with_a_stored_model(page, server, pair):
    stopped = server.start_run(name="cut short", task="synthetic", hidden=[8], epochs=5000)
    server.wait(stopped["id"], ("running",))
    assert server.http.post(f"/api/runs/{stopped['id']}/stop").json()["status"] == "stopped"
    page.goto(f"{page.base_url}/#/runs")
    page.wait_for_selector(f"#runs-body tr[data-run-id='{stopped['id']}'][data-status='stopped']")
    assert server.http.get(f"/api/runs/{stopped['id']}").json()["has_model"] is False
    assert page.get_by_role("button", name="Download the trained model of cut short").count() == 0
    assert server.http.get(f"/api/runs/{pair['alpha']['id']}").json()["has_model"] is True
    assert page.get_by_role("button", name="Download the trained model of alpha").count() == 1
    assert server.http.delete(f"/api/runs/{stopped['id']}").status_code == 204


def test_compare_two_runs(page, pair):
    page.goto(f"{page.base_url}/#/runs")
    page.wait_for_selector("#runs-body tr")
    page.get_by_label("compare alpha").check()
    page.get_by_label("compare beta").check()
    page.get_by_role("button", name="Compare selected (2)").click()
    page.wait_for_function("location.hash.startsWith('#/compare/')")
    # Every metric overlaid: one curve per run in each chart.
    for key in ("train_loss_running", "test_accuracy", "density", "itop_rate", "turnover"):
        page.wait_for_function(
            f"(() => {{ const d = document.querySelector('#compare-chart-{key}')?.data;"
            " return d && d.length === 2 && d.every(t => t.x.length > 0); })()", timeout=30_000)
    names = page.evaluate("document.querySelector('#compare-chart-test_accuracy').data.map(t => t.name)")
    assert sorted(names) == ["alpha", "beta"]
    # Heatmaps side by side, driven by one scrubber.
    frames = {name: [f for f in run["frames"] if f["index"] == 0] for name, run in pair.items()}
    steps = sorted({f["step"] for run in frames.values() for f in run})
    position = len(steps) // 2
    page.wait_for_function("document.querySelectorAll('#compare-heatmaps .heatmap[data-step]').length === 2")
    page.locator("#compare-scrubber").fill(str(position))
    models = page.evaluate("Array.from(document.querySelectorAll('#compare-heatmaps .heatmap'))"
                           ".map(e => e.id)")
    assert models == ["compare-heatmap-0", "compare-heatmap-1"]
    order = page.evaluate("Array.from(document.querySelectorAll('#compare-heatmaps .heatmap'))"
                          ".map(e => e.closest('figure').querySelector('.panel-title')?.textContent || '')")
    for index in range(2):
        page.wait_for_function(
            f"document.querySelector('#compare-heatmap-{index}').dataset.step === '{steps[position]}'")
    for index, title in enumerate(order):
        name = "alpha" if title.startswith("alpha") else "beta"
        stored = [f for f in frames[name] if f["step"] <= steps[position]][-1]["active"]
        assert int(page.locator(f"#compare-heatmap-{index}").get_attribute("data-active")) == stored
    page.get_by_role("button", name="Compare: step forward").click()
    for index in range(2):
        page.wait_for_function(
            f"document.querySelector('#compare-heatmap-{index}').dataset.step === '{steps[position + 1]}'")
    page.wait_for_function("(document.querySelector('#compare-chart-test_loss').layout?.shapes || [])"
                           f".some(shape => shape.x0 === {steps[position + 1]})")
    reveal_topology(page, "#compare-topology")
    screenshot(page, "compare.png", full_page=True)
    # The same comparison opened from its link in a fresh tab: its runs are ticked in the picker.
    link = page.url
    page.goto("about:blank")
    page.goto(link)
    page.wait_for_function("document.querySelectorAll('#compare-heatmaps .heatmap[data-step]').length === 2")
    page.wait_for_function("document.querySelectorAll('#compare-options input:checked').length === 2")
    ticked = page.eval_on_selector_all("#compare-options input:checked", "els => els.map(e => e.value)")
    assert sorted(ticked) == sorted(run["id"] for run in pair.values())


# Every Plotly chart of the compare view but the layer panels (one run each, see below): which
# run each trace belongs to (legendgroup), its colours, the colours of the chart's annotations
# (a heatmap has no colour of its own: its run's name above it is in the run's colour).
# Every chart of runs (the mask overlap charts are of pairs of runs: their axes name the runs
# in their colours instead).
CHARTS = """Array.from(document.querySelectorAll('#view-compare .js-plotly-plot'))
  .filter((div) => !div.closest('#compare-heatmaps') && !div.closest('#compare-overlap'))
  .map((div) => ({ id: div.id,
    traces: div.data.map((t) => ({ group: t.legendgroup ?? null, type: t.type, name: t.name,
                                   colours: [t.line?.color, t.marker?.color].filter((c) => c) })),
    annotations: (div.layout.annotations || []).map((a) => a.font?.color).filter((c) => c) }))"""


def test_compare_shows_the_settings_that_differ_and_one_colour_per_run(page, server, pair):
    ids = [pair["alpha"]["id"], pair["beta"]["id"]]
    configs = [server.http.get(f"/api/runs/{run_id}").json()["config"] for run_id in ids]
    unset = object()
    differing = {key for key in set(configs[0]) | set(configs[1])
                 if key != "name" and configs[0].get(key, unset) != configs[1].get(key, unset)}
    assert differing == {"method", "density"}
    page.goto(f"{page.base_url}/#/compare/{','.join(ids)}")
    page.wait_for_selector("#compare-diff tr[data-key]")
    rows = page.eval_on_selector_all(
        "#compare-diff tr[data-key]",
        "rows => rows.map(r => [r.dataset.key, Array.from(r.cells).slice(1).map(c => c.textContent)])")
    assert {key for key, _ in rows} == differing
    for key, values in rows:
        assert values == [str(config[key]) for config in configs], key
    assert page.locator("#compare-diff-summary").text_content() == "2 settings differ:"
    headers = page.eval_on_selector_all(
        "#compare-diff th.run-name",
        "cells => cells.map(c => [c.textContent, c.dataset.runId, c.style.getPropertyValue('--run-colour')])")
    assert [header[:2] for header in headers] == [["alpha", ids[0]], ["beta", ids[1]]]
    colour = {run_id: value for _, run_id, value in headers}
    assert len(set(colour.values())) == 2 and all(colour.values())
    # Each layer panel is edged in its run's colour.
    page.wait_for_function("document.querySelectorAll('#compare-heatmaps .heatmap[data-step]').length === 2")
    panels = page.eval_on_selector_all(
        "#compare-heatmaps figure",
        "els => els.map(e => [e.dataset.runId, e.style.getPropertyValue('--run-colour')])")
    assert panels == [[run_id, colour[run_id]] for run_id in ids]
    # Every chart drawn with both runs: the metrics, then the topology section (drawn on sight),
    # whose fan-in over time is one heatmap per run.
    page.wait_for_function(
        "['train_loss_running', 'test_accuracy', 'density', 'itop_rate', 'turnover', 'added'].every(key => {"
        " const d = document.querySelector(`#compare-chart-${key}`)?.data;"
        " return d && d.length === 2 && d.every(t => t.x.length > 0); })", timeout=30_000)
    reveal_topology(page, "#compare-topology")
    page.wait_for_function("document.querySelector('#compare-topology-degree-time').data?.length === 2")
    charts = page.evaluate(CHARTS)
    drawn = {chart["id"] for chart in charts}
    assert {"compare-chart-test_loss", "compare-topology-fan-in", "compare-topology-degree-time",
            "compare-topology-degree-mean", "compare-topology-dead"} <= drawn, drawn
    for chart in charts:
        groups = {trace["group"] for trace in chart["traces"]}
        assert groups == set(ids), (chart["id"], chart["traces"])  # every run, nothing else
        for trace in chart["traces"]:
            if trace["type"] == "heatmap":
                assert colour[trace["group"]] in chart["annotations"], (chart["id"], trace)
            else:
                assert trace["colours"] and set(trace["colours"]) == {colour[trace["group"]]}, \
                    (chart["id"], trace)
