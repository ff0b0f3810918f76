"""GET /api/runs/{id}/speedup: per-layer format estimates from a cost table measured once."""

from __future__ import annotations

import importlib
import itertools
import json
import threading
import time

import numpy as np
import pytest

from backend.services import speedup as service
from tests.backend.test_overlap import mask_of, record_run


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
    # Denser than the grid: a sparse format's cost grows with the active count, dense's does not.
    full = table.estimate(16, 16, 1.0, 1)
    assert full["csr"] == pytest.approx(fake_cell(16, 0.9, 1)["csr"] / 0.9)
    assert full["dense"] == pytest.approx(fake_cell(16, 0.9, 1)["dense"])


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


def test_the_measured_table_is_kept_per_machine_and_read_back_without_measuring(tmp_path):
    """Measured once, kept in the cache folder under a name of what its figures depend on; a
    second table reads it (nothing measured); a file that is torn, edited to a figure no
    measurement gives, short of a cell or of another machine is measured over, never used."""
    grid = {"sizes": (4, 16), "densities": (0.1, 0.5), "batches": (1, 16)}
    path = tmp_path / "cost-table.json"
    calls = []

    def counted(size, density, batch):
        calls.append((size, density, batch))
        return fake_cell(size, density, batch)

    first = service.CostTable(**grid, measure=counted, cache_file=path)
    assert first.wait(5) and not first.cached and len(calls) == 8
    stored = json.loads(path.read_text())
    assert stored["key"] == service.machine_key(**grid) and len(stored["cells"]) == 8

    def refuse(*args):
        raise AssertionError("measured although the file holds the table")
    second = service.CostTable(**grid, measure=refuse, cache_file=path)
    assert second.wait(5) and second.cached and second.error is None and second.ms == first.ms
    assert second.estimate(16, 16, 0.5, 16) == first.estimate(16, 16, 0.5, 16)

    def hostile(text: str) -> None:
        path.write_text(text)
        calls.clear()
        table = service.CostTable(**grid, measure=counted, cache_file=path)
        assert table.wait(5) and not table.cached and len(calls) == 8, text[:60]
        assert json.loads(path.read_text())["cells"][0]["ms"]["dense"] > 0  # written anew

    good = json.dumps(stored)
    hostile(good[:len(good) // 2])  # torn
    for bad in (-1.0, 0.0, float("nan"), 1e300, "fast", None):
        edited = json.loads(good)
        edited["cells"][3]["ms"]["csr"] = bad
        hostile(json.dumps(edited))
    short = json.loads(good)
    short["cells"].pop()
    hostile(json.dumps(short))
    other = json.loads(good)
    other["key"]["cpu"] = "another machine"
    hostile(json.dumps(other))
    hostile('["not", "a", "table"]')
    # The real table's default file is named by the machine's key, under SPARSESCOPE_CACHE_DIR.
    assert service.default_cache_file(**grid) != service.default_cache_file(
        sizes=(4,), densities=(0.1,), batches=(1,))
    assert service.CostTable(**grid, measure=counted).cache_file is None  # a caller's measure


def test_the_default_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSESCOPE_CACHE_DIR", str(tmp_path / "named"))
    assert service.cache_folder() == tmp_path / "named"
    assert service.CostTable().cache_file.parent == tmp_path / "named"
    monkeypatch.delenv("SPARSESCOPE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert service.cache_folder() == tmp_path / "xdg" / "sparsescope"


# ---- distance to structure ------------------------------------------------------------------
def brute_moved(mask: np.ndarray, allowed) -> int:
    """Fewest active connections of `mask` outside a mask with the same active count that
    `allowed(candidate)` accepts: every candidate of the mask's size tried."""
    rows, cols = mask.shape
    active = int(mask.sum())
    best = None
    for bits in itertools.combinations(range(rows * cols), active):
        candidate = np.zeros(rows * cols, dtype=bool)
        candidate[list(bits)] = True
        candidate = candidate.reshape(rows, cols)
        if allowed(candidate):
            moved = int((mask & ~candidate).sum())
            best = moved if best is None else min(best, moved)
    return best


def nearly_constant_fan_in(candidate: np.ndarray) -> bool:
    fan_in = candidate.sum(axis=1)
    return int(fan_in.max()) - int(fan_in.min()) <= 1


def two_of_four(candidate: np.ndarray) -> bool:
    rows, cols = candidate.shape
    padded = np.pad(candidate, ((0, 0), (0, (-cols) % 4)))
    return bool((padded.reshape(rows, -1, 4).sum(axis=2) <= 2).all())


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("shape", [(3, 4), (2, 8), (4, 3), (2, 6)])
def test_distances_equal_a_brute_force_search(seed, shape):
    rng = np.random.default_rng(seed)
    rows, cols = shape
    mask = rng.random(shape) < rng.uniform(0.15, 0.5)
    if not mask.any():
        mask[0, 0] = True
    active = int(mask.sum())
    found = service.structure_distances(mask)
    assert found["active"] == active
    assert found["to_constant_fan_in"] * active == pytest.approx(
        brute_moved(mask, nearly_constant_fan_in))
    if active <= rows * ((cols + 3) // 4) * 2 and active <= rows * cols:
        assert found["to_2_4"] * active == pytest.approx(brute_moved(mask, two_of_four))
    assert (found["note"] is None) == (cols % 4 == 0)


def test_structured_masks_are_at_distance_zero_and_a_hand_example():
    import torch

    from dst_core.structure import constant_fan_in_mask

    constant = constant_fan_in_mask((16, 32), 5, torch.Generator().manual_seed(0)).numpy()
    assert service.structure_distances(constant)["to_constant_fan_in"] == 0.0
    two_four = np.zeros((8, 16), dtype=bool)
    rng = np.random.default_rng(1)
    for row in range(8):
        for group in range(4):
            two_four[row, group * 4 + rng.choice(4, size=rng.integers(0, 3), replace=False)] = True
    assert service.structure_distances(two_four)["to_2_4"] == 0.0
    # Hand example: fan-ins 4, 1, 1 (A = 6, target 2 each): 2 of the first row's move → 2/6.
    # Its first row's group of 4 holds 4: 2 move for 2:4 → 2/6; the others hold 1 each.
    hand = np.array([[1, 1, 1, 1, 0, 0, 0, 0],
                     [0, 0, 0, 0, 1, 0, 0, 0],
                     [0, 0, 0, 0, 0, 0, 0, 1]], dtype=bool)
    found = service.structure_distances(hand)
    assert found == {"active": 6, "to_constant_fan_in": pytest.approx(2 / 6),
                     "to_2_4": pytest.approx(2 / 6), "note": None}
    # A remainder: fan-ins 3, 2, 0 (A = 5: targets 2, 2, 1): the fullest keeps 2, 1 moves.
    remainder = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    assert service.structure_distances(remainder)["to_constant_fan_in"] == pytest.approx(1 / 5)
    assert service.structure_distances(np.zeros((3, 3), dtype=bool))["to_2_4"] == 0.0
    assert "fewer than 4" in service.structure_distances(np.ones((2, 3), dtype=bool))["note"]


def test_distances_are_fast_on_a_large_layer():
    mask = np.random.default_rng(0).random((4096, 11008)) < 0.1
    started = time.perf_counter()
    found = service.structure_distances(mask)
    assert time.perf_counter() - started < 1.0
    fan_in = mask.sum(axis=1)
    assert found["active"] == int(fan_in.sum())


def test_speedup_answers_both_batches_and_the_distances_of_each_mask(make_client, table):
    client = make_client()
    run_id = record_run(client.app.state.settings.data_dir, seed=5)
    rewires = client.get(f"/api/runs/{run_id}/rewires").json()
    step = rewires["steps"][2]
    body = client.get(f"/api/runs/{run_id}/speedup", params={"step": step}).json()
    batch16 = client.get(f"/api/runs/{run_id}/speedup", params={"step": step, "batch": 16}).json()
    for layer, other, listed in zip(body["layers"], batch16["layers"], rewires["layers"],
                                    strict=True):
        assert layer["speedups"]["1"] == {"best": layer["best"],
                                          "speedup": pytest.approx(layer["speedup"])}
        assert layer["speedups"]["16"] == {"best": other["best"],
                                           "speedup": pytest.approx(other["speedup"])}
        mask = mask_of(client, run_id, listed["index"], step)[0].reshape(listed["shape"])
        expected = service.structure_distances(mask)
        assert layer["to_constant_fan_in"] == pytest.approx(expected["to_constant_fan_in"])
        assert layer["to_2_4"] == pytest.approx(expected["to_2_4"])
    model = body["model"]
    dense = sum(layer["formats"]["dense_ms"] for layer in body["layers"])
    best = sum(layer["formats"][f"{layer['best']}_ms"] for layer in body["layers"])
    assert model["speedup_b1"] == pytest.approx(dense / best, rel=1e-3)


def test_series_shape_and_values_follow_the_per_step_answers(make_client, table):
    client = make_client()
    run_id = record_run(client.app.state.settings.data_dir, seed=6, rewires=6)
    rewires = client.get(f"/api/runs/{run_id}/rewires").json()
    series = client.get(f"/api/runs/{run_id}/speedup/series", params={"points": 4}).json()
    assert series["pending"] is False and series["rewires"] == len(rewires["steps"]) - 1
    assert 2 <= len(series["step"]) <= 4
    assert series["step"][0] == rewires["steps"][0] and series["step"][-1] == rewires["steps"][-1]
    count = len(series["step"])
    assert [layer["layer"] for layer in series["layers"]] == [
        layer["name"] for layer in rewires["layers"]]
    keys = ("density", "speedup_b1", "best_b1", "speedup_b16", "best_b16",
            "to_constant_fan_in", "to_2_4")
    for layer in series["layers"]:
        assert all(len(layer[key]) == count for key in keys)
    assert all(len(values) == count for values in series["model"].values())
    step = series["step"][1]
    at = client.get(f"/api/runs/{run_id}/speedup", params={"step": step}).json()
    for layer, one in zip(series["layers"], at["layers"], strict=True):
        assert layer["speedup_b1"][1] == pytest.approx(one["speedups"]["1"]["speedup"])
        assert layer["speedup_b16"][1] == pytest.approx(one["speedups"]["16"]["speedup"])
        assert layer["to_2_4"][1] == pytest.approx(one["to_2_4"])
        assert layer["to_constant_fan_in"][1] == pytest.approx(one["to_constant_fan_in"])
        assert layer["density"][1] == pytest.approx(one["density"])
    assert series["model"]["speedup_b1"][1] == pytest.approx(at["model"]["speedup_b1"])
    everything = client.get(f"/api/runs/{run_id}/speedup/series", params={"points": 100}).json()
    assert everything["step"] == rewires["steps"]


@pytest.mark.parametrize("count", [1, 2, 3, 7, 8, 9, 50, 101, 1000])
@pytest.mark.parametrize("points", [2, 3, 10, 100])
def test_picked_rewires_are_evenly_spread_bounded_and_stable(count, points):
    picked = service.picked_rewires(count, points)
    assert len(picked) <= points and picked[0] == 0 and picked[-1] == count - 1
    assert picked == sorted(set(picked))
    gaps = {b - a for a, b in zip(picked[:-2], picked[1:-1], strict=True)}
    assert len(gaps) <= 1  # one stride, the newest aside
    if count <= points:
        assert picked == list(range(count))
    # One more rewire keeps every pick but the newest, or thins them to a subset.
    grown = service.picked_rewires(count + 1, points)
    assert set(grown) - {count} <= set(picked) | {count - 1} or set(grown) <= set(picked) | {count}


def test_series_errors(make_client, table):
    client = make_client()
    run_id = record_run(client.app.state.settings.data_dir, seed=7)
    assert client.get("/api/runs/0123456789abcdef/speedup/series").status_code == 404
    for points in (1, 101, "x"):
        assert client.get(f"/api/runs/{run_id}/speedup/series",
                          params={"points": points}).status_code == 422
