"""The runs page over 2,000 runs (issue 30): it paints a page, pages on, filters on the server,
and a poll of an unchanged list is a 304."""

from __future__ import annotations

import time

import pytest

from dst_core.store import RunStore
from tests.browser.conftest import Server

pytestmark = pytest.mark.browser

RUNS = 2000
STATUSES = ("completed", "failed", "stopped", "completed")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server on a folder that already holds RUNS ended runs, written straight into the
    store (every fourth one's task is mnist, the others digits)."""
    folder = tmp_path_factory.mktemp("many")
    store = RunStore(folder)
    with store._write() as db:
        db.executemany(
            "INSERT INTO runs (id, name, config, status, created_at, info, summary) "
            "VALUES (?, ?, ?, ?, ?, '{\"writer\": \"cli\"}', ?)",
            [(f"{index:016x}", f"run {index}",
              '{"task": "%s", "method": "set", "density": 0.1}' % (
                  "mnist" if index % 4 == 0 else "digits"),
              STATUSES[index % 4], 1_700_000_000.0 + index,
              '{"steps": 10, "best_test_accuracy": 0.5}') for index in range(RUNS)])
    store.close()
    instance = Server(folder)
    yield instance
    instance.close()


def rows(page) -> int:
    return page.evaluate("document.querySelectorAll('#runs-body tr').length")


def test_the_runs_page_paints_pages_and_filters_2000_runs(page, server):
    answers = []
    page.on("response", lambda response: response.url.startswith(f"{server.url}/api/runs")
            and answers.append((response.url, response.status)))
    started = time.perf_counter()
    page.goto(f"{server.url}/#/runs")
    page.wait_for_function("document.querySelectorAll('#runs-body tr').length === 200")
    painted_s = time.perf_counter() - started
    print(f"2,000 runs: the first 200 painted {painted_s:.2f} s after the navigation")
    names = page.eval_on_selector_all("#runs-body tr td.name", "cells => cells.map(c => c.textContent)")
    assert names[:2] == [f"run {RUNS - 1}", f"run {RUNS - 2}"]  # newest first
    assert page.locator("#runs-count").text_content() == "200 of 2,000 runs shown."
    page.get_by_role("button", name="Show more runs").click()
    page.wait_for_function("document.querySelectorAll('#runs-body tr').length === 400")
    assert page.locator("#runs-count").text_content() == "400 of 2,000 runs shown."
    # A poll of the unchanged list: the browser sends the ETag back and gets a 304.
    answers.clear()
    deadline = time.monotonic() + 30  # the next poll: every 3 s
    while not answers and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert answers and all(status == 304 for _, status in answers), answers
    # Filters run on the server: status, then the search box (task), then both cleared.
    page.get_by_label("Status").select_option("failed")
    page.wait_for_function("document.querySelector('#runs-count').textContent"
                           " === '200 of 500 runs shown.'")
    assert {row for row in page.eval_on_selector_all(
        "#runs-body tr", "rows => rows.map(r => r.dataset.status)")} == {"failed"}
    page.get_by_label("Status").select_option("")
    page.get_by_label("Filter").fill("run 1999")
    page.wait_for_function("document.querySelectorAll('#runs-body tr').length === 1")
    assert page.locator("#runs-more").is_hidden()
    page.get_by_label("Filter").fill("MNIST")
    page.wait_for_function("document.querySelector('#runs-count').textContent"
                           " === '200 of 500 runs shown.'")
    page.get_by_label("Filter").fill("no such run")
    page.wait_for_function("document.querySelector('#runs-count').textContent"
                           " === 'No run matches the filter.'")
    assert rows(page) == 0 and page.locator("#runs-empty").is_hidden()
    page.get_by_label("Filter").fill("")
    page.wait_for_function("document.querySelectorAll('#runs-body tr').length === 200")
    # A run on a page not loaded still opens from its link.
    page.goto("about:blank")
    page.goto(f"{server.url}/#/run/{5:016x}")
    page.wait_for_function("document.querySelector('#run-title')?.textContent === 'run 5'")
