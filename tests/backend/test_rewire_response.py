"""`GET /api/runs/{id}/rewire-response`: the mean of a logged metric over the window before and
after each rewire, checked against means computed by hand on a recorded run; its window edges,
its 422s and stored rows that are not numbers."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from dst_core import SparseDriver
from dst_core.recording import Recorder

STEPS = 20
INTERVAL = 4


def loss_at(step: int) -> float:
    """A known, uneven loss per step, so every window has its own mean."""
    return round(3.0 - 0.1 * step + 0.37 * ((step * 7) % 5), 6)


def record(data_dir, *, skip=()) -> str:
    """A tiny sparse MLP trained STEPS steps, rewired every INTERVAL steps, with `loss_at(step)`
    logged at every step (except `skip`) as `loss`."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    driver = SparseDriver(model, optimizer, method="set", density=0.5, total_steps=STEPS,
                          interval_steps=INTERVAL, end_fraction=1.0, distribution="uniform",
                          first_layer_dense=False)
    inputs = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(2))
    with Recorder(data_dir, name="known loss", heartbeat_s=0) as recorder:
        recorder.attach(driver)
        for step in range(1, STEPS + 1):
            nn.functional.cross_entropy(model(inputs), targets).backward()
            driver.step()
            optimizer.zero_grad()
            if step not in skip:
                recorder.log(step, loss=loss_at(step), other=-1.0)
    return recorder.run_id


def rewire_steps(store, run_id: str) -> list[int]:
    return [row[0] for row in store.db.execute(
        "SELECT step FROM events WHERE run_id = ? AND type = 'rewire' ORDER BY seq", (run_id,))]


def by_hand(points: dict[int, list[float]], rewires: list[int], window: int) -> list[dict]:
    """The answer, computed the plain way: loop over rewires, then over steps."""
    first, last = min(points), max(points)
    answer = []
    for number, step in enumerate(rewires, start=1):
        before = [v for s in range(step - window + 1, step + 1) for v in points.get(s, [])]
        after = [v for s in range(step + 1, step + window + 1) for v in points.get(s, [])]
        if step - window + 1 < first or step + window > last or not before or not after:
            continue
        mean_before, mean_after = sum(before) / len(before), sum(after) / len(after)
        answer.append({"rewire": number, "step": step, "before": mean_before,
                       "after": mean_after, "change": mean_after - mean_before})
    return answer


def get(client, run_id: str, **params):
    return client.get(f"/api/runs/{run_id}/rewire-response", params=params)


def assert_same(answer: list[dict], expected: list[dict]) -> None:
    assert [(row["rewire"], row["step"]) for row in answer] == \
        [(row["rewire"], row["step"]) for row in expected]
    for got, want in zip(answer, expected, strict=True):
        for key in ("before", "after", "change"):
            assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("window", [1, 2, 3, INTERVAL, 7])
def test_equals_the_means_computed_by_hand(client, window):
    store = client.app.state.store
    run_id = record(store.data_dir)
    rewires = rewire_steps(store, run_id)
    assert rewires == list(range(INTERVAL, STEPS, INTERVAL))  # 4, 8, 12, 16: numbered 1..4
    response = get(client, run_id, window=window, metric="loss")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["window"] == window and body["metric"] == "loss"
    points = {step: [loss_at(step)] for step in range(1, STEPS + 1)}
    expected = by_hand(points, rewires, window)
    assert expected  # the test checks something
    assert_same(body["rewires"], expected)


def test_window_edges(client):
    store = client.app.state.store
    run_id = record(store.data_dir)
    # Window 4 at rewire 1 (step 4) needs steps 1..4 and 5..8: just inside the logged 1..20.
    first = get(client, run_id, window=4).json()["rewires"][0]  # metric defaults to loss
    assert first["rewire"] == 1 and first["step"] == 4
    assert first["before"] == pytest.approx(sum(map(loss_at, range(1, 5))) / 4)
    assert first["after"] == pytest.approx(sum(map(loss_at, range(5, 9))) / 4)
    # Window 5 reaches step 0 before rewire 1 (nothing logged there): left out; rewire 4 at
    # step 16 needs 17..21, past the last logged step 20: left out too.
    assert [row["rewire"] for row in get(client, run_id, window=5).json()["rewires"]] == [2, 3]
    # Window 8: only rewire 2 (step 8: 1..8, 9..16) and rewire 3 (step 12: 5..12, 13..20).
    assert [row["rewire"] for row in get(client, run_id, window=8).json()["rewires"]] == [2, 3]
    assert get(client, run_id, window=9).json()["rewires"] == []
    assert get(client, run_id, window=10_000).json()["rewires"] == []


def test_a_window_with_nothing_logged_is_left_out(client):
    """Steps 9..12 never logged: with window 4 rewire 2 (step 8) has no value after it (window 5
    reaches step 13: it has); with window 3 rewire 3 (step 12) has none before it."""
    store = client.app.state.store
    run_id = record(store.data_dir, skip={9, 10, 11, 12})
    rewires = rewire_steps(store, run_id)
    points = {step: [loss_at(step)] for step in range(1, STEPS + 1) if step not in range(9, 13)}
    for window in (3, 4, 5):
        answer = get(client, run_id, window=window).json()["rewires"]
        assert_same(answer, by_hand(points, rewires, window))
    assert 2 not in [row["rewire"] for row in get(client, run_id, window=4).json()["rewires"]]
    assert 3 not in [row["rewire"] for row in get(client, run_id, window=3).json()["rewires"]]


def test_an_unknown_metric_and_a_run_without_rewires_answer_no_rewires(client):
    store = client.app.state.store
    run_id = record(store.data_dir)
    assert get(client, run_id, window=2, metric="accuracy").json() == \
        {"window": 2, "metric": "accuracy", "rewires": []}
    other = get(client, run_id, window=2, metric="other").json()["rewires"]
    assert other and all(row["change"] == 0 for row in other)  # a constant metric
    empty = store.create_run({}, "no rewires", status="running")["id"]
    store.append_events(empty, [("metrics", step, {"loss": 1.0}) for step in range(1, 5)])
    assert get(client, empty, window=1).json()["rewires"] == []


@pytest.mark.parametrize("params", [
    {"window": 0}, {"window": -1}, {"window": 10_001}, {"window": "two"}, {"window": 1.5},
    {"metric": ""}, {"metric": "x" * 65}, {"metric": "loss'"}, {"metric": 'a"b'},
    {"metric": "a b"}, {"metric": "$.loss[0]"}, {"metric": "los/s"},
])
def test_bad_parameters_are_422_naming_them(client, params):
    store = client.app.state.store
    run_id = store.create_run({}, "any", status="running")["id"]
    response = get(client, run_id, **{"window": 2, "metric": "loss", **params})
    assert response.status_code == 422, response.text
    named = {tuple(error["loc"])[-1] for error in response.json()["detail"]}
    assert named == set(params)


def test_names_with_dots_colons_and_dashes_are_metrics(client):
    store = client.app.state.store
    run_id = store.create_run({}, "names", status="running")["id"]
    name = "val.top-1:ema_2"
    store.append_events(run_id, [("metrics", step, {name: float(step)}) for step in range(1, 7)] +
                        [("rewire", 3, {"layers": {}})])
    answer = get(client, run_id, window=2, metric=name).json()["rewires"]
    assert answer == [{"rewire": 1, "step": 3, "before": 2.5, "after": 4.5, "change": 2.0}]
    assert get(client, "0" * 16, window=2).status_code == 404


def test_hostile_stored_rows_are_skipped_never_5xx(client):
    """Text, booleans, nulls, objects, overflowing numbers, NaN, unparseable payloads, a
    payload that is not an object and a step that is not an integer: none is a value."""
    store = client.app.state.store
    run_id = store.create_run({}, "hostile", status="running")["id"]
    store.append_events(run_id, [("metrics", step, {"loss": 1.0}) for step in range(1, 9)] +
                        [("rewire", 4, {"layers": {}}), ("rewire", 5, {})])
    db = store.db
    hostile = ['{"loss": "abc"}', '{"loss": true}', '{"loss": null}', '{"loss": {"a": 1}}',
               '{"loss": [1, 2]}', '{"loss": 1' + "0" * 400 + "}", '{"loss": -1e400}',
               '{"loss": NaN}', '{"loss": Infinity}', "not json", "[1, 2, 3]", '"loss"', "",
               '{"other": 5}', '{"loss": 1e308}']
    last = db.execute("SELECT MAX(seq) FROM events WHERE run_id = ?", (run_id,)).fetchone()[0]
    rows = [(run_id, last + 1 + offset, 3 + offset % 4, "metrics", payload, None, None, None)
            for offset, payload in enumerate(hostile)]
    rows.append((run_id, last + 100, "five", "metrics", '{"loss": 99.0}', None, None, None))
    rows.append((run_id, last + 101, 2.5, "rewire", "{}", None, None, None))
    rows.append((run_id, last + 102, 6, "rewire", "not json", None, None, None))
    db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.commit()
    response = get(client, run_id, window=2)
    assert response.status_code == 200, response.text
    for row in response.json()["rewires"]:  # 1e308 is a number: its windows' means are finite
        assert all(math.isfinite(row[key]) for key in ("before", "after", "change"))
    # Without the one huge value the answer is exact: every stored 1.0 and nothing else. The
    # rewire stored at step 2.5 keeps its number (3) but has no answer.
    db.execute("DELETE FROM events WHERE run_id = ? AND payload = '{\"loss\": 1e308}'", (run_id,))
    db.commit()
    answer = get(client, run_id, window=2).json()["rewires"]
    assert [(row["rewire"], row["step"]) for row in answer] == [(1, 4), (2, 5), (4, 6)]
    assert all((row["before"], row["after"], row["change"]) == (1.0, 1.0, 0.0) for row in answer)
    json.dumps(answer, allow_nan=False)
