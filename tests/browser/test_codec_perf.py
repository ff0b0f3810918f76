"""Binary topology frames decoded in the browser, and frame times of a 1024 × 1024 layer.

The frame times are measured with performance.now() on the page's real apply + draw path and
printed (run with `-s`); they are reported, never asserted (performance lives in bench/).
"""

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from tests.browser.conftest import SCREENSHOTS

pytestmark = pytest.mark.browser

PERF_JS = (Path(__file__).parent / "perf_frames.js").read_text()
DECODE_JS = """async (frames) => {
  const { decodeBinaryFrame, normaliseTopology } = await import('/static/js/codec.js');
  const plain = (event) => ({ ...event, packed: event.packed ? Array.from(event.packed) : undefined,
                              added: event.added ? Array.from(event.added) : undefined,
                              removed: event.removed ? Array.from(event.removed) : undefined });
  return frames.map(({ binary, json }) => ({
    binary: plain(decodeBinaryFrame(new Uint8Array(binary).buffer)),
    json: plain(normaliseTopology(json)),
  }));
}"""


def binary_frame(header: dict, payload: bytes) -> bytes:
    """The binary layout of COMMON.md: uint32 LE header length, space-padded JSON, payload."""
    text = json.dumps(header).encode()
    text += b" " * ((-(4 + len(text))) % 4)
    return len(text).to_bytes(4, "little") + text + payload


def frames_for(mask: np.ndarray, added: np.ndarray, removed: np.ndarray, rows: int, cols: int):
    packed = np.packbits(mask, bitorder="little").tobytes()
    key = {"type": "topology", "seq": 5, "step": 0, "layer": "fc", "index": 0, "shape": [rows, cols],
           "keyframe": True, "active": int(mask.sum())}
    delta = {"type": "topology", "seq": 6, "step": 10, "layer": "fc", "index": 0, "shape": [rows, cols],
             "keyframe": False, "active": int(mask.sum())}
    added_bytes = added.astype("<u4").tobytes()
    removed_bytes = removed.astype("<u4").tobytes()
    return [
        {"binary": list(binary_frame(key, packed)),
         "json": {**key, "bits": base64.b64encode(packed).decode()}},
        {"binary": list(binary_frame({**delta, "n_added": len(added), "n_removed": len(removed)},
                                     added_bytes + removed_bytes)),
         "json": {**delta, "added": base64.b64encode(added_bytes).decode(),
                  "removed": base64.b64encode(removed_bytes).decode()}},
    ]


@pytest.mark.parametrize("rows, cols", [(5, 7), (3, 8), (64, 20)])
def test_binary_and_json_frames_decode_to_the_same_topology(page, rows, cols):
    rng = np.random.default_rng(rows * cols)
    mask = rng.random(rows * cols) < 0.3
    added = np.sort(rng.choice(np.flatnonzero(~mask), 3, replace=False))
    removed = np.sort(rng.choice(np.flatnonzero(mask), 2, replace=False))
    decoded = page.evaluate(DECODE_JS, frames_for(mask, added, removed, rows, cols))
    key, delta = decoded
    packed = list(np.packbits(mask, bitorder="little"))
    assert key["binary"]["packed"] == packed == key["json"]["packed"]
    assert key["binary"]["active"] == int(mask.sum()) and key["binary"]["keyframe"] is True
    assert key["binary"]["seq"] == 5 and key["binary"]["type"] == "topology"
    assert delta["binary"]["added"] == added.tolist() == delta["json"]["added"]
    assert delta["binary"]["removed"] == removed.tolist() == delta["json"]["removed"]
    assert delta["binary"]["step"] == 10 and delta["binary"]["shape"] == [rows, cols]


def test_truncated_binary_frame_is_rejected(page):
    frame = binary_frame({"type": "topology", "keyframe": False, "n_added": 4, "n_removed": 0,
                          "shape": [2, 2], "index": 0, "layer": "fc", "step": 1, "seq": 1}, b"\0" * 8)
    error = page.evaluate("""async (bytes) => {
        const { decodeBinaryFrame } = await import('/static/js/codec.js');
        try { decodeBinaryFrame(new Uint8Array(bytes).buffer); return null; } catch (e) { return e.message; }
    }""", list(frame))
    assert error and "too short" in error


def test_binary_frames_drive_the_heatmap(page):
    rows, cols = 16, 12
    rng = np.random.default_rng(3)
    mask = rng.random(rows * cols) < 0.25
    added = np.sort(rng.choice(np.flatnonzero(~mask), 5, replace=False))
    removed = np.sort(rng.choice(np.flatnonzero(mask), 5, replace=False))
    key, delta = (f["binary"] for f in frames_for(mask, added, removed, rows, cols))
    page.goto(f"{page.base_url}/#/run")
    page.evaluate("""([key, delta, rows, cols]) => {
        const hook = window.sparsescope;
        hook.openLocal({ id: '00000000000000ff', name: 'binary frames' });
        hook.feed({ type: 'meta', seq: 1, step: 0, image_shape: null, total_steps: 100,
                    layers: [{ name: 'fc', shape: [rows, cols], matrix: [rows, cols], density: 0.25 }] });
        hook.feed(new Uint8Array(key).buffer);
        hook.feed(new Uint8Array(delta).buffer);
    }""", [key, delta, rows, cols])
    page.wait_for_function("document.querySelector('#heatmap-0')?.dataset.step === '10'")
    heatmap = page.locator("#heatmap-0")
    assert int(heatmap.get_attribute("data-active")) == int(mask.sum())
    assert int(heatmap.get_attribute("data-added")) == 5 and int(heatmap.get_attribute("data-removed")) == 5
    after = mask.copy()
    after[removed] = False
    after[added] = True
    shown = page.evaluate("Array.from(window.sparsescope.model.layers[0].live.mask)")
    assert shown == after.astype(int).tolist()


def test_frame_times_of_a_1024_square_layer(page):
    """Apply + draw of 1024 × 1024 frames, one redraw per animation frame, bursts skip frames."""
    page.goto(f"{page.base_url}/#/run")
    result = page.evaluate(PERF_JS, {"rows": 1024, "cols": 1024, "density": 0.1, "deltas": 8, "burst": 30})
    single = result["single"]
    assert all(frame["drew"] == 1 for frame in single)  # every frame on its own got its picture
    burst = result["burst"]
    assert burst["frames"] == 30
    assert burst["draws"] <= 2 and burst["skipped"] >= 28  # newest shown, the rest skipped
    assert result["draws"] <= result["animationFrames"]  # never more than one redraw per frame
    assert result["shownActive"] == result["expectedActive"] == result["datasetActive"]
    apply = sorted(frame["apply"] for frame in single)
    total = sorted(frame["total"] for frame in single)
    sync = sorted(frame["drawSync"] for frame in single)
    apply_draw = sorted(frame["applyDraw"] for frame in single)
    arrival = sorted(frame["heatmapPainted"] for frame in single)
    report = {
        "apply_plus_draw_ms_median": round(apply_draw[len(apply_draw) // 2], 1),
        "apply_plus_draw_ms_max": round(apply_draw[-1], 1),
        "keyframe_apply_ms": round(result["keyframeApply"], 1),
        "delta_apply_ms_median": round(apply[len(apply) // 2], 1), "delta_apply_ms_max": round(apply[-1], 1),
        "draw_main_thread_ms_median": round(sync[len(sync) // 2], 1),
        "arrival_to_heatmap_painted_ms_median": round(arrival[len(arrival) // 2], 1),
        "arrival_to_heatmap_painted_ms_max": round(arrival[-1], 1),
        "apply_to_every_view_painted_ms_median": round(total[len(total) // 2], 1),
        "apply_to_every_view_painted_ms_max": round(total[-1], 1),
        "burst_frames": burst["frames"], "burst_draws": burst["draws"],
        "burst_apply_all_ms": round(burst["applyMs"], 1), "burst_to_painted_ms": round(burst["totalMs"], 1),
    }
    print("\nframe times (1024 x 1024, 10% dense, 30% turnover):", json.dumps(report))


def test_a_4096_square_layer_opens_as_a_density_map(page):
    """Above 2048 × 2048 the panel starts in density mode: ≤ 128 blocks a side, densities in [0, 1]."""
    page.goto(f"{page.base_url}/#/run")
    active = page.evaluate("""async () => {
        const hook = window.sparsescope;
        const rows = 4096, cols = 4096, size = rows * cols;
        const packed = new Uint8Array(size / 8);
        let seed = 7, active = 0;
        for (let i = 0; i < packed.length; i++) {
            seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
            // about 5% of bits set: AND of random bytes
            const a = seed & 0xff, b = (seed >>> 8) & 0xff, c = (seed >>> 16) & 0xff;
            const byte = a & b & c & ((seed >>> 24) & 0xff);
            packed[i] = byte;
        }
        for (let i = 0; i < packed.length; i++) { let v = packed[i]; while (v) { active += v & 1; v >>= 1; } }
        let text = '';
        for (let i = 0; i < packed.length; i += 0x8000) {
            text += String.fromCharCode(...packed.subarray(i, i + 0x8000));
        }
        hook.openLocal({ id: '0000000000004096', name: '4096 square' });
        hook.feed({ type: 'meta', seq: 1, step: 0, image_shape: null, total_steps: 10,
                    layers: [{ name: 'huge', shape: [rows, cols], matrix: [rows, cols], density: 0.004 }] });
        hook.feed({ type: 'topology', seq: 2, step: 0, layer: 'huge', index: 0, shape: [rows, cols],
                    keyframe: true, active, bits: btoa(text) });
        await hook.drawn();
        return active;
    }""")
    heatmap = page.locator("#heatmap-0")
    page.wait_for_function("document.querySelector('#heatmap-0').dataset.mode === 'density'")
    assert int(heatmap.get_attribute("data-active")) == active
    z = page.evaluate("document.querySelector('#heatmap-0').data[0].z")
    assert len(z) == 128 and len(z[0]) == 128
    assert all(0.0 <= value <= 1.0 for row in z for value in row)
    # The mean of the block densities is the layer's density (all blocks are 32 × 32).
    mean = sum(map(sum, z)) / (128 * 128)
    assert abs(mean - active / 4096**2) < 1e-9
    page.locator("#heatmaps figure").nth(1).screenshot(path=str(SCREENSHOTS / "density-map-4096.png"))
