"""A saved run replayed: reload, scrub, step, play, density map, input pixels, hover, palette.

What a panel shows is compared with the stored masks (GET /mask), pixel by pixel."""

import re

import pytest

from tests.browser.conftest import (
    PANEL_COUNTS_JS,
    pixel_counts,
    reveal_topology,
    screenshot,
    stored_mask,
    topology_frames,
)

pytestmark = pytest.mark.browser

# Two epochs, a rewire every 8 of their 124 steps: 16 stored rewires, every fourth a keyframe,
# as many as the scrubbing below visits (eight epochs showed nothing more, in four times the
# training).
CONFIG = {"name": "mnist replay", "task": "mnist", "hidden": [128, 64], "epochs": 2,
          "interval_steps": 8, "keyframe_every": 4, "density": 0.1}


@pytest.fixture(scope="module")
def saved(server):
    run = server.start_run(**CONFIG)
    server.wait(run["id"])
    frames = topology_frames(server.events(run["id"]))
    steps = sorted({frame["step"] for frame in frames})
    return {"id": run["id"], "frames": frames, "steps": steps, "server": server}


def stored_active(saved, layer_index: int, step: int) -> int:
    frame = [f for f in saved["frames"] if f["index"] == layer_index and f["step"] <= step][-1]
    return frame["active"]


def replay(page, saved):
    page.goto(f"{page.base_url}/#/run/{saved['id']}")
    page.wait_for_selector("#connection[data-state='ended']", timeout=60_000)
    page.wait_for_function("window.sparsescope.settled()")
    assert page.evaluate("window.sparsescope.model.steps") == saved["steps"]


def scrub_to(page, position: int, step: int) -> None:
    page.locator("#scrubber").fill(str(position))
    page.wait_for_function(f"document.querySelector('#heatmap-0').dataset.step === '{step}'")
    page.wait_for_function("window.sparsescope.settled()")


def test_replay_survives_reload(page, saved):
    replay(page, saved)
    assert page.locator("#status").get_attribute("data-status") == "completed"
    page.reload()
    page.wait_for_selector("#connection[data-state='ended']", timeout=60_000)
    assert page.evaluate("window.sparsescope.model.steps") == saved["steps"]
    # An ended run opens at its newest rewire, not following: there is nothing more to follow.
    page.wait_for_selector("#heatmap-0[data-step]", timeout=60_000)  # its first panel drawn
    assert page.locator("#heatmap-0").get_attribute("data-step") == str(saved["steps"][-1])
    assert page.locator("#live").get_attribute("aria-pressed") == "false"
    assert page.locator("#live").is_disabled()


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


def test_panels_show_the_stored_masks_pixel_by_pixel(page, saved):
    """Scrubbing forwards and back: every pixel's active count equals the stored mask's."""
    replay(page, saved)
    steps = saved["steps"]
    for position in (6, 0, 4, len(steps) - 1, 5):  # between keyframes, on one, and back
        scrub_to(page, position, steps[position])
        for index in (0, 1):
            shown = page.evaluate(PANEL_COUNTS_JS, index)
            assert shown["step"] == steps[position]
            mask = stored_mask(saved["server"], saved["id"], index, steps[position])
            expected = pixel_counts(mask, shown["gr"], shown["gc"])
            assert shown["active"] == expected.ravel().tolist(), (position, index)
    # The 784-wide first layer is drawn several connections per pixel, the panel no wider.
    assert page.evaluate(PANEL_COUNTS_JS, 0)["exact"] is False


def test_a_rewire_shows_its_net_changes(page, saved):
    """Added and removed at a rewire (a keyframe one included) are the difference of the stored
    masks before and at it."""
    replay(page, saved)
    layer0 = [f for f in saved["frames"] if f["index"] == 0]
    keyframe_position = next(i for i, f in enumerate(layer0) if i > 0 and f["keyframe"])
    steps = saved["steps"]
    for position in (keyframe_position, keyframe_position + 1):
        scrub_to(page, position, steps[position])
        shown = page.evaluate(PANEL_COUNTS_JS, 0)
        before = stored_mask(saved["server"], saved["id"], 0, steps[position - 1])
        after = stored_mask(saved["server"], saved["id"], 0, steps[position])
        assert shown["added"] == int((after & ~before).sum()) > 0
        assert shown["removed"] == int((before & ~after).sum()) > 0


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
    page.wait_for_function("(document.querySelector('#chart-loss').layout?.shapes || [])"
                           f".some(shape => shape.x0 === {steps[middle]})")
    reveal_topology(page)
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


def test_the_first_layers_hover_names_image_pixels_in_a_tooltip_on_screen(page, saved):
    """Issue 28: hovering the first layer of an MLP on 28×28 images named "in 389–391"; now
    its inputs are named by pixel row and column, in a tooltip beside the pointer that stays
    inside the window (the caption under the plot is off screen when the panel's bottom is)."""
    page.goto(f"{page.base_url}/#/run/{saved['id']}")
    page.wait_for_function("document.querySelector('#heatmap-0')?.dataset.step", timeout=60_000)
    page.wait_for_selector("#input-view[data-step]", timeout=30_000)  # the run's image shape
    page.set_viewport_size({"width": 1400, "height": 500})
    plot = page.locator("#heatmap-0")
    plot.scroll_into_view_if_needed()
    box = plot.bounding_box()
    # Low in the plot area and near its right edge: where a tooltip must flip and shift.
    page.mouse.move(box["x"] + box["width"] * 0.85, min(box["y"] + box["height"] * 0.8, 495))
    tip = page.locator("#panel-tooltip:not([hidden])")
    tip.wait_for(timeout=15_000)
    assert tip.get_attribute("data-layer") == plot.get_attribute("data-layer")
    text = tip.text_content()
    assert re.search(r"in \d+(–\d+)? \(pixels? row \d+, col \d+", text), text
    readout = plot.locator("xpath=ancestor::figure").locator(".readout")
    assert readout.text_content() == text
    inside = tip.bounding_box()
    assert inside["x"] >= 0 and inside["y"] >= 0
    assert inside["x"] + inside["width"] <= 1400 and inside["y"] + inside["height"] <= 500
    page.mouse.move(0, 0)
    page.wait_for_function("!document.querySelector('#panel-tooltip:not([hidden])')")
