"""GET /api/runs/{id}/rewire-series: per-layer active/added/removed over the rewires, in at most
`buckets` ranges, checked against the run's stored `rewire` events."""

import json

import numpy as np
import torch
from torch import nn

from dst_core import SparseDriver
from dst_core.recording import Recorder


def recorded(data_dir, steps: int = 7) -> str:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    driver = SparseDriver(model, optimizer, method="set", density=0.5, total_steps=steps + 1,
                          interval_steps=1, seed=0)
    with Recorder(data_dir, name="series", seed=0) as recorder:
        recorder.attach(driver)
        for _ in range(steps):
            loss = model(torch.randn(4, 10)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            driver.step()
            recorder.log(driver.step_count, loss=float(loss.detach()))
    return recorder.run_id


def stored_rewires(client, run_id):
    store = client.app.state.store
    rows = store.db.execute("SELECT step, payload FROM events WHERE run_id = ? AND type = 'rewire' "
                            "ORDER BY seq", (run_id,)).fetchall()
    return [(step, json.loads(payload)) for step, payload in rows]


def test_buckets_keep_the_last_active_count_and_sum_the_changes(make_client, tmp_path):
    client = make_client(data_dir=tmp_path / "data")
    run_id = recorded(tmp_path / "data")
    events = stored_rewires(client, run_id)
    assert len(events) == 7
    answer = client.get(f"/api/runs/{run_id}/rewire-series", params={"buckets": 3}).json()
    assert answer["rewires"] == 7
    assert [layer["name"] for layer in answer["layers"]] == ["0.weight", "2.weight"]
    assert [layer["size"] for layer in answer["layers"]] == [80, 32]
    ends = [(b + 1) * 7 // 3 - 1 for b in range(3)]  # buckets of consecutive rewires
    starts = [0] + [end + 1 for end in ends[:-1]]
    assert answer["steps"] == [events[end][0] for end in ends]
    for row, name in enumerate(["0.weight", "2.weight"]):
        assert answer["active"][row] == [events[end][1]["layers"][name]["active"] for end in ends]
        for key in ("added", "removed"):
            sums = [sum(events[i][1]["layers"][name][key] for i in range(start, end + 1))
                    for start, end in zip(starts, ends, strict=True)]
            assert answer[key][row] == sums and sum(sums) > 0
    turnover = [np.mean([events[i][1]["turnover"] for i in range(start, end + 1)])
                for start, end in zip(starts, ends, strict=True)]
    assert answer["turnover"] == [float(value) for value in turnover]
    # More buckets than rewires: one per rewire.
    every = client.get(f"/api/runs/{run_id}/rewire-series", params={"buckets": 100}).json()
    assert every["steps"] == [step for step, _ in events]


def test_bad_input_is_named_and_a_run_without_rewires_is_empty(make_client, tmp_path):
    client = make_client(data_dir=tmp_path / "data")
    with Recorder(tmp_path / "data", name="no topology", seed=0) as recorder:
        recorder.log(1, loss=1.0)
    answer = client.get(f"/api/runs/{recorder.run_id}/rewire-series").json()
    assert answer["rewires"] == 0 and answer["steps"] == [] and answer["layers"] == []
    bad = client.get(f"/api/runs/{recorder.run_id}/rewire-series", params={"buckets": 0})
    assert bad.status_code == 422 and "buckets" in bad.text
    assert client.get("/api/runs/0123456789abcdef/rewire-series").status_code == 404
