"""A run recorded from a user's own loop is labelled by what it ran, into a folder or a server."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dst_core import SparseDriver
from dst_core.recording import Recorder
from dst_core.store import RunStore
from tests.backend.test_ingest import ThreadServer
from tests.conftest import free_port


class TinyCNN(nn.Module):
    """Conv + BatchNorm + a linear head: a model no built-in name describes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.norm(self.conv(x)))
        return self.head(nn.functional.max_pool2d(x, 2).flatten(1))


def record_script_run(**recorder_options) -> str:
    """The issue's script: RigL at density 0.2, rewire every 10, a Recorder with no config."""
    torch.manual_seed(0)
    model = TinyCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    driver = SparseDriver(model, optimizer, method="rigl", density=0.2, interval_steps=10,
                          total_steps=40)
    images, labels = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    with Recorder(**recorder_options) as rec:
        rec.attach(driver)
        for step in range(1, 41):
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            driver.step()
            rec.log(step, loss=loss.item())
            if step % 20 == 0:
                rec.eval(step, test_loss=loss.item(), test_accuracy=0.25)
    return rec.run_id


def check_labelled_by_what_it_ran(run: dict, events: list[dict]) -> None:
    settings = run["settings"]
    assert settings["method"] == "rigl" and settings["density"] == pytest.approx(0.2)
    assert settings["interval_steps"] == 10 and settings["total_steps"] == 40
    assert settings["model"].startswith("custom: TinyCNN (") and "params" in settings["model"]
    assert settings["model_class"] == "TinyCNN"
    assert settings["parameter_count"] == sum(p.numel() for p in TinyCNN().parameters())
    assert [layer["name"] for layer in settings["layers"]] == ["conv.weight", "head.weight"]
    assert run["config"] == {}  # the script passed none: no form default stands in for it
    text = json.dumps({key: run[key] for key in ("name", "config", "settings")})
    for unused in ('"mlp', "[64, 64]", '"set"', '"synthetic"'):
        assert unused not in text, unused
    evals = [event for event in events if event["type"] == "eval"]
    assert [event["step"] for event in evals] == [20, 40]
    assert evals[-1]["test_accuracy"] == 0.25
    assert run["summary"]["best_test_accuracy"] == 0.25


def test_a_script_run_into_a_folder_is_labelled_by_its_driver(tmp_path, make_client):
    data_dir = tmp_path / "data"
    run_id = record_script_run(data_dir=data_dir)
    client = make_client(data_dir=data_dir)
    run = client.get(f"/api/runs/{run_id}").json()
    listed = {item["id"]: item for item in client.get("/api/runs").json()}[run_id]
    # The list shows a projection of the same row (docs/api.md#the-runs-list).
    for key in ("name", "status", "created_at", "heartbeat_at", "has_model", "unreadable"):
        assert listed[key] == run[key], key
    assert listed["settings"] == {key: run["settings"][key]
                                  for key in ("task", "model", "method", "density")}
    assert listed["summary"] == {key: run["summary"][key] for key in listed["summary"]}
    assert listed["info"] == {"writer": "script"}
    store = RunStore(data_dir)
    check_labelled_by_what_it_ran(run, store.read_events(run_id, 0, 100_000))


def test_a_script_run_through_a_server_is_labelled_alike(tmp_path, make_client):
    port = free_port()
    with ThreadServer(tmp_path / "data", port):
        run_id = record_script_run(url=f"http://127.0.0.1:{port}", spool_dir=tmp_path / "spool")
    store = RunStore(tmp_path / "data")
    run = make_client(data_dir=tmp_path / "data").get(f"/api/runs/{run_id}").json()
    check_labelled_by_what_it_ran(run, store.read_events(run_id, 0, 100_000))
    assert run["info"]["writer"] == "remote"


def test_eval_and_log_refuse_what_is_not_a_number(tmp_path):
    with Recorder(tmp_path) as rec:
        with pytest.raises(ValueError, match="test_accuracy"):
            rec.eval(1, test_accuracy="high")
        with pytest.raises(ValueError, match="metrics"):
            rec.eval(1)
        with pytest.raises(ValueError, match="step"):
            rec.log(-1, loss=0.5)
        rec.eval(2, test_accuracy=torch.tensor(0.5))
    events = RunStore(tmp_path).read_events(rec.run_id)
    assert [(e["step"], e["test_accuracy"]) for e in events if e["type"] == "eval"] == [(2, 0.5)]


def test_settings_survive_an_info_update_and_model_is_flagged(tmp_path):
    store = RunStore(tmp_path)
    run = store.create_run({}, "x", status="running")
    store.append_events(run["id"], [("meta", 0, {"settings": {"method": "rigl"}})])
    store.set_info(run["id"], {"writer": "worker"})
    again = store.get_run(run["id"])
    assert again["settings"] == {"method": "rigl"} and again["info"] == {"writer": "worker"}
    assert not again["has_model"]
    store.put_artifact(run["id"], "model.pt", b"weights")
    assert store.get_run(run["id"])["has_model"]
    assert [item["has_model"] for item in store.list_runs()] == [True]
