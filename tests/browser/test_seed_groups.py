"""Issue 28 item 4, seed groups: Compare offers to draw runs that differ only in `seed` as their
mean with a ±1 s.d. band (in the group's first run's colour, its legend group), leaving the
other runs as their own lines; unticked, every run is a line again."""

from __future__ import annotations

import statistics

from tests.browser.conftest import screenshot

LOSSES = {0: [2.0, 1.5, 1.0], 1: [2.2, 1.3, 0.8], 2: [1.8, 1.6, 0.9]}
STEPS = [10, 20, 30]


def _run(server, name: str, config: dict, losses: list[float]) -> str:
    created = server.http.post("/api/ingest/runs", json={"name": name, "config": config}).json()
    seq = created["next_seq"]
    events = [{"seq": seq + i, "step": step, "type": "metrics", "loss": loss}
              for i, (step, loss) in enumerate(zip(STEPS, losses, strict=True))]
    events.append({"seq": seq + len(events), "step": STEPS[-1], "type": "status",
                   "status": "completed"})
    answer = server.http.post(f"/api/ingest/runs/{created['id']}/events",
                              json={"events": events, "summary": {"steps": STEPS[-1]}})
    assert answer.status_code == 200, answer.text
    return created["id"]


TRACES = """(() => document.querySelector('#compare-chart-train_loss_running').data.map((trace) => ({
  name: trace.name, group: trace.legendgroup, x: Array.from(trace.x), y: Array.from(trace.y),
  band: Boolean(trace.meta && trace.meta.band), colour: trace.line && trace.line.color })))()"""


def test_runs_that_differ_only_in_seed_draw_as_mean_and_band(page, server):
    seeds = [_run(server, f"seeded {seed}", {"method": "rigl", "lr": 0.1, "seed": seed},
                  LOSSES[seed]) for seed in (0, 1, 2)]
    other = _run(server, "other method", {"method": "set", "lr": 0.1, "seed": 0}, [2.1, 1.9, 1.7])
    page.goto(f"{server.url}/#/compare/{','.join([*seeds, other])}")
    label = page.locator("#compare-groups")
    label.wait_for()
    assert "3 runs that differ only in seed" in label.text_content()
    page.wait_for_function("document.querySelector('#compare-chart-train_loss_running')?.data?.length === 4")
    page.locator("#compare-group-seeds").check()
    page.wait_for_function("document.querySelector('#compare-chart-train_loss_running')?.data?.length === 3")
    traces = page.evaluate(TRACES)
    band, mean, single = traces
    assert band["band"] and band["group"] == mean["group"] == seeds[0]
    assert band["colour"] == mean["colour"]
    assert single["group"] == other and single["name"] == "other method"
    assert mean["x"] == STEPS
    expected_mean = [statistics.mean(LOSSES[seed][i] for seed in LOSSES) for i in range(3)]
    expected_sd = [statistics.stdev(LOSSES[seed][i] for seed in LOSSES) for i in range(3)]
    for got, want in zip(mean["y"], expected_mean, strict=True):
        assert abs(got - want) < 1e-12
    upper = band["y"][:3]
    lower = band["y"][3:][::-1]
    for i in range(3):
        assert abs(upper[i] - (expected_mean[i] + expected_sd[i])) < 1e-12
        assert abs(lower[i] - (expected_mean[i] - expected_sd[i])) < 1e-12
    assert "mean of 3 seeds" in mean["name"]
    screenshot(page, "compare-seed-groups.png")
    page.locator("#compare-group-seeds").uncheck()
    page.wait_for_function("document.querySelector('#compare-chart-train_loss_running')?.data?.length === 4")


def test_no_group_is_offered_when_runs_differ_in_more_than_seed(page, server):
    first = _run(server, "lr a", {"method": "rigl", "lr": 0.1, "seed": 0}, LOSSES[0])
    second = _run(server, "lr b", {"method": "rigl", "lr": 0.2, "seed": 1}, LOSSES[1])
    page.goto(f"{server.url}/#/compare/{first},{second}")
    page.wait_for_function("document.querySelector('#compare-chart-train_loss_running')?.data?.length === 2")
    assert page.locator("#compare-groups").is_hidden()
