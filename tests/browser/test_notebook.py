"""Notebooks as a user runs them: the tutorial executed by a headless Jupyter kernel, its
inline views opened in chromium, and `sparsescope.show()` inside JupyterLab following a run live
(the docs' screenshot of the inline view is taken here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import httpx
import pytest

from tests.browser.conftest import SCREENSHOTS, watch_console
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.browser

TUTORIAL = REPO / "examples" / "tutorial.ipynb"
VIEW = re.compile(r'<iframe class="sparsescope-view" src="(http://127\.0\.0\.1:\d+)/#/run/([0-9a-f]+)"')


# nbformat and nbclient are imported by the tests that use them: importing nbformat builds
# jsonschema's format grammars (~2 s), which every test process would pay when collecting.


def inline_views(notebook) -> list[tuple[str, str]]:
    """(server, run id) of every inline view in the notebook's outputs, in order."""
    views = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            views += VIEW.findall(output.get("data", {}).get("text/html", ""))
    return views


def test_tutorial_is_committed_without_outputs():
    import nbformat

    notebook = nbformat.read(TUTORIAL, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_tutorial_runs_headless_and_its_inline_views_show_existing_runs(tmp_path, monkeypatch,
                                                                        browser):
    data_dir = tmp_path / "data"
    monkeypatch.setenv("SPARSESCOPE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("TUTORIAL_EPOCHS", "3")  # the outline and every view, in seconds per run
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the kernel imports this checkout
    monkeypatch.delenv("SPARSESCOPE_NOTEBOOK_URL", raising=False)
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(TUTORIAL, as_version=4)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    with client.setup_kernel():  # the kernel, and the server it started, live until the end
        for index, cell in enumerate(notebook.cells):
            client.execute_cell(cell, index)  # raises CellExecutionError on any error
        views = inline_views(notebook)
        # one view per section's run (SET, RigL, grad_sample, Deep R, own loop, dense, static)
        # and the replay of the SET run at the end, all served by one reused server
        assert len(views) == 8, views
        assert len({server for server, _ in views}) == 1
        server = views[0][0]
        runs = {run["id"]: run for run in httpx.get(f"{server}/api/runs", timeout=30).json()}
        assert all(run_id in runs for _, run_id in views)
        assert all(runs[run_id]["status"] == "completed" for _, run_id in views)
        assert views[-1][1] == views[0][1]  # sparsescope.show(set_run) shows the SET run again
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        errors = watch_console(page)
        page.goto(f"{server}/#/run/{views[1][1]}")  # the RigL run's inline view, as its URL
        page.wait_for_selector("#heatmap-0[data-step]", timeout=60_000)
        page.wait_for_selector("#status[data-status='completed']", timeout=30_000)
        page.close()
        assert errors == []


LIVE_NOTEBOOK = '''
import time
import torch, torch.nn.functional as F
import sparsescope
from dst_core import SparseDriver
from dst_core.recording import Recorder
from dst_core.tasks import load_task

task = load_task("digits")
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(),
                            torch.nn.Linear(128, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
driver = SparseDriver(model, optimizer, method="set", density=0.2, total_steps=600, interval_steps=5)
with Recorder(name="inline in JupyterLab") as rec:
    rec.attach(driver)
    sparsescope.show(rec.run_id, data_dir=rec.data_dir)
    for step in range(1, 601):
        batch = torch.randint(0, len(task.x_train), (64,))
        loss = F.cross_entropy(model(task.x_train[batch]), task.y_train[batch])
        optimizer.zero_grad(); loss.backward(); driver.step()
        rec.log(step, loss=loss.item())
        time.sleep(0.1)  # slow enough to watch it train
'''


def test_show_in_jupyterlab_follows_a_run_while_it_trains(tmp_path, monkeypatch, browser):
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(LIVE_NOTEBOOK.strip())]
    notebook.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                        "language": "python"}}
    nbformat.write(notebook, tmp_path / "inline.ipynb")
    monkeypatch.setenv("SPARSESCOPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv("SPARSESCOPE_NOTEBOOK_URL", raising=False)
    port = free_port()
    lab = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         "--allow-root", "--IdentityProvider.token=", "--ServerApp.password=",
         f"--ServerApp.root_dir={tmp_path}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
             "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/api/status", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            raise AssertionError("JupyterLab did not start")
        page = browser.new_page(viewport={"width": 1280, "height": 1300})
        page.goto(f"{url}/lab/tree/inline.ipynb")
        page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=90_000)
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=90_000)  # kernel up
        page.keyboard.press("Control+b")  # the file browser closed: the cell gets the width
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_text("Run All Cells", exact=True).click()
        # The run view draws the panels a reader can see: the cell's output is scrolled to.
        page.locator("iframe.sparsescope-view").scroll_into_view_if_needed(timeout=120_000)
        view = page.frame_locator("iframe.sparsescope-view")
        view.locator("#heatmap-0[data-step]").wait_for(timeout=120_000)
        panel = view.locator("#heatmap-0")
        first_step = panel.get_attribute("data-step")
        # Live: the inline view moves on to newer rewires while the cell is still running
        # (between two paints the panel may briefly carry no step).
        deadline = time.monotonic() + 60
        while panel.get_attribute("data-step") in (None, first_step):
            assert time.monotonic() < deadline, "the inline view did not follow the run"
            time.sleep(0.5)
        assert page.get_by_text("Python 3 (ipykernel) | Busy").count() == 1  # still training
        for toast in page.get_by_role("button", name="No", exact=True).all():
            toast.click()  # JupyterLab's news question, not part of what the docs show
        page.locator("iframe.sparsescope-view").scroll_into_view_if_needed()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "notebook-inline.png"))
        page.close()
    finally:
        lab.terminate()
        try:
            lab.wait(timeout=15)
        except subprocess.TimeoutExpired:
            lab.kill()
