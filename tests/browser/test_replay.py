"""A saved run replayed: reload, scrub, step, play, density map, input pixels, hover, palette."""

import numpy as np
import pytest

from dst_core.events import decode_bits, decode_indices
from tests.browser.conftest import screenshot, topology_frames

pytestmark = pytest.mark.browser

CONFIG = {"name": "mnist replay", "task": "mnist", "hidden": [128, 64], "epochs": 8,
          "interval_steps": 10, "keyframe_every": 4, "density": 0.1}


@pytest.fixture(scope="module")
def saved(server):
    run = server.start_run(**CONFIG)
    server.wait(run["id"])
    frames = topology_frames(server.events(run["id"]))
    steps = sorted({frame["step"] for frame in frames})
    return {"id": run["id"], "frames": frames, "steps": steps}


def stored_active(saved, layer_index: int, step: int) -> int:
    frame = [f for f in saved["frames"] if f["index"] == layer_index and f["step"] <= step][-1]
    return frame["active"]


def replay(page, saved):
    page.goto(f"{page.base_url}/#/run/{saved['id']}")
    page.wait_for_selector("#connection[data-state='ended']", timeout=60_000)
    assert page.evaluate("window.sparsescope.framesApplied") == len(saved["frames"])
    page.wait_for_function("window.sparsescope.drawn().then(() => true)")


def scrub_to(page, position: int, step: int) -> None:
    page.locator("#scrubber").fill(str(position))
    page.wait_for_function(f"document.querySelector('#heatmap-0').dataset.step === '{step}'")
    page.evaluate("window.sparsescope.drawn()")


def test_replay_survives_reload(page, saved):
    replay(page, saved)
    assert page.locator("#status").get_attribute("data-status") == "completed"
    page.reload()
    page.wait_for_selector("#connection[data-state='ended']", timeout=60_000)
    assert page.evaluate("window.sparsescope.framesApplied") == len(saved["frames"])
    assert page.evaluate("window.sparsescope.model.steps") == saved["steps"]


def test_scrubbing_shows_the_stored_active_count(page, saved):
    replay(page, saved)
    steps = saved["steps"]
    assert len(steps) > 12
    for position in (0, 1, 3, 4, 5, 9, len(steps) // 2, len(steps) - 1):
        step = steps[position]
        scrub_to(page, position, step)
        for layer_index in (0, 1, 2):
            heatmap = page.locator(f"#heatmap-{layer_index}")
            page.wait_for_function(
                f"document.querySelector('#heatmap-{layer_index}').dataset.step === '{step}'")
            assert int(heatmap.get_attribute("data-active")) == stored_active(saved, layer_index, step)
        assert f"step {step}" in page.locator("#position").inner_text()
        # Column sums of the first layer add up to its active count.
        page.wait_for_function(f"document.querySelector('#input-view').dataset.step === '{step}'")
        assert int(page.locator("#input-view").get_attribute("data-total")) == stored_active(saved, 0, step)
    # Step back and forward one rewire, with the buttons and with the keyboard.
    page.get_by_role("button", name="Step back one rewire").click()
    page.wait_for_function(f"document.querySelector('#heatmap-0').dataset.step === '{steps[-2]}'")
    page.get_by_role("button", name="Step forward one rewire").click()
    page.wait_for_function(f"document.querySelector('#heatmap-0').dataset.step === '{steps[-1]}'")
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("ArrowLeft")
    page.wait_for_function(f"document.querySelector('#heatmap-0').dataset.step === '{steps[-2]}'")


def test_reconstructed_mask_matches_the_stored_frames(page, saved):
    """Scrubbing back rebuilds a rewire from its keyframe plus deltas: compare the whole mask."""
    replay(page, saved)
    layer0 = [f for f in saved["frames"] if f["index"] == 0]
    rows, cols = layer0[0]["shape"]
    mask = decode_bits(layer0[0]["bits"], rows * cols)
    position = 6  # between keyframes (every 4 rewires)
    for frame in layer0[1:position + 1]:
        if frame["keyframe"]:
            mask = decode_bits(frame["bits"], rows * cols)
        else:
            mask[decode_indices(frame["removed"])] = False
            mask[decode_indices(frame["added"])] = True
    shown = page.evaluate(f"""() => {{
        const layer = window.sparsescope.model.layers[0];
        const state = layer.state({position});
        const out = [];
        state.mask.forEach((v, i) => {{ if (v) out.push(i); }});
        return out;
    }}""")
    assert shown == np.flatnonzero(mask).tolist()


def test_play_density_map_hover_and_input_pixels(page, saved):
    replay(page, saved)
    steps = saved["steps"]
    scrub_to(page, 0, steps[0])
    page.get_by_role("button", name="Play").click()
    page.wait_for_function("Number(document.querySelector('#scrubber').value) >= 3", timeout=20_000)
    page.get_by_role("button", name="Pause").click()
    middle = len(steps) // 2
    scrub_to(page, middle, steps[middle])
    assert page.locator("#live").get_attribute("aria-pressed") == "false"
    # Hover a connection: unit indices and state.
    box = page.locator("#heatmap-1 .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.4)
    readout = page.locator("#heatmaps figure:nth-child(3) .readout")
    page.wait_for_function("/out \\d+, in \\d+: (inactive|kept|added|removed)/.test("
                           "document.querySelectorAll('#heatmaps .readout')[2].textContent)")
    assert readout.get_attribute("data-state") in {"inactive", "kept", "added", "removed"}
    page.mouse.move(0, 0)
    # The charts mark the scrubber's step with a dotted line.
    page.wait_for_function("(document.querySelector('#chart-loss').layout.shapes || [])"
                           f".some(shape => shape.x0 === {steps[middle]})")
    screenshot(page, "run-view.png", full_page=True)
    image = page.evaluate("document.querySelector('#input-view').data[0].z")
    assert len(image) == 28 and len(image[0]) == 28
    assert sum(map(sum, image)) == stored_active(saved, 0, steps[middle])
    # Density map: share of active connections per block, with the block's density on hover.
    page.select_option("#mode", "density")
    page.wait_for_function("document.querySelector('#heatmap-0').dataset.mode === 'density'")
    z = page.evaluate("document.querySelector('#heatmap-0').data[0].z")
    assert all(0.0 <= value <= 1.0 for row in z for value in row)
    box = page.locator("#heatmap-0 .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    page.wait_for_function(
        "document.querySelectorAll('#heatmaps .readout')[1].textContent.includes('density')")
    page.mouse.move(0, 0)
    screenshot(page, "density-map.png")
    page.select_option("#mode", "connections")
    page.wait_for_function("document.querySelector('#heatmap-0').dataset.mode === 'connections'")
    # The input view at the last rewire: where training has moved the first layer's connections.
    scrub_to(page, len(steps) - 1, steps[-1])
    page.wait_for_function(f"document.querySelector('#input-view').dataset.step === '{steps[-1]}'")
    page.locator("#input-view").screenshot(path=str(screenshot_path("input-pixels.png")))


def test_colour_blind_palette_toggle(page, saved):
    replay(page, saved)
    toggle = page.get_by_role("button", name="Colour-blind palette")
    before = page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--removed')")
    toggle.focus()
    page.keyboard.press("Enter")  # keyboard-usable
    assert toggle.get_attribute("aria-pressed") == "true"
    after = page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--removed')")
    assert before.strip() != after.strip() and after.strip() == "#e69f00"
    page.reload()  # remembered
    assert page.get_by_role("button", name="Colour-blind palette").get_attribute("aria-pressed") == "true"
    page.get_by_role("button", name="Colour-blind palette").click()


def screenshot_path(name):
    from tests.browser.conftest import SCREENSHOTS

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / name


def test_a_keyframe_at_a_rewire_shows_that_rewires_changes(page, saved):
    """A keyframe replaces its rewire's delta: the page diffs it against the state before."""
    replay(page, saved)
    layer0 = [f for f in saved["frames"] if f["index"] == 0]
    rows, cols = layer0[0]["shape"]
    keyframe_index = next(i for i, f in enumerate(layer0) if i > 0 and f["keyframe"])
    mask = decode_bits(layer0[0]["bits"], rows * cols)
    for frame in layer0[1:keyframe_index]:
        mask[decode_indices(frame["removed"])] = False
        mask[decode_indices(frame["added"])] = True
    after = decode_bits(layer0[keyframe_index]["bits"], rows * cols)
    shown = page.evaluate(f"""() => {{
        const frame = window.sparsescope.model.layers[0].frames[{keyframe_index}];
        return {{ added: Array.from(frame.added), removed: Array.from(frame.removed),
                  keyframe: frame.keyframe }};
    }}""")
    assert shown["keyframe"] is True
    assert shown["added"] == np.flatnonzero(after & ~mask).tolist()
    assert shown["removed"] == np.flatnonzero(mask & ~after).tolist()
    assert shown["added"] and shown["removed"]


RECOUNT_JS = """(index) => {
  const hook = window.sparsescope;
  const panel = hook.panels[index];
  const layer = hook.model.layers[index];
  const { fx, fy, width, height, counts } = panel.pixels;
  const state = layer.state(layer.frameAt(hook.model.steps[hook.position]));
  const fresh = new Int32Array(width * height);
  for (let r = 0; r < layer.rows; r++) for (let c = 0; c < layer.cols; c++) {
    if (state.mask[r * layer.cols + c]) fresh[((r / fy) | 0) * width + ((c / fx) | 0)] += 1;
  }
  let mismatches = 0;
  for (let i = 0; i < fresh.length; i++) if (fresh[i] !== counts[i]) mismatches++;
  return { mismatches, fx, fy, cached: panel.pixels.index, shown: state.index };
}"""


def test_incremental_pixel_counts_equal_a_recount(page, saved):
    """Stepping and scrubbing nearby updates each panel's per-pixel counts from the frames' changes;
    they must equal a fresh count of the mask at every position, forwards and backwards."""
    replay(page, saved)
    steps = saved["steps"]
    for position in (0, 1, 2, 5, 4, 3, 12, 11, len(steps) - 1, len(steps) - 3):
        scrub_to(page, position, steps[position])
        for index in (0, 1):
            result = page.evaluate(RECOUNT_JS, index)
            assert result["mismatches"] == 0, (position, index, result)
            assert result["cached"] == result["shown"]
    assert page.evaluate(RECOUNT_JS, 0)["fx"] > 1  # the 784-wide layer is drawn several per pixel
