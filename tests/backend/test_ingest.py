"""Remote writers: ingest endpoints, duplicate seqs, spool and retry, giving up, stale runs."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
import torch
import uvicorn

from backend.app import create_app
from backend.settings import Settings
from dst_core import SparseDriver
from dst_core.events import keyframe_payload, to_wire
from dst_core.recording import Recorder, RemoteRecorderError
from dst_core.store import RunReader, RunStore
from tests.conftest import LoopbackClient, free_port, wait_for_status


def _batch(first_seq: int, count: int) -> dict:
    return {"events": [{"seq": seq, "step": seq, "type": "metrics", "loss": 1.0 / seq}
                       for seq in range(first_seq, first_seq + count)], "summary": {"steps": 9}}


def test_duplicates_by_run_and_seq_are_dropped(client):
    created = client.post("/api/ingest/runs", json={"name": "remote", "config": {"seed": 3}})
    assert created.status_code == 201
    run_id, next_seq = created.json()["id"], created.json()["next_seq"]
    assert next_seq == 2  # seq 1 is the run's "running" status
    assert client.post(f"/api/ingest/runs/{run_id}/events", json=_batch(2, 5)).json() == {
        "last_seq": 6}
    assert client.post(f"/api/ingest/runs/{run_id}/events", json=_batch(2, 5)).json() == {
        "last_seq": 6}  # the same batch resent after a lost reply
    assert client.post(f"/api/ingest/runs/{run_id}/events", json=_batch(5, 4)).json() == {
        "last_seq": 8}
    events = client.app.state.store.read_events(run_id, 0, 100)
    assert [event["seq"] for event in events] == list(range(1, 9))
    assert [event["step"] for event in events[1:]] == list(range(2, 9))
    run = client.get(f"/api/runs/{run_id}").json()
    assert run["status"] == "running" and run["summary"]["steps"] == 9
    assert run["config"]["seed"] == 3


def test_ingest_validates_and_stops_after_the_end(client):
    run_id = client.post("/api/ingest/runs", json={}).json()["id"]
    bad = {"events": [{"seq": 2, "step": 0, "type": "topology", "layer": "x", "index": 0,
                       "shape": [4, 4], "keyframe": True, "active": 1, "bits": "AAAAAAAA"}]}
    response = client.post(f"/api/ingest/runs/{run_id}/events", json=bad)
    assert response.status_code == 422 and "frame" in response.text
    mask = torch.zeros(4, 4, dtype=torch.bool)
    good = {"events": [{"seq": 2, "step": 0, "type": "meta",
                        "layers": [{"name": "x", "shape": [4, 4], "matrix": [4, 4]}]},
                       {"seq": 3, "step": 0, "type": "topology",
                        **to_wire(keyframe_payload("x", 0, (4, 4), mask))},
                       {"seq": 4, "step": 1, "type": "status", "status": "completed"}]}
    assert client.post(f"/api/ingest/runs/{run_id}/events", json=good).status_code == 200
    assert client.get(f"/api/runs/{run_id}").json()["status"] == "completed"
    late = client.post(f"/api/ingest/runs/{run_id}/events", json=_batch(5, 1))
    assert late.status_code == 409 and "ended" in late.json()["detail"]
    assert client.post(f"/api/ingest/runs/{run_id}/heartbeat").status_code == 409
    assert client.put(f"/api/ingest/runs/{run_id}/artifacts/..%2Fx", content=b"1").status_code \
        == 404
    # A remote writer's config is its own (a script's dict): it must be a JSON object.
    assert client.post("/api/ingest/runs", json={"config": [1, 2]}).status_code == 422
    assert client.post("/api/ingest/runs", json={"config": "x"}).status_code == 422
    other = client.post("/api/ingest/runs", json={}).json()["id"]
    response = client.post(f"/api/ingest/runs/{other}/events", json={"events": [{"seq": 0}]})
    assert response.status_code == 422 and "seq" in response.text


def test_ingest_batches_share_one_body_limit(make_client):
    """The limit of every /api/ingest/ route is the body-limit middleware's, the one place."""
    client = make_client(max_ingest_bytes=2048)
    run_id = client.post("/api/ingest/runs", json={}).json()["id"]
    response = client.post(f"/api/ingest/runs/{run_id}/events", json=_batch(2, 200))
    assert response.status_code == 413 and "/api/ingest/" in response.json()["detail"]
    assert client.post(f"/api/ingest/runs/{run_id}/events", json=_batch(2, 3)).status_code == 200


@pytest.mark.parametrize("body, field", [
    (b"notjson", "body"),
    (b'{"events": [{"seq": 99999999999999999999999, "step": 0, "type": "metrics"}]}', "seq"),
    (b'{"events": [{"seq": 2, "step": 99999999999999999999999, "type": "metrics"}]}', "step"),
    (b'{"events": [{"seq": 2, "step": 0, "type": "status", "status": "bogus"}]}', "status"),
])
def test_hostile_ingest_batches_get_a_422_naming_the_problem(client, body, field):
    run_id = client.post("/api/ingest/runs", json={}).json()["id"]
    response = client.post(f"/api/ingest/runs/{run_id}/events", content=body,
                           headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert field in response.text
    assert [event["seq"] for event in client.app.state.store.read_events(run_id)] == [1]


def test_a_run_whose_writer_goes_silent_is_marked_stale(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", stale_after_s=0.5)

    with LoopbackClient(create_app(settings)) as client:
        run_id = client.post("/api/ingest/runs", json={}).json()["id"]
        run = wait_for_status(client, run_id, ("failed",), timeout_s=30)
    assert run["error"] == "stale: writer went silent"
    events = RunStore(tmp_path / "data").read_events(run_id)
    assert events[-1] == {**events[-1], "type": "status", "status": "failed",
                          "error": "stale: writer went silent"}


class ThreadServer:
    """The real app under uvicorn in a thread, so a test can stop and restart it on one port."""

    def __init__(self, data_dir, port: int, token: str | None = None):
        settings = Settings(data_dir=data_dir, port=port, token=token)
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _loop(recorder: Recorder, steps: range, driver, model, optimizer) -> None:
    for step in steps:
        loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 12)),
                                                 torch.randint(0, 3, (8,)))
        optimizer.zero_grad()
        loss.backward()
        driver.step()
        recorder.log(step, loss=loss.item())


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    driver = SparseDriver(model, optimizer, method="set", density=0.3, total_steps=60,
                          interval_steps=3)
    return model, optimizer, driver


class Proxy:
    """A TCP forwarder in front of the server: closing it makes the server unreachable."""

    def __init__(self, target_port: int):
        self.port = free_port()
        self.target_port = target_port
        self.listener: socket.socket | None = None

    def open(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        listener = self.listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def test_remote_recorder_spools_while_the_server_is_unreachable(tmp_path):
    port = free_port()
    proxy = Proxy(port)
    url = f"http://127.0.0.1:{proxy.port}"
    model, optimizer, driver = _model()
    masks = {}
    driver.listeners.append(lambda changes: masks.__setitem__(
        driver.step_count, [layer.mask.clone() for layer in driver.layers]))
    with ThreadServer(tmp_path / "data", port, token="secret"):
        proxy.open()
        recorder = Recorder(url=url, token="secret", name="far away", config={"seed": 0},
                            spool_dir=tmp_path / "spool", flush_interval_s=0.0)
        recorder.attach(driver)
        _loop(recorder, range(1, 21), driver, model, optimizer)
        recorder.writer._drain()
        proxy.close()  # unreachable: the loop goes on, batches wait in the spool file
        _loop(recorder, range(21, 41), driver, model, optimizer)
        recorder.flush()
        assert recorder.writer.spool_path.stat().st_size > 0
        proxy.open()
        _loop(recorder, range(41, 61), driver, model, optimizer)
        recorder.save_model(model, driver)
        recorder.finish("completed")
        assert not recorder.writer.spool_path.exists()
    store = RunStore(tmp_path / "data")
    run = store.get_run(recorder.run_id)
    assert run["status"] == "completed" and run["info"]["writer"] == "remote"
    assert run["info"]["torch"] == torch.__version__ and run["info"]["seed"] == 0
    events = store.read_events(recorder.run_id, 0, 100_000)
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert sorted(e["step"] for e in events if e["type"] == "metrics") == list(range(1, 61))
    reader = RunReader(store)
    for step, expected in masks.items():
        for index, mask in enumerate(expected):
            got = reader.mask_at(recorder.run_id, index, step)[0]
            assert (got == mask.reshape(got.shape).numpy()).all()
    assert store.get_artifact(recorder.run_id, "model.pt")


def test_a_writer_always_a_batch_behind_never_fills_its_spool(tmp_path):
    """The spool bounds what the server has not acknowledged, not what was ever written: a
    writer kept one or two batches behind a busy server for far more than the bound goes on,
    and its spool file stays about the bound."""
    port = free_port()
    bound = 4_000
    with ThreadServer(tmp_path / "data", port):
        recorder = Recorder(url=f"http://127.0.0.1:{port}", name="busy server",
                            spool_dir=tmp_path / "spool", flush_interval_s=0.0,
                            spool_max_bytes=bound)
        writer = recorder.writer
        gate = threading.Semaphore(0)
        send = writer._request

        def acknowledged_when_let(method, path, body=None, *args, **kwargs):
            if path.endswith("/events"):
                gate.acquire(timeout=30)
            return send(method, path, body, *args, **kwargs)

        writer._request = acknowledged_when_let
        largest_file = 0
        for step in range(1, 301):  # ~30 kB of batches in all, the bound 7 times over
            recorder.log(step, loss=1.0 / step)
            while len(writer._pending) > 2:  # the server takes one when two wait behind it
                gate.release()
                deadline = time.monotonic() + 30
                while len(writer._pending) > 2 and time.monotonic() < deadline:
                    time.sleep(0.001)
            largest_file = max(largest_file, writer.spool_path.stat().st_size)
        for _ in range(1000):
            gate.release()
        recorder.finish("completed")
    assert largest_file <= bound + 200
    store = RunStore(tmp_path / "data")
    events = store.read_events(recorder.run_id, 0, 100_000)
    assert [event["step"] for event in events if event["type"] == "metrics"] == list(range(1, 301))
    assert store.get_run(recorder.run_id)["status"] == "completed"


def test_remote_recorder_gives_up_clearly(tmp_path):
    port = free_port()
    with ThreadServer(tmp_path / "data", port):
        recorder = Recorder(url=f"http://127.0.0.1:{port}", name="doomed",
                            spool_dir=tmp_path / "spool", give_up_after_s=1.0,
                            flush_interval_s=0.0)
    with pytest.warns(RuntimeWarning, match="gave up"):
        recorder.log(1, loss=1.0)
        deadline = time.monotonic() + 30
        while recorder.writer._error is None and time.monotonic() < deadline:
            time.sleep(0.05)
    with pytest.raises(RemoteRecorderError, match="unreachable") as raised:
        recorder.log(2, loss=0.5)
    assert str(recorder.writer.spool_path) in str(raised.value)
    assert recorder.writer.spool_path.read_bytes().count(b"\n") == 1  # the batch is kept


def test_remote_recorder_refuses_a_wrong_token(tmp_path):
    port = free_port()
    with ThreadServer(tmp_path / "data", port, token="secret"):
        with pytest.raises(RemoteRecorderError, match="401"):
            Recorder(url=f"http://127.0.0.1:{port}", token="wrong", spool_dir=tmp_path)


def test_remote_run_survives_a_server_restart_and_resumes_from_the_spool(tmp_path):
    """The restarted server fails runs nobody records (fail_interrupted); a remote writer whose
    heartbeat is fresh is not one of them, and its spooled batches land once each."""
    port = free_port()
    model, optimizer, driver = _model()
    with ThreadServer(tmp_path / "data", port, token="secret"):
        recorder = Recorder(url=f"http://127.0.0.1:{port}", token="secret", name="restarted",
                            spool_dir=tmp_path / "spool", flush_interval_s=0.0)
        recorder.attach(driver)
        _loop(recorder, range(1, 21), driver, model, optimizer)
        recorder.writer._drain()
    _loop(recorder, range(21, 41), driver, model, optimizer)  # the server is down
    recorder.flush()
    assert recorder.writer.spool_path.stat().st_size > 0
    with ThreadServer(tmp_path / "data", port, token="secret"):
        _loop(recorder, range(41, 61), driver, model, optimizer)
        recorder.finish("completed")
    store = RunStore(tmp_path / "data")
    run = store.get_run(recorder.run_id)
    assert run["status"] == "completed", run["error"]
    events = store.read_events(recorder.run_id, 0, 100_000)
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert [e["step"] for e in events if e["type"] == "metrics"] == list(range(1, 61))
    assert [e["status"] for e in events if e["type"] == "status"] == ["running", "completed"]


def test_an_unreachable_server_at_creation_is_said_at_once_then_given_up(tmp_path):
    with pytest.warns(RuntimeWarning, match="unreachable .*retrying for up to 1 s"):
        with pytest.raises(RemoteRecorderError, match="unreachable for 1 s"):
            Recorder(url=f"http://127.0.0.1:{free_port()}", spool_dir=tmp_path, give_up_after_s=1.0)
