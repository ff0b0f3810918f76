"""The live slice through the API: start, stream in seq order, stop keeps data."""

import json

from tests.conftest import wait_for_status


def test_health(client):
    assert client.get("/api/health").json()["status"] == "ok"


def test_start_stream_complete(client):
    response = client.post("/api/runs", json={"epochs": 2})
    assert response.status_code == 201
    run = response.json()
    assert run["status"] in ("queued", "running") and len(run["id"]) == 16
    events = []
    with client.websocket_connect(f"/ws/runs/{run['id']}?from_seq=0") as socket:
        while True:
            event = json.loads(socket.receive_text())
            events.append(event)
            if event["type"] == "end":
                break
    stored = [event for event in events if "seq" in event]
    assert [event["seq"] for event in stored] == list(range(1, len(stored) + 1))
    types = {event["type"] for event in stored}
    assert {"status", "meta", "metrics", "topology", "eval", "rewire"} <= types
    statuses = [event["status"] for event in stored if event["type"] == "status"]
    assert statuses == ["queued", "running", "completed"]
    assert stored[-1]["type"] == "status"
    keyframes = [e for e in stored if e["type"] == "topology" and e["keyframe"]]
    deltas = [e for e in stored if e["type"] == "topology" and not e["keyframe"]]
    assert len(keyframes) >= 3 and deltas
    run = client.get(f"/api/runs/{run['id']}").json()
    assert run["status"] == "completed" and run["summary"]["steps"] == 100


def test_from_seq_resumes(client):
    run = client.post("/api/runs", json={"epochs": 1}).json()
    wait_for_status(client, run["id"], ("completed",))
    with client.websocket_connect(f"/ws/runs/{run['id']}?from_seq=5") as socket:
        first = json.loads(socket.receive_text())
    assert first["seq"] == 5


def test_stop_keeps_data(client):
    run = client.post("/api/runs", json={"epochs": 1000}).json()
    wait_for_status(client, run["id"], ("running",))
    with client.websocket_connect(f"/ws/runs/{run['id']}") as socket:
        while json.loads(socket.receive_text())["type"] != "topology":
            pass
    stopped = client.post(f"/api/runs/{run['id']}/stop").json()
    assert stopped["status"] == "stopped"
    with client.websocket_connect(f"/ws/runs/{run['id']}") as socket:
        events = []
        while (event := json.loads(socket.receive_text()))["type"] != "end":
            events.append(event)
    assert any(event["type"] == "topology" for event in events)
    assert events[-1] == {**events[-1], "type": "status", "status": "stopped"}


def test_list_newest_first_and_unknown_fields(client):
    first = client.post("/api/runs", json={"epochs": 1}).json()
    second = client.post("/api/runs", json={"epochs": 1}).json()
    ids = [run["id"] for run in client.get("/api/runs").json()]
    assert ids.index(second["id"]) < ids.index(first["id"])
    bad = client.post("/api/runs", json={"epochs": 1, "bogus": 3})
    assert bad.status_code == 422 and "bogus" in bad.text
    bad = client.post("/api/runs", json={"density": 2})
    assert bad.status_code == 422 and "density" in bad.text
    assert client.get("/api/runs/../etc").status_code == 404
