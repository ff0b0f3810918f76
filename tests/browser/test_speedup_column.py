"""The layer table's "speedup b1 / b16" and "to structure" columns (issue 25 item 4): they show
what GET /speedup answers for the player's step, and follow the scrubber."""

from __future__ import annotations

import re

from tests.browser.conftest import screenshot, scrub

CELLS = ("[...document.querySelectorAll('#layer-overview-table tbody tr')].map(r => ["
         "r.cells[5].dataset.b1, r.cells[5].dataset.b16, r.cells[6].dataset.fanIn,"
         " r.cells[6].dataset.twoFour, r.cells[5].textContent, r.cells[6].textContent])")


def shown_step(page) -> str:
    return page.locator("#layer-overview-table").get_attribute("data-speedup-step")


def test_the_speedup_column_shows_the_api_and_follows_the_scrubber(page, server):
    run = server.start_run(method="rigl", epochs=2, hidden=[1024, 1024], density=0.05, interval_steps=5,
                           name="what this mask would buy")
    server.wait(run["id"])
    steps = server.http.get(f"/api/runs/{run['id']}/rewires").json()["steps"]
    assert len(steps) >= 3
    page.goto(f"{server.url}/#/run/{run['id']}")
    # The first answer waits for the server's cost table (measured once, a few seconds; on a
    # busy machine the cells say "measuring…" and ask again after Retry-After).
    page.wait_for_function(
        f"document.querySelector('#layer-overview-table')?.dataset.speedupStep === '{steps[-1]}'",
        timeout=120_000)

    def check(step: int) -> None:
        page.wait_for_function(
            f"document.querySelector('#layer-overview-table').dataset.speedupStep === '{step}'",
            timeout=60_000)
        answer = server.http.get(f"/api/runs/{run['id']}/speedup", params={"step": step}).json()
        shown = page.evaluate(CELLS)
        assert len(shown) == len(answer["layers"])
        for (b1, b16, fan_in, two_four, speed_text, structure_text), layer in zip(
                shown, answer["layers"], strict=True):
            assert float(b1) == layer["speedups"]["1"]["speedup"]
            assert float(b16) == layer["speedups"]["16"]["speedup"]
            assert float(fan_in) == layer["to_constant_fan_in"]
            assert float(two_four) == layer["to_2_4"]
            assert "×" in speed_text and layer["speedups"]["16"]["best"] in speed_text
            fan_in_text, two_four_text = re.fullmatch(r"fan-in ([\d.]+)%2:4 ([\d.]+)%\*?",
                                                      structure_text).groups()
            assert abs(float(fan_in_text) - 100 * layer["to_constant_fan_in"]) <= 0.5
            assert abs(float(two_four_text) - 100 * layer["to_2_4"]) <= 0.5
        footer = page.locator("#layer-overview-table tfoot td").nth(1)
        assert float(footer.get_attribute("data-b16")) == answer["model"]["speedup_b16"]

    check(steps[-1])
    screenshot(page, "speedup-column.png")
    scrub(page, 0)
    check(steps[0])
    scrub(page, len(steps) // 2)
    check(steps[len(steps) // 2])
    # Many moves in a row: only the settled step is asked for.
    asked = []
    page.on("request", lambda request: "/speedup?" in request.url and asked.append(request.url))
    for position in range(len(steps)):
        scrub(page, position)
    check(steps[-1])
    assert 1 <= len(asked) <= 2, asked



def test_the_speedup_chart_draws_the_series(page, server):
    run = server.start_run(method="set", epochs=2, hidden=[128], density=0.2, interval_steps=10,
                           name="speedup over time")
    server.wait(run["id"])
    page.goto(f"{server.url}/#/run/{run['id']}")
    page.wait_for_function("document.querySelector('#chart-speedup')?.data?.[0]?.x?.length > 0",
                           timeout=120_000)
    series = server.http.get(f"/api/runs/{run['id']}/speedup/series",
                             params={"points": 60}).json()
    drawn = page.evaluate("document.querySelector('#chart-speedup').data.map(t => [t.name, t.x, t.y])")
    assert [name for name, _, _ in drawn] == ["speedup b1", "speedup b16", "to constant fan-in",
                                              "to 2:4"]
    assert all(x == series["step"] for _, x, _ in drawn)
    assert drawn[1][2] == series["model"]["speedup_b16"]
    assert drawn[3][2] == [100 * value for value in series["model"]["to_2_4"]]
