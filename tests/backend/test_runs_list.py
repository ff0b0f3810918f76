"""Issue 30, "bounded whatever is stored": the runs list is a projection and a page, metric
names are bounded per run, and `/metrics` answers a bounded set of series."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest

from dst_core.recording import Recorder
from dst_core.store import RunStore
from dst_core.store.run_store import MAX_METRIC_NAMES

MIB = 1024 * 1024


def _next(response) -> str | None:
    match = re.fullmatch(r'<([^>]*)>; rel="next"', response.headers.get("link", ""))
    return match.group(1) if match else None


def _ids(response) -> list[str]:
    return [run["id"] for run in response.json()]


# ---- the runs list ------------------------------------------------------------------------------
def test_fat_runs_are_listed_in_a_few_hundred_bytes_each(client):
    """16 runs whose config, info and summary are each ~4 MiB (the store's limit per document),
    their listed fields huge too: the list is a few hundred bytes a run (it was 12 MiB a run),
    the run itself whole."""
    store = client.app.state.store
    big = "x" * (4 * MIB - 100)
    config = json.dumps({"task": big, "method": "set", "hidden": list(range(400_000))[:1000],
                         "pad": big[:100]})
    info = json.dumps({"writer": big, "settings": {"model": big, "method": "rigl"}})
    summary = json.dumps({"steps": 7, "best_test_accuracy": 0.5, "pad": big})
    ids = [f"{index:016x}" for index in range(16)]
    with store._write() as db:
        db.executemany(
            "INSERT INTO runs (id, name, config, status, created_at, info, summary) "
            "VALUES (?, ?, ?, 'completed', ?, ?, ?)",
            [(run_id, "n" * 1000, config, 1000.0 + index, info, summary)
             for index, run_id in enumerate(ids)])
    listed = client.get("/api/runs")
    assert listed.status_code == 200
    assert len(listed.content) < 16 * 1024, len(listed.content)  # was 192 MiB
    runs = listed.json()
    assert [run["id"] for run in runs] == ids[::-1]
    first = runs[0]
    assert first["unreadable"] is None
    assert len(first["name"]) == 120 and first["name"].endswith("…")
    assert len(first["config"]["task"]) == 120 and first["config"]["method"] == "set"
    assert first["config"]["hidden"] == "…" and "pad" not in first["config"]
    assert first["settings"]["method"] == "rigl" and first["settings"]["model"].endswith("…")
    assert first["summary"]["steps"] == 7 and first["summary"]["best_test_accuracy"] == 0.5
    assert len(client.get(f"/api/runs/{ids[0]}").content) > 12 * 4 * MIB // 4  # the whole run


def test_pages_follow_the_link_and_stay_put_while_runs_are_added(client):
    store = client.app.state.store
    created = [store.create_run({"task": "digits" if index % 2 else "mnist", "method": "set"},
                                f"run {index}", status="completed")["id"] for index in range(7)]
    first = client.get("/api/runs?limit=3")
    assert first.status_code == 200 and first.headers["x-total-count"] == "7"
    assert _ids(first) == created[::-1][:3]  # newest first
    late = store.create_run({}, "added after the first page", status="completed")["id"]
    second = client.get(_next(first))
    assert _ids(second) == created[::-1][3:6]  # the cursor holds: nothing shifts or repeats
    assert second.headers["x-total-count"] == "8"
    third = client.get(_next(second))
    assert _ids(third) == created[:1] and _next(third) is None
    assert _ids(client.get("/api/runs"))[0] == late  # a new run is on the first page
    assert client.get("/api/runs?limit=500").status_code == 200


@pytest.mark.parametrize("query, field", [
    ("limit=501", "limit"), ("limit=0", "limit"), ("cursor=%21%21", "cursor"),
    ("cursor=" + "W1siYSJdXQ", "cursor"), ("status=exploded", "status"), ("q=" + "x" * 101, "q"),
])
def test_a_bad_list_query_is_a_422_naming_it(client, query, field):
    response = client.get(f"/api/runs?{query}")
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", field]


def test_filters_run_on_the_server_and_stay_in_the_link(client):
    store = client.app.state.store
    for index in range(6):
        run_id = store.create_run({"task": "digits" if index < 3 else "mnist",
                                   "method": "rigl" if index % 2 else "set"},
                                  f"Alpha {index}", status="completed")["id"]
        if index == 5:
            store.set_status(run_id, "failed", error="boom", only_if_active=False)
    script = store.create_run({"lr": 0.1}, "script run", status="completed")["id"]
    store.append_events(script, [("meta", 0, {"settings": {"task": "cifar", "method": "srigl",
                                                           "model": "custom: Net"}})])
    assert client.get("/api/runs?status=failed").headers["x-total-count"] == "1"
    assert client.get("/api/runs?q=MNIST").headers["x-total-count"] == "3"  # any case
    assert client.get("/api/runs?q=alpha 4").headers["x-total-count"] == "1"  # the name
    assert client.get("/api/runs?q=RIG").headers["x-total-count"] == "4"  # method, settings'
    assert _ids(client.get("/api/runs?q=cifar")) == [script]  # the stored settings' task
    assert _ids(client.get("/api/runs?q=net")) == [script]  # … and model
    assert _ids(client.get(f"/api/runs?q={script[3:9]}")) == [script]  # part of the id
    assert client.get("/api/runs?q=zz%22z").json() == []  # not a raw-JSON match
    page = client.get("/api/runs?q=a&status=completed&limit=2")
    link = _next(page)
    assert "q=a" in link and "status=completed" in link and "limit=2" in link
    assert page.headers["x-total-count"] == "6"
    rest = client.get(link)
    assert all(run["status"] == "completed" for run in rest.json())


def test_a_poll_of_an_unchanged_list_is_a_304(client):
    store = client.app.state.store
    run_id = store.create_run({}, "one", status="completed")["id"]
    first = client.get("/api/runs")
    etag = first.headers["etag"]
    again = client.get("/api/runs", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    other = client.get("/api/runs?status=failed", headers={"If-None-Match": etag})
    assert other.status_code == 200 and other.json() == []  # another list, another answer
    store.update_summary(run_id, {"steps": 3, "best_test_accuracy": 0.7})
    changed = client.get("/api/runs", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert changed.json()[0]["summary"]["best_test_accuracy"] == 0.7


def test_a_damaged_row_keeps_the_list_working(client):
    store = client.app.state.store
    good = store.create_run({}, "good", status="completed")["id"]
    bad = store.create_run({}, "bad", status="completed")["id"]
    raw = sqlite3.connect(store.path)
    raw.execute("UPDATE runs SET created_at = 'yesterday', summary = '{\"steps\": 1e999}', "
                "info = '[1' WHERE id = ?", (bad,))
    raw.commit()
    raw.close()
    listed = client.get("/api/runs?limit=1")
    assert listed.status_code == 200
    rest = client.get(_next(listed))  # a cursor at a time that is text still pages on
    assert rest.status_code == 200 and _next(rest) is None
    runs = {run["id"]: run for run in listed.json() + rest.json()}
    assert set(runs) == {good, bad}
    assert runs[bad]["unreadable"] and runs[good]["unreadable"] is None


# ---- metric names -------------------------------------------------------------------------------
def _names_batch(first_seq: int, names: list[str]) -> dict:
    return {"events": [{"seq": first_seq, "step": first_seq, "type": "metrics",
                        **{name: 1.0 for name in names}}]}


def test_ingest_refuses_a_batch_past_the_metric_name_limit(make_client):
    client = make_client(max_metric_names=5)
    run_id = client.post("/api/ingest/runs", json={}).json()["id"]
    url = f"/api/ingest/runs/{run_id}/events"
    assert client.post(url, json=_names_batch(2, ["a", "b", "c"])).status_code == 200
    assert client.post(url, json=_names_batch(3, ["c", "d", "e"])).status_code == 200
    refused = client.post(url, json=_names_batch(4, ["a", "f"]))
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"][0]
    assert detail["loc"] == ["body", "max_metric_names"]
    assert "SPARSESCOPE_MAX_METRIC_NAMES" in detail["msg"] and "'f'" in detail["msg"]
    assert client.app.state.store.last_seq(run_id) == 3  # nothing of the batch was stored
    assert client.post(url, json=_names_batch(4, ["a", "e"])).status_code == 200  # known names
    eval_batch = {"events": [{"seq": 5, "step": 5, "type": "eval", "g": 0.5}]}
    assert client.post(url, json=eval_batch).status_code == 422  # eval fields count too
    long_name = client.post(url, json=_names_batch(5, ["x" * 201]))
    assert long_name.status_code == 422 and "at most 200" in long_name.text


def test_the_limit_survives_a_restart_and_comes_from_the_environment(make_client, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("SPARSESCOPE_MAX_METRIC_NAMES", "3")
    from backend.settings import Settings

    assert Settings().max_metric_names == 3
    first = make_client(max_metric_names=3, data_dir=tmp_path / "same")
    run_id = first.post("/api/ingest/runs", json={}).json()["id"]
    url = f"/api/ingest/runs/{run_id}/events"
    assert first.post(url, json=_names_batch(2, ["a", "b", "c"])).status_code == 200
    first.__exit__(None, None, None)
    again = make_client(max_metric_names=3, data_dir=tmp_path / "same")  # names read back
    assert again.post(url, json=_names_batch(3, ["d"])).status_code == 422


def test_a_local_recorder_raises_naming_the_limit(tmp_path):
    with pytest.raises(ValueError, match="max_metric_names"):
        with Recorder(tmp_path, name="too many names") as recorder:
            for step in range(3):
                recorder.log(step, **{f"m{step}_{index}": 1.0 for index in range(400)})
            recorder.flush()


def test_a_script_writing_the_folder_refuses_at_the_servers_limit(make_client, tmp_path):
    """The server stores its limit in the data folder: a Recorder writing the folder directly
    (a script, a worker) refuses at the same count, not at the built-in 1,000."""
    folder = tmp_path / "shared"
    server = make_client(max_metric_names=4, data_dir=folder)
    with pytest.raises(ValueError, match=r"max_metric_names.* 4 per run"):
        with Recorder(folder, name="a script") as recorder:
            recorder.log(1, a=1.0, b=2.0, c=3.0, d=4.0)
            recorder.flush()  # four names: accepted
            recorder.log(2, e=5.0)
            recorder.flush()
    assert RunStore(folder).max_metric_names == 4
    server.__exit__(None, None, None)
    make_client(max_metric_names=2000, data_dir=folder)  # a restart with more
    with Recorder(folder, name="wide") as recorder:
        recorder.log(1, **{f"m{index}": 1.0 for index in range(1500)})
    assert RunStore(folder).max_metric_names == 2000


def test_a_stored_limit_that_is_not_one_falls_back_to_the_default(tmp_path):
    store = RunStore(tmp_path)
    for hostile in ("abc", "0", "-5", "100001", "1e3", ""):
        store.db.execute("INSERT OR REPLACE INTO meta VALUES ('max_metric_names', ?)", (hostile,))
        assert RunStore(tmp_path).max_metric_names == MAX_METRIC_NAMES, hostile
    with pytest.raises(ValueError, match="max_metric_names"):
        RunStore(tmp_path, max_metric_names=0)


# ---- /metrics -----------------------------------------------------------------------------------
def test_metrics_answer_at_most_64_series_and_list_every_name(client):
    store = client.app.state.store
    run_id = store.create_run({}, "wide", status="running")["id"]
    store.append_events(run_id, [("metrics", step, {f"m{index:03d}": step * 1.0 + index
                                                    for index in range(100)})
                                 for step in range(3)])
    store.append_events(run_id, [("eval", 3, {"test_accuracy": 0.9})])
    default = client.get(f"/api/runs/{run_id}/metrics")
    assert default.status_code == 200
    assert list(default.json()) == ["metrics"]
    assert list(default.json()["metrics"]) == [f"m{index:03d}" for index in range(64)]
    assert default.headers["x-metric-names-total"] == "101"
    names = client.get(f"/api/runs/{run_id}/metrics/names").json()
    assert names == {"metrics": [f"m{index:03d}" for index in range(100)],
                     "eval": ["test_accuracy"], "total": 101}
    asked = client.get(f"/api/runs/{run_id}/metrics?fields=m099,test_accuracy,nope").json()
    assert {type_: list(fields) for type_, fields in asked.items()} == {
        "metrics": ["m099"], "eval": ["test_accuracy"]}
    assert asked["metrics"]["m099"]["last"] == [99.0, 100.0, 101.0]
    too_many = client.get(f"/api/runs/{run_id}/metrics?fields="
                          + ",".join(f"m{index:03d}" for index in range(65)))
    assert too_many.status_code == 422 and too_many.json()["detail"][0]["loc"] == [
        "query", "fields"]
    assert client.get(f"/api/runs/{run_id}/metrics?buckets=10001").status_code == 422
