"""A user-registered method runs through RunConfig, train(), the CLI and the server."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from dst_core import REGISTRY, register_rewirer
from dst_core.recording.training import train
from dst_core.store.config import RunConfig


@pytest.fixture
def tiny_method(monkeypatch):
    """Registers tests.plugins.tiny_method's "tiny" (as importing it does) and removes it
    after the test, so other tests see only the built-in methods."""
    import tests.plugins.tiny_method as plugin

    register_rewirer("tiny", plugin.LowestIndexGrowth)
    monkeypatch.setenv("SPARSESCOPE_PLUGINS", "tests.plugins.tiny_method")
    yield "tiny"
    REGISTRY.pop("tiny", None)
    sys.modules.pop("tests.plugins.tiny_method", None)


class Events:
    def __init__(self):
        self.events = []

    def emit(self, type, step, payload):
        self.events.append((type, step, payload))


def test_unknown_method_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="method") as refused:
        RunConfig(method="tiny")
    known = ", ".join(sorted(REGISTRY))  # the registry as it is now: no "tiny" in it
    assert f"unknown method 'tiny'; known: {known}" in str(refused.value)


def test_registered_method_is_a_config_value_and_trains(tiny_method):
    config = RunConfig(method="tiny", task="synthetic", epochs=1, hidden=[16],
                       interval_steps=10)
    assert "tiny" in RunConfig.model_json_schema()["properties"]["method"]["enum"]
    sink = Events()
    assert train(config, sink) == "completed"
    meta = next(payload for type, _, payload in sink.events if type == "meta")
    assert meta["method"] == "tiny"
    rewires = [payload for type, _, payload in sink.events if type == "rewire"]
    frames = [payload for type, _, payload in sink.events if type == "topology"]
    grown = assert_lowest_free_growth(frames)
    # Every rewire's counts are the frames' own, and the method did rewire the model.
    assert sum(layer["added"] for r in rewires for layer in r["layers"].values()) == grown > 0


def assert_lowest_free_growth(frames: list[dict]) -> int:
    """Replays each layer's frames (in-process: `bits` and `added`/`removed` as numpy) and
    checks every rewire grew what LowestIndexGrowth grows: the lowest inactive flat indices.
    Growth takes the lowest indices among the inactive and the just-dropped positions, so
    the *net* additions are exactly the first `len(added)` inactive ones. Returns how many
    connections grew in all."""
    masks: dict[int, np.ndarray] = {}
    grown = 0
    for frame in frames:
        numel = frame["shape"][0] * frame["shape"][1]
        if frame["keyframe"]:
            masks[frame["index"]] = np.unpackbits(np.asarray(frame["bits"], np.uint8),
                                                  bitorder="little", count=numel).astype(bool)
            continue
        mask = masks[frame["index"]]  # (numel,) bool, before this rewire
        added, removed = np.asarray(frame["added"]), np.asarray(frame["removed"])
        lowest_free = np.flatnonzero(~mask)[:added.size]
        assert np.array_equal(added, lowest_free), (frame["layer"], added, lowest_free)
        assert mask[removed].all()
        mask[added], mask[removed] = True, False
        assert int(mask.sum()) == frame["active"]
        grown += added.size
    return grown


def test_registered_method_through_the_cli(tiny_method, tmp_path):
    from backend.cli import main
    from dst_core.store import RunStore

    assert main(["train", "--method", "tiny", "--task", "synthetic", "--epochs", "1",
                 "--hidden", "8", "--quiet", "--data-dir", str(tmp_path)]) == 0
    (run,) = RunStore(tmp_path).list_runs()
    assert run["config"]["method"] == "tiny" and run["status"] == "completed"


def test_registered_method_through_the_server_worker(tiny_method, tmp_path):
    from backend.app import create_app
    from backend.settings import Settings
    from tests.conftest import LoopbackClient  # as a browser on this machine: Host 127.0.0.1

    with LoopbackClient(create_app(Settings(data_dir=tmp_path / "data"))) as client:
        assert "tiny" in client.get("/openapi.json").text
        response = client.post("/api/runs", json={"method": "tiny", "epochs": 1,
                                                  "hidden": [8]})
        assert response.status_code == 201, response.text
        run_id = response.json()["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            run = client.get(f"/api/runs/{run_id}").json()
            if run["status"] in ("completed", "failed", "stopped"):
                break
            time.sleep(0.2)
        assert run["status"] == "completed", run.get("error")
        assert run["config"]["method"] == "tiny"  # stored as given, not rewritten
