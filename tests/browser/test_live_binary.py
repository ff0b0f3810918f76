"""The page against a live server with `?format=binary`: frames arrive as binary messages and the
masks the page holds equal the ones the server stored (read back with GET /api/runs/{id}/mask)."""

import base64

import numpy as np
import pytest

pytestmark = pytest.mark.browser

CONFIG = {"name": "binary live", "task": "digits", "hidden": [48, 32], "epochs": 4,
          "interval_steps": 5, "keyframe_every": 3, "density": 0.2}

PAGE_MASK = """([layerIndex, step]) => {
  const layer = window.sparsescope.model.layers[layerIndex];
  const state = layer.state(layer.frameAt(step));
  return { active: state.active, mask: Array.from(state.mask) };
}"""


def stored_mask(server, run_id: str, layer: int, step: int) -> np.ndarray:
    response = server.http.get(f"/api/runs/{run_id}/mask", params={"layer": layer, "step": step})
    assert response.status_code == 200, response.text
    body = response.json()
    rows, cols = body["shape"]
    bits = np.frombuffer(base64.b64decode(body["bits"]), dtype=np.uint8)
    return np.unpackbits(bits, bitorder="little")[: rows * cols]


def test_live_binary_frames_match_the_stored_masks(page, server):
    run = server.start_run(**CONFIG)
    before = page.evaluate("({...window.sparsescope.streamCounts})")
    page.goto(f"{server.url}/#/run/{run['id']}")
    # Watched live: frames arrive while the run is still going, as binary messages.
    page.wait_for_function("window.sparsescope.framesApplied >= 2", timeout=120_000)
    page.wait_for_selector("#connection[data-state='ended']", timeout=300_000)
    counts = page.evaluate("window.sparsescope.streamCounts")
    assert server.wait(run["id"])["status"] == "completed"
    stored = [e for e in server.events(run["id"]) if e["type"] == "topology"]
    assert counts["binary"] - before["binary"] == len(stored)  # every topology frame came binary
    assert counts["text"] > before["text"]  # metrics, status and end stay JSON
    assert page.evaluate("window.sparsescope.framesApplied") == len(stored)
    steps = page.evaluate("window.sparsescope.model.steps")
    layers = page.evaluate("window.sparsescope.model.layers.length")
    for step in (steps[0], steps[1], steps[len(steps) // 2], steps[-1]):
        for layer in range(layers):
            shown = page.evaluate(PAGE_MASK, [layer, step])
            expected = stored_mask(server, run["id"], layer, step)
            assert shown["mask"] == expected.tolist(), (layer, step)
            assert shown["active"] == int(expected.sum())

    # The completed run's trained model downloads from the runs list.
    page.goto(f"{server.url}/#/runs")
    with page.expect_download() as info:
        page.get_by_role("button", name=f"Download the trained model of {CONFIG['name']}").click()
    assert info.value.suggested_filename.endswith(".pt")
    page.wait_for_function("document.querySelector('#runs-message').textContent.startsWith('Saved the')")
