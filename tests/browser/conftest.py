"""Fixtures of the browser tests: a real server per module, Debian chromium, console watching."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, sync_playwright
from websockets.sync.client import connect

from tests.conftest import REPO, free_port
from tests.warm_workers import FORKS, SHARED_HELPER

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = REPO / "docs" / "img"
FINAL = {"completed", "stopped", "failed"}
HTTP_ERROR = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


class Server:
    """`python -m backend` as a user starts it, forked warm from the test process's helper with
    its runs' workers forked warm too (tests/warm_workers.py), plus the REST/websocket reads
    the tests compare with."""

    def __init__(self, data_dir: Path, token: str | None = None, plugins: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if plugins:  # modules registering user methods (dst_core.plugins)
            env["SPARSESCOPE_PLUGINS"] = plugins
        env.pop("SPARSESCOPE_TOKEN", None)
        if token:
            env["SPARSESCOPE_TOKEN"] = token
        env[SHARED_HELPER] = FORKS.prestart()  # where its workers are forked
        self.log_path = data_dir.parent / f"server-{self.port}.log"
        self.log_path.write_bytes(b"")
        self.process = FORKS.fork_server(["--port", str(self.port), "--data-dir", str(data_dir)],
                                         env, self.log_path, warm_workers=True)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # Idle connections dropped after 2 s, before uvicorn's 5 s: reusing one as the server
        # closes it is a "connection reset" (seen once in CI).
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=30,
                                 limits=httpx.Limits(keepalive_expiry=2))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if self.http.get("/api/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.process.kill()
        raise AssertionError(self.log_path.read_text(errors="replace"))

    def start_run(self, **config) -> dict:
        response = self.http.post("/api/runs", json=config)
        assert response.status_code == 201, response.text
        return response.json()

    def wait(self, run_id: str, statuses=FINAL, timeout_s: float = 240.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.http.get(f"/api/runs/{run_id}").json()
            if run["status"] in statuses:
                return run
            time.sleep(0.2)
        raise AssertionError(f"run {run_id} never reached {statuses}: {run['status']}")

    def events(self, run_id: str) -> list[dict]:
        """Every stored event of an ended run, read from the websocket exactly as the page does."""
        token = f"&token={self.token}" if self.token else ""
        events = []
        with connect(f"ws://127.0.0.1:{self.port}/ws/runs/{run_id}?from_seq=1{token}",
                     max_size=None, open_timeout=30) as socket:
            for message in socket:
                event = json.loads(message)
                events.append(event)
                if event["type"] in ("end", "error"):
                    break
        return events

    def close(self) -> None:
        self.http.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def page_error(error) -> str:
    """An uncaught page error with its stack: a message alone ("reading 'map'") names no line."""
    stack = getattr(error, "stack", None)
    return f"{error}\n{stack}" if stack else str(error)


def topology_frames(events: list[dict]) -> list[dict]:
    return [event for event in events if event["type"] == "topology"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    instance = Server(tmp_path_factory.mktemp("data"))
    yield instance
    instance.close()


@dataclass
class Chromium:
    instance: Browser
    loop: asyncio.AbstractEventLoop  # Playwright's, marked running in this thread while in use


@pytest.fixture(scope="session")
def chromium() -> Iterator[Chromium]:
    """One chromium per test process (a launch is a second or two of CPU). Playwright's sync
    API marks its event loop as running in this thread after each of its calls; outside a
    browser test file that mark is taken away (`browser`), or a later test's asyncio.run()
    in this process would refuse to start ("cannot be called from a running event loop")."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is missing: `make test` installs it with apt-get")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        shared = Chromium(instance, asyncio.get_running_loop())
        yield shared
        asyncio._set_running_loop(shared.loop)  # in use again, to close it
        instance.close()


@pytest.fixture(scope="module")
def browser(chromium):
    """The process's chromium, for one test file: Playwright's loop is marked running while
    the file's tests use it, and no longer once they are done (see `chromium`)."""
    asyncio._set_running_loop(chromium.loop)
    yield chromium.instance
    asyncio._set_running_loop(None)


@pytest.fixture
def page(browser, server):
    """A fresh tab on the server's dashboard; the test fails on any console error or page error."""
    # bypass_csp: Playwright's wait_for_function evaluates its predicate with `new Function`,
    # which the page's CSP forbids; test_csp.py checks the page under its CSP.
    context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True,
                                  bypass_csp=True)
    tab = context.new_page()
    tab.console_errors = []
    # Chromium logs every 4xx answer as a console error; a test that provokes one on purpose
    # (a 422 from the form, a 401 before the token) lists its status here, nothing else passes.
    tab.expected_statuses = set()

    def on_console(message):
        if message.type != "error":
            return
        status = HTTP_ERROR.match(message.text)
        if status and int(status.group(1)) in tab.expected_statuses:
            return
        # A failed request's line names no address: its location does.
        where = (message.location or {}).get("url") if status else None
        tab.console_errors.append(f"{message.text}: {where}" if where else message.text)

    tab.on("console", on_console)
    tab.on("pageerror", lambda e: tab.console_errors.append(page_error(e)))
    tab.base_url = server.url
    tab.goto(server.url)
    yield tab
    errors = list(tab.console_errors)
    context.close()
    assert errors == [], f"console errors: {errors}"


def watch_console(page) -> list[str]:
    """The console errors and page errors of a tab opened outside the `page` fixture."""
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(page_error(error)))
    return errors


def reveal_topology(page, selector: str = "#topology") -> None:
    """Scroll the Topology section into view and wait until it has drawn, then back to the top:
    off screen it fetches and draws nothing (a full-page picture would show it empty)."""
    player = "comparePlayer" if selector.startswith("#compare") else "player"
    page.locator(selector).scroll_into_view_if_needed()
    # The rewire on screen (following live it moves on: then any drawn rewire will do).
    page.wait_for_function(
        f"(() => {{ const shown = document.querySelector('{selector}').dataset.step;"
        f" const player = window.sparsescope.{player};"
        " return shown !== undefined && (player.live || shown === String(player.step)); })()",
        timeout=30_000)
    page.evaluate("window.scrollTo(0, 0)")


def scrub(page, position: int, selector: str = "#scrubber") -> None:
    """Move a scrubber as dragging it does (its `input` event), without focusing it: a focus
    scrolls it into view, and with it the section a test is looking at out of view."""
    page.evaluate("([selector, position]) => { const input = document.querySelector(selector);"
                  " input.value = String(position);"
                  " input.dispatchEvent(new Event('input', { bubbles: true })); }",
                  [selector, position])


def screenshot(page, name: str, full_page: bool = False) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=full_page)


def section_screenshot(page, selector: str, name: str) -> None:
    """One section of the page alone, for the docs (the sticky top bar kept out of it)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("document.querySelector('header.topbar').style.position = 'static'")
    page.locator(selector).scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    page.locator(selector).screenshot(path=str(SCREENSHOTS / name))
    page.evaluate("document.querySelector('header.topbar').style.position = ''")


def stored_mask(server: Server, run_id: str, layer: int, step: int) -> np.ndarray:
    """A layer's (rows, cols) bool mask at `step`, as the server stored it (GET /mask)."""
    response = server.http.get(f"/api/runs/{run_id}/mask", params={"layer": layer, "step": step})
    assert response.status_code == 200, response.text
    body = response.json()
    rows, cols = body["shape"]
    bits = np.frombuffer(base64.b64decode(body["bits"]), dtype=np.uint8)
    return np.unpackbits(bits, bitorder="little", count=rows * cols).astype(bool).reshape(rows, cols)


def pixel_counts(mask: np.ndarray, grid_rows: int, grid_cols: int) -> np.ndarray:
    """Active connections per pixel of a grid_rows × grid_cols panel, with the ranges of
    docs/protocol.md: pixel i covers rows [floor(i·rows/gr), floor((i+1)·rows/gr))."""
    rows, cols = mask.shape
    def pixel_of(size: int, pixels: int) -> np.ndarray:  # the pixel each matrix row/col falls in
        starts = (np.arange(pixels) * size) // pixels
        return np.searchsorted(starts, np.arange(size), side="right") - 1

    row_pixel = pixel_of(rows, grid_rows)
    col_pixel = pixel_of(cols, grid_cols)
    counts = np.zeros((grid_rows, grid_cols), np.int64)
    r, c = np.nonzero(mask)
    np.add.at(counts, (row_pixel[r], col_pixel[c]), 1)
    return counts


# The counts a painted panel shows (kept + added per pixel) and its grid, read from the page.
PANEL_COUNTS_JS = """(index) => {
  const panel = window.sparsescope.panels[index];
  const view = panel.view;
  const active = Array.from(view.kept, (kept, i) => kept + view.added[i]);
  return { step: view.step, gr: view.gr, gc: view.gc, active, added: view.added_total,
           removed: view.removed_total, exact: view.exact };
}"""
