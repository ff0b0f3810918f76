"""Issue 28 item 2: the form's plan says how long a run would train, from the steps/s that
earlier finished runs of the same task and model measured on this server (the median of the
newest five, the same method preferred); a config nothing was measured for says why, and a
damaged stored row is no measurement."""

from __future__ import annotations

import sqlite3

import pytest

from dst_core.store.config import RunConfig


def _finished(store, seconds: float, steps: int, **config) -> str:
    stored = RunConfig(**config).model_dump()
    run_id = store.create_run(stored, "measured", status="running")["id"]
    store.update_summary(run_id, {"steps": steps})
    store.set_status(run_id, "completed")
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE runs SET started_at = 1000.0, ended_at = ? WHERE id = ?",
                   (1000.0 + seconds, run_id))
    return run_id


def test_the_plan_estimates_from_earlier_runs_of_the_task_and_model(client):
    store = client.app.state.store
    _finished(store, 10.0, 1000, task="digits", model="mlp", method="rigl")  # 100 steps/s
    _finished(store, 5.0, 1000, task="digits", model="mlp", method="rigl")  # 200 steps/s
    _finished(store, 4.0, 1000, task="digits", model="mlp", method="rigl")  # 250 steps/s
    _finished(store, 1.0, 1000, task="digits", model="mlp", method="set")  # another method
    _finished(store, 1.0, 1000, task="digits", model="cnn", method="rigl")  # another model
    plan = client.post("/api/runs/plan", json={"task": "digits", "model": "mlp",
                                               "method": "rigl"}).json()
    estimate = plan["estimate"]
    assert estimate["steps_per_s"] == pytest.approx(200.0)  # the median of the three
    assert estimate["seconds"] == pytest.approx(plan["total_steps"] / 200.0)
    assert estimate["runs"] == 3 and "of this method" in estimate["basis"]
    # Only runs of other methods: those are used, and said so.
    other = client.post("/api/runs/plan", json={"task": "digits", "model": "mlp",
                                                "method": "static"}).json()["estimate"]
    assert other["steps_per_s"] == pytest.approx((250.0 + 200.0) / 2)  # median of 1000, 250, 200, 100
    assert other["runs"] == 4 and "of other methods" in other["basis"]


def test_another_width_or_nothing_measured_gives_no_estimate_and_says_why(client):
    store = client.app.state.store
    _finished(store, 10.0, 1000, task="digits", model="mlp", hidden=[64, 64])
    wider = client.post("/api/runs/plan", json={"task": "digits", "model": "mlp",
                                                "hidden": [256, 256]}).json()["estimate"]
    assert wider["seconds"] is None and wider["runs"] == 0
    assert "no finished run of digits · mlp" in wider["basis"]
    fresh = client.post("/api/runs/plan", json={"task": "mnist"}).json()["estimate"]
    assert fresh["seconds"] is None


@pytest.mark.parametrize(("column", "value"), [("summary", "not json"), ("summary", '{"steps": -3}'),
                                               ("config", "[1]"), ("ended_at", "soon")])
def test_a_damaged_row_is_no_measurement(client, column, value):
    store = client.app.state.store
    good = _finished(store, 10.0, 1000, task="digits", model="mlp")
    bad = _finished(store, 1.0, 1000, task="digits", model="mlp")
    with sqlite3.connect(store.path) as db:
        db.execute(f"UPDATE runs SET {column} = ? WHERE id = ?", (value, bad))
    answer = client.post("/api/runs/plan", json={"task": "digits", "model": "mlp"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["estimate"]["steps_per_s"] == pytest.approx(100.0), good
