"""Export → import round trip, hostile imports rejected untouched, model download, mask/metrics."""

from __future__ import annotations

import base64
import io
import sqlite3
import time

import numpy as np
import pytest
import torch

from dst_core.store import RunReader, load_model
from tests.backend.test_stream import record_run
from tests.conftest import wait_for_status


def _export(client, run_id: str) -> bytes:
    response = client.get(f"/api/runs/{run_id}/export")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == 'attachment; filename="recorded.sparsescope"'
    return response.content


def test_export_import_round_trip_is_identical(client):
    store = client.app.state.store
    run_id = record_run(store)
    store.put_artifact(run_id, "model.pt", b"weights")
    response = client.post("/api/runs/import", content=_export(client, run_id))
    assert response.status_code == 201
    copy = response.json()
    assert copy["id"] != run_id
    original = client.get(f"/api/runs/{run_id}").json()
    # Told apart from its original: its name says so, its info says when and from where.
    assert copy["name"] == original["name"] + " (imported)"
    info = dict(copy["info"])
    assert info.pop("imported_from") == run_id and time.time() - info.pop("imported_at") < 60
    assert info.pop("same_as") == [run_id]  # the original is in this store too: said so
    assert info == original["info"]
    assert {**copy, "id": run_id, "name": original["name"], "info": original["info"]} == original
    assert copy["has_model"] and original["has_model"]
    assert store.read_events(copy["id"], 0, 100_000) == store.read_events(run_id, 0, 100_000)
    assert store.get_artifact(copy["id"], "model.pt") == b"weights"
    exported_again = client.get(f"/api/runs/{copy['id']}/export").content
    again = client.post("/api/runs/import", content=exported_again)
    assert again.status_code == 201
    assert again.json()["name"] == copy["name"]  # one suffix, however often it travels
    assert again.json()["info"]["imported_from"] == copy["id"]


def _tamper(data: bytes, tmp_path, sql: str, *params) -> bytes:
    path = tmp_path / "tampered.sqlite3"
    path.write_bytes(data)
    db = sqlite3.connect(path)
    db.execute(sql, params)
    db.commit()
    db.close()
    return path.read_bytes()


def test_bad_files_get_400_with_a_reason_and_change_nothing(client, tmp_path):
    store = client.app.state.store
    run_id = record_run(store)
    good = _export(client, run_id)
    huge_shape = '{"layer":"x","index":0,"shape":[4000000,4000000],"keyframe":true,"active":1}'
    # case → (file, what its 400 says): each case fails on its own check, named in the reason.
    cases = {
        "empty body": (b"", "empty body: send the export file's bytes"),
        "SQLite header": (b"definitely not a database" * 10,
                          "not a sparsescope export (the file does not start with an SQLite "
                          "header)"),
        # sqlite's own words for a damaged file, after the header check let it through.
        "corrupted": (good[:4096] + bytes(len(good) - 4096),
                      "not a sparsescope export: database disk image is malformed"),
        "truncated": (good[: len(good) // 2],
                      "not a sparsescope export: database disk image is malformed"),
        "schema_version": (_tamper(good, tmp_path, "UPDATE meta SET value='99' "
                                   "WHERE key='schema_version'"),
                           "schema_version: 99 is not a version this sparsescope reads"),
        # seq 3 is the run's first topology frame (record_run: status, meta, then frames).
        "absurd shape": (_tamper(good, tmp_path, "UPDATE events SET payload=? WHERE seq=3",
                                 huge_shape),
                         "events: seq 3: payload.shape: 4000000×4000000 = "
                         "16,000,000,000,000 connections; at most "),
        "frame": (_tamper(good, tmp_path, "UPDATE events SET blob=x'01ffff' "
                          "WHERE type='topology'"),
                  "events: seq 3: frame: corrupted compressed data"),
        "artifact name": (_tamper(good, tmp_path, "INSERT INTO artifacts SELECT id, "
                                  "'../../etc/passwd', x'00' FROM runs"),
                          "artifact name '../../etc/passwd' is not allowed (only model.pt)"),
        "exactly one run": (_tamper(good, tmp_path, "INSERT INTO runs (id, name, config, status, "
                                    "created_at) VALUES ('ffffffffffffffff', 'b', '{}', "
                                    "'completed', 1)"),
                            "an export holds exactly one run, this file has 2"),
        "config": (_tamper(good, tmp_path, "UPDATE runs SET config='{\"density\": 7}'"),
                   "config.density: "),
    }
    before = [run["id"] for run in store.list_runs()]
    events_before = store.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    for case, (body, reason) in cases.items():
        response = client.post("/api/runs/import", content=body)
        assert response.status_code == 400, (case, response.text)
        assert response.json()["detail"].startswith(reason), (case, response.json()["detail"])
    assert [run["id"] for run in store.list_runs()] == before
    assert store.db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == events_before


def test_importing_one_file_twice_names_the_copies_already_here(client, make_client):
    exported = _export(client, record_run(client.app.state.store))
    elsewhere = make_client()  # a store without the original
    first = elsewhere.post("/api/runs/import", content=exported).json()
    assert "same_as" not in first["info"]
    second = elsewhere.post("/api/runs/import", content=exported).json()
    assert second["info"]["same_as"] == [first["id"]] and second["id"] != first["id"]
    third = elsewhere.post("/api/runs/import", content=exported).json()
    assert third["info"]["same_as"] == [first["id"], second["id"]]
    # An export of a copy, imported: its copies here are named, not the other store's.
    again = elsewhere.post("/api/runs/import",
                           content=elsewhere.get(f"/api/runs/{third['id']}/export").content).json()
    assert again["info"]["same_as"] == [third["id"]]
    # A stored info that is not JSON (an older version's row) never fails an import.
    elsewhere.app.state.store.db.execute("UPDATE runs SET info = 'not json' WHERE id = ?",
                                         (first["id"],))
    assert elsewhere.post("/api/runs/import", content=exported).status_code == 201


def test_import_has_its_own_size_limit(make_client):
    client = make_client(max_import_bytes=2048)
    response = client.post("/api/runs/import", content=b"x" * 4096)
    assert response.status_code == 413 and "/api/runs/import" in response.json()["detail"]


def test_mask_and_metrics_endpoints(client):
    store = client.app.state.store
    run_id = record_run(store, rewires=12)
    reader = RunReader(store)
    response = client.get(f"/api/runs/{run_id}/mask", params={"layer": "fc.weight", "step": 75})
    assert response.status_code == 200
    body = response.json()
    expected, frame_step = reader.mask_at(run_id, "fc.weight", 75)
    bits = np.unpackbits(np.frombuffer(base64.b64decode(body["bits"]), np.uint8),
                         bitorder="little", count=expected.size).astype(bool)
    assert body["frame_step"] == frame_step == 70 and body["shape"] == [64, 96]
    assert np.array_equal(bits.reshape(64, 96), expected) and body["active"] == expected.sum()
    assert client.get(f"/api/runs/{run_id}/mask?layer=nope&step=5").status_code == 404
    assert client.get(f"/api/runs/{run_id}/mask?layer=fc.weight&step=-1").status_code == 422
    full = client.get(f"/api/runs/{run_id}/metrics?buckets=100").json()["metrics"]
    assert full["accuracy"]["last"][:2] == [None, 0.5]  # NaN → null, points kept
    metrics = client.get(f"/api/runs/{run_id}/metrics?buckets=4").json()["metrics"]
    assert len(metrics["loss"]["step"]) == 4 and metrics["loss"]["max"][0] == 1.0
    assert metrics["accuracy"]["max"][0] == 0.5
    assert client.get(f"/api/runs/{run_id}/metrics?buckets=0").status_code == 422


@pytest.mark.slow
def test_completed_run_offers_its_model_in_two_lines(client, tmp_path):
    run = client.post("/api/runs", json={"epochs": 2, "hidden": [16]}).json()
    assert client.get(f"/api/runs/{run['id']}/model").status_code == 404  # not completed yet
    wait_for_status(client, run["id"], ("completed",))
    response = client.get(f"/api/runs/{run['id']}/model")
    assert response.status_code == 200
    (tmp_path / "run.pt").write_bytes(response.content)

    model = load_model(tmp_path / "run.pt")  # the documented two lines (import + this)

    state = torch.load(io.BytesIO(response.content), weights_only=True)
    weight = model[1].weight if isinstance(model, torch.nn.Sequential) else None
    masks = state["masks"]
    name = next(iter(masks))
    loaded = dict(model.named_parameters())[name]
    assert torch.equal(loaded != 0, masks[name] & (loaded != 0))  # masked weights are zero
    assert (loaded[~masks[name]] == 0).all() and masks[name].any()
    assert weight is None or weight.shape[0] == 16
    x = torch.randn(3, *state["architecture"]["input_shape"])
    assert model(x).shape == (3, state["architecture"]["num_classes"])
    exported = client.get(f"/api/runs/{run['id']}/export").content
    copy = client.post("/api/runs/import", content=exported).json()
    assert client.get(f"/api/runs/{copy['id']}/model").content == response.content


def test_a_running_run_exports_as_a_snapshot_that_imports_stopped_twice(client):
    store = client.app.state.store
    run_id = record_run(store, rewires=4, status="running")
    data = _export(client, run_id)
    store.append_events(run_id, [("metrics", 999, {"loss": 0.1})])  # the writer goes on
    first = client.post("/api/runs/import", content=data)
    second = client.post("/api/runs/import", content=data)
    assert first.status_code == second.status_code == 201
    copies = [first.json(), second.json()]
    assert len({run_id, copies[0]["id"], copies[1]["id"]}) == 3  # two new runs
    original_events = store.read_events(run_id, 0, 100_000)[:-1]  # without the later metrics
    for copy in copies:
        assert copy["status"] == "stopped" and "exported while it was running" in copy["error"]
        assert copy["ended_at"] is not None
        events = store.read_events(copy["id"], 0, 100_000)
        assert events[:-1] == original_events
        assert events[-1] == {"seq": len(original_events) + 1, "step": original_events[-1]["step"],
                              "type": "status", "status": "stopped", "error": copy["error"]}
    assert store.get_run(run_id)["status"] == "running"  # the original is untouched


def test_model_download_of_a_run_without_a_model_says_why(client):
    store = client.app.state.store
    running = record_run(store, rewires=1, status="running")
    response = client.get(f"/api/runs/{running}/model")
    assert response.status_code == 404 and "is running" in response.json()["detail"]
    assert "no run" in client.get("/api/runs/0123456789abcdef/model").json()["detail"]
    completed = record_run(store, rewires=1)
    response = client.get(f"/api/runs/{completed}/model")
    assert response.status_code == 404 and "stored no model" in response.json()["detail"]


def test_mask_at_an_absurd_step_is_a_422_naming_it(client):
    run_id = record_run(client.app.state.store, rewires=1)
    response = client.get(f"/api/runs/{run_id}/mask", params={"layer": 0, "step": 10**23})
    assert response.status_code == 422 and "step" in response.text
