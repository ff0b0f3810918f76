"""GET /api/runs/{id}/speedup: per-layer format estimates from a cost table measured once."""

from __future__ import annotations

import importlib
import threading

import pytest

from backend.services import speedup as service
from tests.backend.test_overlap import record_run


def fake_cell(size: int, density: float, batch: int) -> dict[str, float]:
    """Dense costs size² per row; csr and condensed cost by active weights (with an overhead)."""
    numel = size * size
    return {"dense": 1e-6 * numel * batch, "csr": 1e-6 * (numel * density * 2 + 500) * batch,
            "condensed": 1e-6 * (numel * density * 3 + 500) * batch}


@pytest.fixture
def table():
    measured = service.CostTable(sizes=(4, 16, 64), densities=(0.1, 0.3, 0.9), measure=fake_cell)
    service.set_shared_table(measured)
    yield measured
    service.set_shared_table(None)


def test_speedup_answers_per_layer_formats_best_and_speedup(make_client, table, tmp_path):
    client = make_client()
    run_id = record_run(client.app.state.settings.data_dir, seed=1)
    rewires = client.get(f"/api/runs/{run_id}/rewires").json()
    response = client.get(f"/api/runs/{run_id}/speedup", params={"step": rewires["steps"][-1]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["batch"] == 1 and body["step"] == rewires["steps"][-1]
    assert [layer["layer"] for layer in body["layers"]] == [
        layer["name"] for layer in rewires["layers"]]
    for layer, listed in zip(body["layers"], rewires["layers"], strict=True):
        assert layer["shape"] == listed["shape"]
        assert layer["density"] == pytest.approx(listed["density"])
        assert set(layer["formats"]) == {"dense_ms", "csr_ms"}  # a SET run: no condensed
        times = {name[:-3]: ms for name, ms in layer["formats"].items()}
        assert layer["best"] == min(times, key=times.get) or layer["best"] == "dense"
        assert layer["speedup"] == pytest.approx(times["dense"] / times[layer["best"]], rel=1e-3)
        assert layer["speedup"] >= 1.0
    batch16 = client.get(f"/api/runs/{run_id}/speedup",
                         params={"step": rewires["steps"][-1], "batch": 16}).json()
    assert batch16["batch"] == 16
    assert batch16["layers"][0]["formats"]["dense_ms"] == pytest.approx(
        16 * body["layers"][0]["formats"]["dense_ms"], rel=1e-3)


def test_srigl_runs_get_the_condensed_format(make_client, table):
    client = make_client()
    run_id = record_run(client.app.state.settings.data_dir, seed=2, method="srigl")
    body = client.get(f"/api/runs/{run_id}/speedup", params={"step": 10**6}).json()
    assert all("condensed_ms" in layer["formats"] for layer in body["layers"])


def test_a_request_never_times_and_the_table_is_measured_once(make_client, table, monkeypatch):
    client = make_client()
    run_id = record_run(client.app.state.settings.data_dir, seed=3)
    for _ in range(3):
        assert client.get(f"/api/runs/{run_id}/speedup", params={"step": 10**6}).status_code == 200
    assert len(table.ms) == 3 * 3 * 2  # sizes × densities × batches, once
    compact_module = importlib.import_module("dst_core.compact")  # the name is the function
    calls = []
    monkeypatch.setattr(service, "measure_cell", lambda *args: calls.append(args))
    monkeypatch.setattr(compact_module, "measure_ms", lambda *a, **k: calls.append(a) or 1.0)
    assert client.get(f"/api/runs/{run_id}/speedup", params={"step": 10**6}).status_code == 200
    assert calls == []


def test_interpolation_is_exact_on_the_grid_and_clamped_outside(table):
    table.wait(5)
    exact = table.estimate(16, 16, 0.3, 1)
    assert exact["dense"] == pytest.approx(fake_cell(16, 0.3, 1)["dense"])
    assert exact["csr"] == pytest.approx(fake_cell(16, 0.3, 1)["csr"])
    between = table.estimate(32, 32, 0.3, 1)["dense"]
    assert fake_cell(16, 0.3, 1)["dense"] * 4 <= between * 1.0001
    huge = table.estimate(4096, 4096, 0.01, 16)  # beyond the grid: the largest's per-element cost
    assert huge["dense"] == pytest.approx(fake_cell(64, 0.1, 16)["dense"] / 64**2 * 4096**2)


def test_errors_missing_run_bad_step_and_a_table_still_measuring(make_client, monkeypatch):
    release = threading.Event()

    def slow(size, density, batch):
        release.wait(10)
        return fake_cell(size, density, batch)
    service.set_shared_table(service.CostTable(sizes=(4,), densities=(0.5,), batches=(1,),
                                               measure=slow))
    monkeypatch.setattr(service, "WAIT_S", 0.05)
    monkeypatch.setattr("backend.api.routes.speedup.WAIT_S", 0.05)
    try:
        client = make_client()
        run_id = record_run(client.app.state.settings.data_dir, seed=4)
        busy = client.get(f"/api/runs/{run_id}/speedup", params={"step": 5})
        assert busy.status_code == 200 and busy.headers["Retry-After"] == "5"
        assert busy.json()["pending"] is True and busy.json()["layers"] == []
        release.set()
        assert service.shared_table().wait(5)
        assert client.get(f"/api/runs/{run_id}/speedup", params={"step": 5}).status_code == 200
        assert client.get("/api/runs/0123456789abcdef/speedup",
                          params={"step": 1}).status_code == 404
        assert client.get(f"/api/runs/{run_id}/speedup", params={"step": -1}).status_code == 422
        assert client.get(f"/api/runs/{run_id}/speedup",
                          params={"step": 1, "batch": 3}).status_code == 422
    finally:
        release.set()
        service.set_shared_table(None)
