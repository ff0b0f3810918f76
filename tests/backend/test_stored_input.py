"""Issue 12, "stored input breaks reads": every bad value is refused where it enters (ingest,
import, the server's own writes), and a read never answers 5xx whatever the store holds."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from dst_core.events import keyframe_payload, to_wire
from dst_core.store.schema import InvalidValue
from tests.backend.test_stream import record_run


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def _reads_work(client, run_id: str | None = None) -> None:
    assert client.get("/api/runs").status_code == 200
    if run_id is not None:
        for path in ("", "/metrics", "/mask?layer=0&step=10"):
            assert client.get(f"/api/runs/{run_id}{path}").status_code < 500, path


def _remote_run(client) -> str:
    return client.post("/api/ingest/runs", json={}).json()["id"]


@pytest.mark.parametrize("summary", [
    {"steps": "x"}, {"density": 5}, {"steps": None}, {"density": {"fc": {"a": 1}}},
])
def test_an_ingested_summary_that_reads_could_not_show_is_a_422(client, summary):
    run_id = _remote_run(client)
    response = client.post(f"/api/ingest/runs/{run_id}/events",
                           json={"events": [], "summary": summary})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["msg"].startswith("summary.")
    _reads_work(client, run_id)


def test_an_overflowing_step_count_in_a_summary_is_refused(client):
    run_id = _remote_run(client)
    body = b'{"events": [], "summary": {"steps": 1e400}}'
    response = client.post(f"/api/ingest/runs/{run_id}/events", content=body,
                           headers={"content-type": "application/json"})
    assert response.status_code == 422 and "summary.steps" in response.text
    _reads_work(client, run_id)


def test_deeply_nested_info_and_payloads_are_422_not_500(client):
    response = client.post("/api/ingest/runs", json={"info": _nested(400)})
    assert response.status_code == 422 and "info" in response.text
    run_id = _remote_run(client)
    deep = "[" * 5000 + "]" * 5000
    body = f'{{"events": [{{"seq": 2, "step": 0, "type": "metrics", "x": {deep}}}]}}'.encode()
    response = client.post(f"/api/ingest/runs/{run_id}/events", content=body,
                           headers={"content-type": "application/json"})
    assert response.status_code in (400, 422), response.text
    shallow_but_deep = {"events": [{"seq": 2, "step": 0, "type": "metrics", "x": _nested(60)}]}
    response = client.post(f"/api/ingest/runs/{run_id}/events", json=shallow_but_deep)
    assert response.status_code == 422 and "events[0].x" in response.json()["detail"][0]["msg"]
    _reads_work(client, run_id)


@pytest.mark.parametrize("event, field", [
    ({"type": "status", "status": "failed", "error": {"a": 1}}, "error"),
    ({"type": "meta", "layers": 5}, "layers"),
    ({"type": "meta", "layers": [{"shape": [2, 2]}]}, "name"),
    ({"type": "topology", "layer": "x", "index": 0, "shape": [46340, 46340], "keyframe": True,
      "active": 0, "bits": ""}, "shape"),
])
def test_events_that_would_break_a_read_are_422_naming_the_field(client, event, field):
    run_id = _remote_run(client)
    response = client.post(f"/api/ingest/runs/{run_id}/events",
                           json={"events": [{"seq": 2, "step": 0, **event}]})
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"][0]["msg"]
    assert client.get(f"/api/runs/{run_id}").json()["status"] == "running"  # nothing stored
    _reads_work(client, run_id)


def test_huge_integers_are_refused_and_nan_is_stored_as_null(client):
    run_id = _remote_run(client)
    body = b'{"events": [{"seq": 2, "step": 1, "type": "metrics", "loss": 1' + b"0" * 400 + b"}]}"
    response = client.post(f"/api/ingest/runs/{run_id}/events", content=body,
                           headers={"content-type": "application/json"})
    assert response.status_code == 422 and "loss" in response.text
    body = b'{"events": [{"seq": 2, "step": 1, "type": "metrics", "loss": NaN, "acc": 0.5}]}'
    response = client.post(f"/api/ingest/runs/{run_id}/events", content=body,
                           headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    stored = client.app.state.store.db.execute(
        "SELECT payload FROM events WHERE run_id = ? AND type = 'metrics'", (run_id,)).fetchone()
    assert json.loads(stored[0]) == {"loss": None, "acc": 0.5}
    assert client.get(f"/api/runs/{run_id}/metrics").status_code == 200


def test_a_wide_conv_matrix_from_a_remote_writer_passes(client):
    """Frames are bounded by SPARSESCOPE_MAX_PARAMETERS, not the form's width limit."""
    run_id = _remote_run(client)
    mask = torch.zeros(512, 4608, dtype=torch.bool)
    mask[::7, ::5] = True
    frame = to_wire(keyframe_payload("conv", 0, (512, 4608), mask))
    response = client.post(f"/api/ingest/runs/{run_id}/events",
                           json={"events": [
                               {"seq": 2, "step": 0, "type": "meta",
                                "layers": [{"name": "conv", "shape": [512, 512, 3, 3]}]},
                               {"seq": 3, "step": 0, "type": "topology", **frame}]})
    assert response.status_code == 200, response.text
    body = client.get(f"/api/runs/{run_id}/mask?layer=0&step=0").json()
    assert body["shape"] == [512, 4608] and body["active"] == int(mask.sum())


def test_the_servers_own_writes_pass_the_same_schemas(client):
    store = client.app.state.store
    run_id = store.create_run({}, "x", status="running")["id"]
    with pytest.raises(InvalidValue, match="error"):
        store.set_status(run_id, "failed", error={"a": 1})
    with pytest.raises(InvalidValue, match="summary.steps"):
        store.update_summary(run_id, {"steps": "x"})
    with pytest.raises(InvalidValue, match="info"):
        store.create_run({}, "y", info=_nested(100))
    with pytest.raises(InvalidValue, match=r"events\[1\].loss"):
        store.append_events(run_id, [("metrics", 0, {"loss": 1.0}), ("metrics", 1, {"loss": 10**400})])
    assert store.last_seq(run_id) == 1  # the whole batch was refused, nothing half-stored
    assert client.get(f"/api/runs/{run_id}").json()["status"] == "running"


@pytest.mark.parametrize("column, value", [
    ("summary", '{"steps": "x"}'), ("summary", "not json"), ("config", "[1, 2]"),
    ("status", "exploded"), ("created_at", None), ("info", "{\"a\":" * 3000 + "{}" + "}" * 3000),
])
def test_a_damaged_legacy_row_is_listed_as_unreadable_and_can_be_deleted(tmp_path, client,
                                                                         column, value):
    store = client.app.state.store
    good = store.create_run({}, "good", status="completed")["id"]
    bad = store.create_run({}, "bad", status="completed")["id"]
    # Written behind the store's back, as an older version or a hand edit could have.
    raw = sqlite3.connect(store.path)
    raw.execute("PRAGMA ignore_check_constraints=ON")
    raw.execute("PRAGMA writable_schema=ON")
    if column == "created_at":  # NOT NULL in our schema: a foreign tool's copy of the table
        raw.execute("CREATE TABLE runs2 AS SELECT * FROM runs")
        raw.execute("DROP TABLE runs")
        raw.execute("ALTER TABLE runs2 RENAME TO runs")
    raw.execute(f"UPDATE runs SET {column} = ? WHERE id = ?", (value, bad))
    raw.commit()
    raw.close()
    listed = client.get("/api/runs")
    assert listed.status_code == 200
    rows = {run["id"]: run for run in listed.json()}
    assert rows[good]["unreadable"] is None
    assert rows[bad]["unreadable"], rows[bad]
    assert client.get(f"/api/runs/{bad}").status_code == 200
    assert client.delete(f"/api/runs/{bad}").status_code == 204
    assert [run["id"] for run in client.get("/api/runs").json()] == [good]


def test_legacy_rows_that_break_mask_and_metrics_reads_answer_4xx(client):
    store = client.app.state.store
    run_id = record_run(store)
    db = sqlite3.connect(store.path)
    db.execute("UPDATE events SET payload = '{\"layers\": 5}' WHERE run_id = ? AND type = 'meta'",
               (run_id,))
    db.execute("UPDATE events SET layer = 0, keyframe = 1 WHERE run_id = ? AND type = 'metrics'",
               (run_id,))
    db.execute("UPDATE events SET payload = '{\"loss\": 1" + "0" * 400 + "}' "
               "WHERE run_id = ? AND type = 'metrics'", (run_id,))
    db.commit()
    db.close()
    assert client.get(f"/api/runs/{run_id}/metrics").status_code == 200
    assert client.get(f"/api/runs/{run_id}/mask?layer=0&step=100").status_code == 404


# ---- imports ------------------------------------------------------------------------------------
def _export_file(client, tmp_path: Path) -> Path:
    run_id = record_run(client.app.state.store, rewires=4)
    path = tmp_path / "export.sparsescope"
    path.write_bytes(client.get(f"/api/runs/{run_id}/export").content)
    return path


def _edited(path: Path, *statements: str) -> bytes:
    db = sqlite3.connect(path)
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()
    return path.read_bytes()


def _import_refused(client, body: bytes, reason: str) -> None:
    store = client.app.state.store
    before = store.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    response = client.post("/api/runs/import", content=body)
    assert response.status_code == 400, response.text
    assert reason in response.json()["detail"], response.json()
    assert store.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == before
    assert client.get("/api/runs").status_code == 200


@pytest.mark.parametrize("statement, reason", [
    ("UPDATE runs SET summary = '{\"steps\": \"x\"}'", "summary.steps"),
    ("UPDATE events SET payload = '{\"status\": \"failed\", \"error\": {\"a\": 1}}' "
     "WHERE type = 'status'", "error"),
    ("UPDATE events SET layer = 0, keyframe = 1 WHERE type = 'metrics'", "frame columns"),
    ("UPDATE events SET payload = json_set(payload, '$.shape', json('[46340, 46340]')) "
     "WHERE type = 'topology'", "SPARSESCOPE_MAX_PARAMETERS"),
])
def test_imports_pass_the_same_schemas(client, tmp_path, statement, reason):
    _import_refused(client, _edited(_export_file(client, tmp_path), statement), reason)


def test_an_import_with_created_at_null_is_refused(client, tmp_path):
    body = _edited(_export_file(client, tmp_path), "CREATE TABLE r AS SELECT * FROM runs",
                   "DROP TABLE runs", "ALTER TABLE r RENAME TO runs",
                   "UPDATE runs SET created_at = NULL")
    _import_refused(client, body, "created_at")


@pytest.mark.parametrize("statements, reason", [
    (["DROP TABLE events",
      "CREATE VIEW events AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
      "LIMIT 1000000) SELECT 'x' AS run_id, i AS seq, 0 AS step, 'metrics' AS type, '{}' AS "
      "payload, NULL AS layer, NULL AS keyframe, zeroblob(100000) AS blob FROM n"], "view"),
    (["CREATE TRIGGER grow AFTER UPDATE ON meta BEGIN INSERT INTO events SELECT * FROM events; "
      "END"], "trigger"),
    (["CREATE TABLE extra (x)"], "extra"),
    (["ALTER TABLE runs ADD COLUMN evil TEXT"], "evil"),
])
def test_an_import_with_views_triggers_or_foreign_objects_is_refused_before_copying(
        client, tmp_path, statements, reason):
    _import_refused(client, _edited(_export_file(client, tmp_path), *statements), reason)


def test_a_version_1_file_with_a_trigger_runs_nothing_during_the_upgrade(client, tmp_path):
    path = tmp_path / "v1.sparsescope"
    db = sqlite3.connect(path)
    from dst_core.store.run_store import _SCHEMA_V1

    db.executescript(_SCHEMA_V1)
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.execute("INSERT INTO runs (id, name, config, status, created_at) VALUES "
               "('0123456789abcdef', 'old', '{}', 'completed', 1.0)")
    db.execute("CREATE TRIGGER t AFTER UPDATE ON meta BEGIN "
               "INSERT INTO runs SELECT * FROM runs; END")
    db.commit()
    db.close()
    _import_refused(client, path.read_bytes(), "trigger")
