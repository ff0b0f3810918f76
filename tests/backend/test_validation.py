"""Bad input of every kind gets a 4xx that says what is wrong, never a 5xx."""

from __future__ import annotations

import pytest
from starlette.websockets import WebSocketDisconnect

from backend.app import create_app
from backend.settings import Settings
from dst_core.models import build_model
from dst_core.store.config import TASK_SHAPES, RunConfig
from dst_core.tasks import load_task
from tests.conftest import LoopbackClient

# (body, status, field named in the message)
BAD_CONFIGS = [
    ({"bogus": 3}, 422, "bogus"),
    ({"epochs": "ten"}, 422, "epochs"),
    ({"epochs": 1.5}, 422, "epochs"),
    ({"epochs": True}, 422, "epochs"),  # lax pydantic would read it as 1
    ({"l1": False}, 422, "l1"),
    ({"hidden": [64, True]}, 422, "hidden"),
    ({"epochs": 0}, 422, "epochs"),
    ({"epochs": 10**40}, 422, "epochs"),
    ({"hidden": "64"}, 422, "hidden"),
    ({"hidden": [64, "wide"]}, 422, "hidden"),
    ({"hidden": [0]}, 422, "hidden"),
    ({"hidden": [-5]}, 422, "hidden"),
    ({"hidden": [10**12]}, 422, "hidden"),
    ({"hidden": [4097]}, 422, "hidden"),
    ({"hidden": [16] * 9}, 422, "hidden"),
    ({"hidden": [4096] * 8, "task": "mnist", "model": "cnn", "epochs": 1}, 201, None),
    ({"density": 0}, 422, "density"),
    ({"density": 1.5}, 422, "density"),
    ({"density": "dense"}, 422, "density"),
    ({"drop_fraction": -0.1}, 422, "drop_fraction"),
    ({"lr": 0}, 422, "lr"),
    ({"lr": 1e9}, 422, "lr"),
    ({"momentum": 1}, 422, "momentum"),
    ({"batch_size": 0}, 422, "batch_size"),
    ({"seed": -1}, 422, "seed"),
    ({"interval_steps": 0}, 422, "interval_steps"),
    ({"keyframe_every": 0}, 422, "keyframe_every"),
    ({"temperature": 0}, 422, "temperature"),
    ({"name": "x" * 201}, 422, "name"),
    ({"method": "magic"}, 422, "method"),
    ({"method": None}, 422, "method"),
    ({"task": "imagenet"}, 422, "task"),
    ({"model": "transformer"}, 422, "model"),
    ({"model": "cnn", "task": "synthetic"}, 422, "model"),
    ({"optimizer": "lion"}, 422, "optimizer"),
    ({"distribution": "gaussian"}, 422, "distribution"),
    ({"schedule": "linear"}, 422, "schedule"),
    ({"device": "tpu"}, 422, "device"),
    ([1, 2], 422, "body"),
    ([], 422, "body"),
    ("a string", 422, "body"),
    (17, 422, "body"),
]
# Raw bodies: (bytes, content type, status, what the message mentions)
BAD_BODIES = [
    (b'{"epochs": 2', "application/json", 422, "malformed JSON"),
    (b"not json at all", "application/json", 422, "malformed JSON"),
    (b'{"lr": NaN}', "application/json", 422, "lr"),
    (b'{"temperature": Infinity}', "application/json", 422, "temperature"),
    (b'{"epochs": 2}', "text/plain", 422, "body"),
    # A UTF-16 byte-order mark: the parser decodes it as UTF-16, and finds no JSON value.
    (b"\xff\xfe\x00garbage", "application/json", 422, "body: malformed JSON at position 0"),
    (b'{"name": "\xff"}', "application/json", 400, "body: not valid JSON text (it is not UTF-8)"),
    (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "body: JSON nested too deeply"),
]
ODD_IDS = ["..%2F..", "..%2F..%2Fetc%2Fpasswd", "%00", "0123456789abcde%00", "." * 3,
           "0123456789ABCDEF", "0123456789abcdef0", "g" * 16, "a" * 10_000, "%2e%2e",
           "0123456789abcdef%2F..", "'; DROP TABLE runs; --"]


@pytest.fixture(scope="module")
def refusing(tmp_path_factory):
    """One app for the tests that only send what it must refuse (none of them stores a run,
    which test_bad_bodies checks after each)."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("refusals") / "data", warm_workers=0)
    with LoopbackClient(create_app(settings)) as client:
        yield client


def queue_only(client):
    """The client, its runs kept queued: these tests check what is accepted, not training
    (tests/backend/test_lifecycle.py), and a worker would build the model it was sent,
    8 × 4,096 wide, only to be killed by the delete."""
    client.app.state.manager._launch_queued = lambda: None
    return client


def _assert_names(response, field: str) -> None:
    body = response.json()
    messages = [item["msg"] for item in body["detail"]] if isinstance(body["detail"], list) else [
        body["detail"]]
    assert any(field in message for message in messages), messages


@pytest.mark.parametrize(("body", "status", "field"), BAD_CONFIGS,
                         ids=[str(case[0])[:40] for case in BAD_CONFIGS])
def test_bad_configs(make_client, body, status, field):
    client = queue_only(make_client(max_concurrent_runs=1))
    response = client.post("/api/runs", json=body)
    assert response.status_code == status, response.text
    if status == 422:
        _assert_names(response, field)
        assert response.json()["detail"][0]["loc"][0] == "body"
    else:
        client.delete(f"/api/runs/{response.json()['id']}")


@pytest.mark.parametrize(("raw", "content_type", "status", "mention"), BAD_BODIES,
                         ids=[case[0][:20].decode(errors="replace") for case in BAD_BODIES])
def test_bad_bodies(refusing, raw, content_type, status, mention):
    client = refusing
    response = client.post("/api/runs", content=raw, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    _assert_names(response, mention)
    assert client.get("/api/runs").json() == []  # nothing of a refused body is stored


def test_a_route_that_parses_its_own_bytes_names_malformed_json(make_client):
    # /api/ingest/ validates the raw body itself and locates a JSON error by its position.
    client = make_client()
    run_id = client.post("/api/ingest/runs", json={}).json()["id"]
    for raw in (b"garbage", b'{"events": [', b""):
        response = client.post(f"/api/ingest/runs/{run_id}/events", content=raw,
                               headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text
        loc = response.json()["detail"][0]["loc"]
        assert loc[0] == "body" and all(isinstance(part, int) for part in loc[1:]), loc
        _assert_names(response, "body: malformed JSON")


def test_oversized_body(make_client):
    client = make_client(max_body_bytes=4096)
    padding = " " * 5000
    response = client.post("/api/runs", content=b"{" + padding.encode() + b"}",
                           headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "too large" in response.json()["detail"]

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        for _ in range(10):
            yield b" " * 1000

    response = client.post("/api/runs", content=chunks(),
                           headers={"content-type": "application/json"})
    assert response.status_code == 413 and "too large" in response.json()["detail"]
    assert client.get("/api/runs").json() == []


@pytest.mark.parametrize("run_id", ODD_IDS, ids=[odd[:24] for odd in ODD_IDS])
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_odd_run_ids(refusing, run_id, method):
    client = refusing
    path = f"/api/runs/{run_id}" + ("/stop" if method == "POST" else "")
    response = client.request(method, path)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["detail"]


def test_odd_run_ids_on_the_websocket(refusing):
    client = refusing
    for run_id in ("%00", "a" * 5000, "0123456789abcdef", "'; DROP TABLE runs; --"):
        with client.websocket_connect(f"/ws/runs/{run_id}") as socket:
            message = socket.receive_json()
        assert message["type"] == "error" and "no run" in message["error"]
    # A decoded slash leaves the route: the handshake itself is refused.
    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/ws/runs/..%2F..%2Fruns.sqlite3") as socket:
            socket.receive_json()


def test_dense_ignores_density(make_client):
    client = queue_only(make_client())
    response = client.post("/api/runs", json={"method": "dense", "density": 7, "epochs": 1})
    assert response.status_code == 201, response.text
    assert response.json()["config"]["density"] == 1.0
    client.delete(f"/api/runs/{response.json()['id']}")


def test_defaults_admit_the_promised_sizes(make_client):
    client = queue_only(make_client())
    response = client.post("/api/runs", json={"epochs": 1000, "hidden": [4096] * 8,
                                              "task": "mnist"})
    assert response.status_code == 201, response.text
    client.delete(f"/api/runs/{response.json()['id']}")


def test_limits_are_settings_and_name_the_field(make_client):
    client = make_client(max_epochs=5, max_width=100, max_layers=2, max_parameters=10_000)
    cases = [({"epochs": 6}, "epochs"), ({"epochs": 1, "hidden": [101]}, "hidden"),
             ({"epochs": 1, "hidden": [8, 8, 8]}, "hidden"),
             ({"epochs": 1, "hidden": [100, 100]}, "hidden")]
    for body, field in cases:
        response = client.post("/api/runs", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["body", field]
        _assert_names(response, field)
    parameters = client.post("/api/runs", json={"epochs": 1, "hidden": [100, 100]}).json()
    assert "parameters" in parameters["detail"][0]["msg"]


# Dense parameters of hidden=[37, 5], counted by hand: an MLP has fan_in·out + out per layer
# (in → 37 → 5 → classes); the CNN's two 3×3 convs (1→16, 16→32 channels: 160 and 4,640)
# and two 2×2 pools feed 32·(side/4)² inputs to that MLP.
PARAMETERS_37_5 = {
    ("synthetic", "mlp"): (20 * 37 + 37) + (37 * 5 + 5) + (5 * 2 + 2),  # 979
    ("digits", "mlp"): (64 * 37 + 37) + (37 * 5 + 5) + (5 * 10 + 10),  # 2,655
    ("mnist", "mlp"): (784 * 37 + 37) + (37 * 5 + 5) + (5 * 10 + 10),  # 29,295
    ("digits", "cnn"): 160 + 4640 + (32 * 2 * 2 * 37 + 37) + (37 * 5 + 5) + (5 * 10 + 10),
    ("mnist", "cnn"): 160 + 4640 + (32 * 7 * 7 * 37 + 37) + (37 * 5 + 5) + (5 * 10 + 10),
}


@pytest.mark.parametrize("task", sorted(TASK_SHAPES))
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_parameter_count_matches_the_built_model(task, model):
    if model == "cnn" and task == "synthetic":  # no images to convolve: refused, saying so
        with pytest.raises(ValueError, match="'cnn' needs an image task .*not 'synthetic'"):
            RunConfig(task=task, model=model, hidden=[37, 5])
        return
    config = RunConfig(task=task, model=model, hidden=[37, 5])
    loaded = load_task(task)
    assert TASK_SHAPES[task] == (loaded.input_shape, loaded.num_classes)
    built = build_model(model, loaded.input_shape, config.hidden, loaded.num_classes)
    assert config.parameter_count() == sum(p.numel() for p in built.parameters()) \
        == PARAMETERS_37_5[task, model]


def test_config_schema_is_in_openapi(make_client):
    schema = make_client().get("/openapi.json").json()["components"]["schemas"]["RunConfig"]
    assert set(schema["properties"]) == set(RunConfig.model_fields)
    assert schema.get("additionalProperties") is False
    assert "required" not in schema  # every field has a default


def _refs(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_openapi_refs_resolve_and_every_route_documents_its_errors(make_client):
    client = make_client()
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    for ref in _refs(spec):
        assert ref.startswith("#/"), ref
        node = spec
        for part in ref[2:].split("/"):
            assert part in node, f"{ref} does not resolve"
            node = node[part]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = set(operation["responses"])
            if path != "/api/health":
                assert "401" in responses, (method, path)
            if "{run_id}" in path:
                assert "404" in responses, (method, path)
            if method in ("post", "put") and path.startswith("/api/") and "{run_id}/" not in path:
                assert {"400", "413"} <= responses, (method, path)


def test_cuda_needs_a_gpu(make_client):
    import torch

    client = queue_only(make_client())
    response = client.post("/api/runs", json={"device": "cuda", "epochs": 1, "hidden": [8]})
    if torch.cuda.is_available():
        assert response.status_code == 201, response.text
        client.delete(f"/api/runs/{response.json()['id']}")
    else:
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "device"]
        assert "GPU" in response.json()["detail"][0]["msg"]
