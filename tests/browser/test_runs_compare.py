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
    beta = server.start_run(name="beta", density=0.3, seed=1, **BASE)
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
