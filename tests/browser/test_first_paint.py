"""A run opened cold from a link paints its panels without waiting for the charting library:
the plotly.js bundle is held back by the test until the first panel shows its rewire, then let
through, and the Plotly plots take over. The link's open asks for nothing the run view does not
show (no OpenAPI schema), and a second open is served from the HTTP cache."""

import re

import pytest

from bench.dashboard_scale import record_mlp
from tests.browser.conftest import Server, page_error

pytestmark = pytest.mark.browser

BUNDLE = re.compile(r".*/assets/[0-9a-f]{12}/vendor/plotly-cartesian\.min\.js$")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("first-paint")


@pytest.fixture(scope="module")
def run_id(data_dir):
    return record_mlp(data_dir, steps=6, name="first paint")


@pytest.fixture(scope="module")
def server(data_dir, run_id):
    instance = Server(data_dir)
    yield instance
    instance.close()


@pytest.fixture
def cold(browser):
    """A context with an empty HTTP cache, its console watched."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
    context.errors = []
    context.requests = []
    context.on("request", lambda request: context.requests.append(request.url))
    yield context
    errors = list(context.errors)
    context.close()
    assert errors == [], errors


def watched(context):
    page = context.new_page()
    page.on("console", lambda message: message.type == "error" and context.errors.append(message.text))
    page.on("pageerror", lambda error: context.errors.append(page_error(error)))
    return page


def test_panels_paint_before_the_chart_bundle_arrives(cold, server, run_id):
    held = []
    cold.route(BUNDLE, lambda route: held.append(route))  # answered only when the test says so
    page = watched(cold)
    page.goto(f"{server.url}/#/run/{run_id}")
    page.wait_for_function("document.querySelector('#heatmap-0')?.dataset.step", timeout=60_000)
    assert page.evaluate("typeof window.Plotly") == "undefined"
    preview = page.locator("#heatmap-0 .panel-preview")
    assert preview.is_visible()
    assert page.evaluate("document.querySelector('#heatmap-0 .panel-preview').width") > 0
    steps = server.http.get(f"/api/runs/{run_id}/rewires").json()["steps"]
    assert page.locator("#heatmap-0").get_attribute("data-step") == str(steps[-1])
    # The picture answers hover before the library is there, in the same words as after.
    box = preview.bounding_box()
    page.mouse.move(box["x"] + 3, box["y"] + 3)
    readout = page.locator("#heatmap-0").locator("xpath=..").locator(".readout")
    page.wait_for_function("(el) => /^out \\d+.*, in \\d+/.test(el.textContent)",
                           arg=readout.element_handle())
    assert readout.get_attribute("data-state") in {"inactive", "kept", "added", "removed"}
    assert not any(url.endswith("/openapi.json") for url in cold.requests)  # the form's, not the run's
    # The charts ask for the bundle (once) after that paint; let it through: the Plotly plot
    # replaces the preview and the charts draw.
    deadline = 200
    while not held and deadline:
        page.wait_for_timeout(100)
        deadline -= 1
    assert len(held) == 1
    held[0].continue_()
    page.wait_for_selector("#heatmap-0 .imagelayer image", timeout=60_000)
    assert page.locator("#heatmap-0 .panel-preview").count() == 0
    page.wait_for_function("document.querySelector('#chart-loss').data?.length > 0", timeout=60_000)
    assert page.locator("#heatmap-0").get_attribute("data-step") == str(steps[-1])


def test_a_second_open_comes_from_the_cache(cold, server, run_id):
    first = watched(cold)
    first.goto(f"{server.url}/#/run/{run_id}")
    first.wait_for_function("document.querySelector('#chart-loss').data?.length > 0", timeout=60_000)
    first.close()
    page = watched(cold)
    network = cold.new_cdp_session(page)
    network.send("Network.enable")
    answers = []
    network.on("Network.responseReceived", lambda event: answers.append(event["response"]))
    page.goto(f"{server.url}/#/run/{run_id}")
    page.wait_for_function("document.querySelector('#chart-loss').data?.length > 0", timeout=60_000)
    assets = [answer for answer in answers if "/assets/" in answer["url"]]
    assert any(BUNDLE.match(answer["url"]) for answer in assets)
    # The page's code, its styles and plotly.js (the page loads the modules as one file).
    assert {re.sub(r"^.*/assets/[0-9a-f]{12}/", "", answer["url"]) for answer in assets} >= {
        "js/bundle.js", "css/style.css", "vendor/plotly-cartesian.min.js"}
    # Every one from the browser's cache: no request for them reaches the server.
    fetched = [answer["url"] for answer in assets
               if not (answer.get("fromDiskCache") or answer.get("fromMemoryCache"))]
    assert fetched == [], fetched


def test_the_form_asks_for_the_schema_when_shown(cold, server):
    page = watched(cold)
    page.goto(f"{server.url}/#/runs")
    page.wait_for_selector("#runs-table")
    page.wait_for_timeout(300)
    assert not any(url.endswith("/openapi.json") for url in cold.requests)
    page.click("#tab-new")
    page.wait_for_selector("#field-lr", timeout=30_000)
    assert sum(url.endswith("/openapi.json") for url in cold.requests) == 1


def test_inline_views_of_one_page_draw_their_charts_after_every_view_painted(cold, server, run_id):
    """Three inline views in one notebook-like page (frames, as `sparsescope.show()` renders
    them): each paints its panels, and none asks for its series (the charts' data) or its
    speedup cells before every view's panels are painted (or its wait ran out), so the last
    view's panels do not queue behind the first ones' charts."""
    views = "".join(f'<iframe src="{server.url}/#/run/{run_id}" style="width:1200px;height:800px">'
                    '</iframe>' for _ in range(3))
    cold.route(f"{server.url}/notebook.html", lambda route: route.fulfill(
        status=200, content_type="text/html", body=f"<!doctype html><body>{views}</body>"))
    page = watched(cold)
    page.set_viewport_size({"width": 1300, "height": 2600})  # all three on screen at once
    page.goto(f"{server.url}/notebook.html")
    frames = [element.content_frame() for element in page.query_selector_all("iframe")]
    assert len(frames) == 3
    for frame in frames:
        frame.wait_for_function("window.sparsescope?.firstPanelAt", timeout=60_000)
        frame.wait_for_function("window.sparsescope.inline.done && "
                                "performance.getEntriesByType('resource').some("
                                "(entry) => entry.name.includes('/metrics?'))", timeout=60_000)
    found = [frame.evaluate("""() => ({
        origin: performance.timeOrigin,
        painted: performance.timeOrigin + window.sparsescope.firstPanelAt,
        inline: window.sparsescope.inline,
        later: performance.getEntriesByType('resource')
          .filter((entry) => /\\/(metrics|rewire-series|speedup)\\?/.test(entry.name))
          .map((entry) => performance.timeOrigin + entry.startTime),
    })""") for frame in frames]
    last_painted = max(view["painted"] for view in found)
    for view in found:
        assert view["inline"] == {"opened": True, "done": True, "waitingFor": 0}
        assert view["later"]
        # MAX_WAIT_MS (4 s) after the view opened (after its navigation began) it stops waiting.
        released = min(last_painted, view["origin"] + 4000)
        assert min(view["later"]) >= released - 1, (view, last_painted)
