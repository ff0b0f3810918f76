"""Mask overlap in Compare (the Jaccard matrix at the scrubber's step, each pair over time, only
layers every run has with the same shape) and churn in the run view's topology section (toggle
distribution, flip rate, churn map), checked against what the API answers."""

import base64

import numpy as np
import pytest

from tests.browser.conftest import scrub, section_screenshot

pytestmark = pytest.mark.browser

# Two seeds of SET and two of RigL on one architecture, one that shares only its first layer's
# shape, one sharing none.
BASE = {"task": "synthetic", "hidden": [32, 32], "epochs": 6, "interval_steps": 20, "density": 0.2}
LIVE = {"task": "synthetic", "hidden": [32, 32], "epochs": 5000, "interval_steps": 5}


@pytest.fixture(scope="module")
def runs(server):
    started = {
        "seed 0": server.start_run(name="seed 0", seed=0, **BASE),
        "seed 1": server.start_run(name="seed 1", seed=1, **BASE),
        "rigl 0": server.start_run(name="rigl 0", seed=0, method="rigl", **BASE),
        "rigl 1": server.start_run(name="rigl 1", seed=1, method="rigl", **BASE),
        "narrow": server.start_run(name="narrow", **{**BASE, "hidden": [32, 16]}),
        "other": server.start_run(name="other", **{**BASE, "hidden": [16]}),
    }
    out = {"server": server}
    for name, run in started.items():
        server.wait(run["id"])
        rewires = server.http.get(f"/api/runs/{run['id']}/rewires").json()
        out[name] = {"id": run["id"], "steps": rewires["steps"], "layers": rewires["layers"]}
    return out


def overlap(server, ids, layer, step=None):
    params = {"runs": ",".join(ids), "layer": layer, **({} if step is None else {"step": step})}
    response = server.http.get("/api/compare/overlap", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def matrix_shown(page, step: int) -> None:
    page.wait_for_function(f"document.querySelector('#compare-overlap').dataset.step === '{step}'",
                           timeout=30_000)


def matrix(page) -> dict:
    return page.evaluate("(() => { const t = document.querySelector('#compare-overlap-matrix').data[0];"
                         " return { z: t.z, text: t.text }; })()")


def test_compare_overlap_follows_the_scrubber(page, runs):
    server = runs["server"]
    names = ["seed 0", "seed 1", "rigl 0", "rigl 1"]
    ids = [runs[name]["id"] for name in names]
    steps = sorted(set().union(*(runs[name]["steps"] for name in names)))
    assert len(steps) >= 4
    page.goto(f"{page.base_url}/#/compare/{','.join(ids)}")
    page.wait_for_selector("#compare-overlap .topology-controls")
    page.locator("#compare-overlap").scroll_into_view_if_needed()
    matrix_shown(page, steps[-1])
    # Same architecture: every layer offered, none left out.
    options = page.eval_on_selector_all("#compare-overlap-layer option", "os => os.map(o => o.textContent)")
    layers = runs["seed 0"]["layers"]
    assert len(options) == len(layers)
    assert page.locator("#compare-overlap-note").text_content() == ""
    for position in (len(steps) - 1, 1, len(steps) // 2):
        scrub(page, position, "#compare-scrubber")
        matrix_shown(page, steps[position])
        stored = overlap(server, ids, 0, steps[position])
        shown = matrix(page)
        assert shown["z"] == stored["jaccard"]
        assert [shown["z"][i][i] for i in range(4)] == [1, 1, 1, 1]
        assert f"{stored['shared'][0][1]} connections shared" in shown["text"][0][1]
        random = f"{stored['random_jaccard'][0][1]:.3f}"
        assert f"random masks of these densities: {random}" in shown["text"][0][1]
        caption = page.locator("#compare-overlap-matrix-caption").text_content()
        assert f"at rewire {stored['rewires'][0]} (step {stored['steps'][0]})" in caption
    # Each pair over the run, its random expectation dashed.
    series = server.http.get("/api/compare/overlap/series",
                             params={"runs": ",".join(ids), "layer": 0, "points": 64}).json()
    assert len(series["pairs"]) == 6
    page.wait_for_function("document.querySelector('#compare-overlap-series').data?.length === 12")
    traces = page.evaluate("document.querySelector('#compare-overlap-series').data.map(t =>"
                           " ({ name: t.name, x: Array.from(t.x), y: Array.from(t.y), dash: t.line.dash }))")
    for pair, (i, j) in enumerate(series["pairs"]):
        line, random_line = traces[2 * pair], traces[2 * pair + 1]
        assert line["name"] == f"{names[i]} – {names[j]}"
        assert line["x"] == series["steps"] and line["y"] == series["jaccard"][pair]
        assert random_line["y"] == series["random_jaccard"][pair] and random_line["dash"] == "dash"
    # Another layer: asked by the picker, drawn at the same step.
    page.select_option("#compare-overlap-layer", "1")
    page.wait_for_function("document.querySelector('#compare-overlap').dataset.layer === '1'")
    stored = overlap(server, ids, 1, steps[len(steps) // 2])
    page.wait_for_function(f"document.querySelector('#compare-overlap-matrix').data[0].z[0][1] === "
                           f"{stored['jaccard'][0][1]}")
    page.select_option("#compare-overlap-layer", "0")
    matrix_shown(page, steps[len(steps) // 2])
    section_screenshot(page, "#compare-overlap", "compare-overlap.png")


def test_compare_offers_only_layers_of_the_same_shape(page, runs):
    wide, narrow, other = runs["seed 0"], runs["narrow"], runs["other"]
    # [32, 32] and [32, 16]: only the first layer has the same shape in both.
    page.goto(f"{page.base_url}/#/compare/{wide['id']},{narrow['id']}")
    page.wait_for_selector("#compare-overlap-layer option", state="attached")
    options = page.eval_on_selector_all("#compare-overlap-layer option", "os => os.map(o => o.textContent)")
    first = wide["layers"][0]
    assert options == [f"0: {first['name']} ({first['shape'][0]}×{first['shape'][1]})"]
    total = len(wide["layers"])
    assert page.locator("#compare-overlap-note").text_content() == \
        f"{total - 1} of {total} layers left out: their shapes differ between the runs"
    page.locator("#compare-overlap").scroll_into_view_if_needed()
    matrix_shown(page, max(wide["steps"][-1], narrow["steps"][-1]))
    # [32, 32] and [16]: none; said, and nothing asked of the server.
    asked = []
    page.on("request", lambda request: "/api/compare/" in request.url and asked.append(request.url))
    page.goto(f"{page.base_url}/#/compare/{wide['id']},{other['id']}")
    page.wait_for_selector("#compare-overlap-none:not([hidden])")
    assert "No layer has the same shape in every compared run" in \
        page.locator("#compare-overlap-none").text_content()
    assert page.locator("#compare-overlap .charts").is_hidden()
    assert page.locator("#compare-overlap-layer").is_disabled()
    page.wait_for_timeout(500)
    assert asked == []


def test_compare_overlap_says_a_refusal_in_place(page, runs):
    """A 422 from the server (here made up by the test) is its detail, where the matrix was."""
    ids = [runs["seed 0"]["id"], runs["seed 1"]["id"]]
    page.expected_statuses.add(422)
    page.route(lambda url: "/api/compare/overlap?" in url, lambda route: route.fulfill(
        status=422, content_type="application/json",
        body='{"detail": "layer 0 has shape [32, 20] in one run and [32, 21] in another"}'))
    page.goto(f"{page.base_url}/#/compare/{','.join(ids)}")
    page.locator("#compare-overlap").scroll_into_view_if_needed()
    page.wait_for_selector("#compare-overlap-matrix[data-error]", state="attached")
    assert page.locator("#compare-overlap-matrix").is_hidden()
    assert page.locator("#compare-overlap-matrix-caption").text_content() == \
        "Mask overlap: layer 0 has shape [32, 20] in one run and [32, 21] in another"
    # The curves over time come from another endpoint and are drawn all the same.
    page.wait_for_function("document.querySelector('#compare-overlap-series').data?.length === 2")


def churn_shown(page, step: int) -> None:
    page.wait_for_function(f"document.querySelector('#topology-churn').dataset.step === '{step}'",
                           timeout=30_000)


def test_topology_churn_follows_the_scrubber(page, runs):
    server, run = runs["server"], runs["seed 0"]
    steps = run["steps"]
    asked = []
    page.on("request", lambda request: "/churn?" in request.url and asked.append(request.url))
    page.goto(f"{page.base_url}/#/run/{run['id']}")
    page.wait_for_selector("#connection[data-state='ended']", timeout=60_000)
    assert asked == []  # off screen: nothing asked
    page.locator("#topology-churn").scroll_into_view_if_needed()
    churn_shown(page, steps[-1])
    assert page.evaluate("document.querySelector('#topology-toggles').layout.yaxis.type") == "log"
    for position in (len(steps) - 1, 2, len(steps) // 2):
        scrub(page, position)
        churn_shown(page, steps[position])
        url = [u for u in asked if f"step={steps[position]}&" in u][-1]
        stored = server.http.get(url[url.index("/api/"):]).json()
        assert stored["rewire"] == position
        toggles = page.evaluate("(() => { const t = document.querySelector('#topology-toggles').data[0];"
                                " return [Array.from(t.x), Array.from(t.y)]; })()")
        assert [list(pair) for pair in zip(*toggles, strict=True)] == stored["toggles"]
        flips = page.evaluate("(() => { const t = document.querySelector('#topology-flip-rate').data[0];"
                              " return [Array.from(t.x), Array.from(t.y)]; })()")
        assert flips == [stored["flip_steps"], [share for _, share in stored["flip_rate"]]]
        page.wait_for_function("(document.querySelector('#topology-flip-rate').layout?.shapes || [])"
                               f".some(shape => shape.x0 === {steps[position]})")
        grid = stored["view"]["grid"]
        toggled = np.frombuffer(base64.b64decode(stored["view"]["toggles"]), "<u4").reshape(grid)
        possible = np.frombuffer(base64.b64decode(stored["view"]["possible"]), "<u4").reshape(grid)
        expected = [[None if p == 0 else t / p for t, p in zip(row_t, row_p, strict=True)]
                    for row_t, row_p in zip(toggled.tolist(), possible.tolist(), strict=True)]
        assert page.evaluate("document.querySelector('#topology-churn-map').data[0].z") == expected
        assert page.locator("#topology-churn").get_attribute("data-rewire") == str(position)
        assert f"to rewire {position} (step {steps[position]})" in \
            page.locator("#topology-churn-stats").text_content()
    page.select_option("#topology-churn-scale", "linear")
    page.wait_for_function("document.querySelector('#topology-toggles').layout.yaxis.type === 'linear'")
    page.select_option("#topology-churn-scale", "log")
    page.wait_for_function("document.querySelector('#topology-toggles').layout.yaxis.type === 'log'")
    section_screenshot(page, "#topology-churn", "topology-churn.png")


def test_topology_churn_follows_a_live_run(page, server):
    run = server.start_run(name="churn live", **LIVE)
    try:
        page.goto(f"{page.base_url}/#/run/{run['id']}")
        page.wait_for_selector("#topology-churn")
        page.locator("#topology-churn").scroll_into_view_if_needed()
        shown = ("(after) => { const step = Number(document.querySelector('#topology-churn')"
                 ".dataset.step); return step > after ? step : false; }")
        first = page.wait_for_function(shown, arg=0, timeout=60_000).json_value()
        later = page.wait_for_function(shown, arg=first, timeout=60_000).json_value()
        assert later > first
        assert page.locator("#live").get_attribute("aria-pressed") == "true"
        points = page.evaluate("document.querySelector('#topology-flip-rate').data[0].x.length")
        assert points >= 2
    finally:
        server.http.post(f"/api/runs/{run['id']}/stop")
        server.wait(run["id"], timeout_s=30)
