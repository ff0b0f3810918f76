"""GET /api/compare/overlap (+ /series): every answer against brute force from the runs'
`/mask` answers, for recorded runs of two seeds and the same seed twice (Jaccard 1.0), on a
conv and two Linear layers; the refusals (run count, repeats, shapes, missing layers, steps
before any mask, unknown runs) and stored data that does not read (a 422, never a 5xx)."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch

from backend.services.overlap import (
    _apply_delta,
    packed,
    random_jaccard,
    shared_counts,
    shared_rows,
)
from dst_core import SparseDriver
from dst_core.events import keyframe_payload
from dst_core.recording import Recorder


class SmallNet(torch.nn.Module):
    """A conv layer (channels × 1×3×3 → matrix channels × 9), then two Linear layers."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, channels, 3)
        self.fc1 = torch.nn.Linear(channels * 16, 12)
        self.fc2 = torch.nn.Linear(12, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


def record_run(data_dir, seed: int, method: str = "set", channels: int = 4,
               rewires: int = 6) -> str:
    """A short training run rewired every 2 steps (a keyframe every 4 rewires): the same
    seed gives the same masks."""
    torch.manual_seed(seed)
    model = SmallNet(channels)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    driver = SparseDriver(model, optimizer, method=method, density=0.3, total_steps=4 * rewires,
                          interval_steps=2, drop_fraction=0.5, schedule="constant",
                          end_fraction=1.0, distribution="uniform", seed=seed)
    data = torch.Generator().manual_seed(7)
    x, y = torch.randn(16, 1, 6, 6, generator=data), torch.randint(0, 3, (16,), generator=data)
    with Recorder(data_dir, name=f"seed {seed}", keyframe_every=4, heartbeat_s=0) as recorder:
        recorder.attach(driver)
        for step in range(1, 2 * rewires + 1):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            driver.step()
            recorder.log(step, loss=loss.item())
    return recorder.run_id


def mask_of(client, run_id: str, layer, step: int) -> tuple[np.ndarray, int] | None:
    """(flat bool mask, its frame step) as GET /mask answers it; None when it has none."""
    response = client.get(f"/api/runs/{run_id}/mask", params={"layer": layer, "step": step})
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    body = response.json()
    numel = body["shape"][0] * body["shape"][1]
    bits = np.frombuffer(base64.b64decode(body["bits"]), dtype=np.uint8)
    return np.unpackbits(bits, bitorder="little", count=numel).astype(bool), body["frame_step"]


def brute_overlap(masks: list[np.ndarray]) -> tuple[list[list[float]], list[list[int]]]:
    """Jaccard and shared counts of every pair, position by position."""
    count = len(masks)
    jaccard = [[1.0] * count for _ in range(count)]
    shared = [[0] * count for _ in range(count)]
    for i in range(count):
        for j in range(count):
            both = int(np.logical_and(masks[i], masks[j]).sum())
            either = int(np.logical_or(masks[i], masks[j]).sum())
            shared[i][j] = both
            if i != j:
                jaccard[i][j] = both / either if either else 1.0
    return jaccard, shared


def layer_steps(client, run_id: str, index: int) -> list[int]:
    return client.app.state.store.frame_steps(run_id, index)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Three runs of one model: seeds 0, 1 and 0 again; and one with 6 conv channels."""
    folder = tmp_path_factory.mktemp("overlap")
    return folder, {"seed0": record_run(folder, 0), "seed1": record_run(folder, 1),
                    "again": record_run(folder, 0), "wide": record_run(folder, 2, channels=6)}


@pytest.fixture
def app_client(recorded, make_client):
    folder, runs = recorded
    return make_client(data_dir=folder), runs


def overlap(client, runs: list[str], **params):
    return client.get("/api/compare/overlap", params={"runs": ",".join(runs), **params})


def test_overlap_equals_brute_force_from_the_masks(app_client):
    client, runs = app_client
    ids = [runs["seed0"], runs["seed1"], runs["again"]]
    steps = layer_steps(client, ids[0], 0)
    assert len(steps) >= 4
    probes = [0, steps[1], steps[2] + 1, steps[-1], None]
    for index, name in enumerate(("conv.weight", "fc1.weight", "fc2.weight")):
        for step in probes:
            params = {"layer": name if step else index}
            if step is not None:
                params["step"] = step
            response = overlap(client, ids, **params)
            assert response.status_code == 200, response.text
            got = response.json()
            found = [mask_of(client, run_id, index, 10**9 if step is None else step)
                     for run_id in ids]
            masks = [mask for mask, _ in found]
            jaccard, shared = brute_overlap(masks)
            assert got["runs"] == ids and got["layer"] == name and got["index"] == index
            assert got["step"] == step
            assert got["steps"] == [frame_step for _, frame_step in found]
            assert got["rewires"] == [layer_steps(client, run_id, index).index(frame_step)
                                      for run_id, (_, frame_step) in zip(ids, found, strict=True)]
            assert got["shape"] == list(client.get(
                f"/api/runs/{ids[0]}/mask", params={"layer": index, "step": 0}).json()["shape"])
            assert got["numel"] == masks[0].size
            assert got["active"] == [int(mask.sum()) for mask in masks]
            assert got["shared"] == shared
            assert np.allclose(got["jaccard"], jaccard, rtol=0, atol=1e-12)
            # the same seed twice: identical masks
            assert got["jaccard"][0][2] == 1.0 and got["shared"][0][2] == got["active"][0]
            densities = np.array([mask.mean() for mask in masks])
            d1, d2 = densities[0], densities[1]
            assert got["random_jaccard"][0][1] == pytest.approx(d1 * d2 / (d1 + d2 - d1 * d2))
            assert [got["random_jaccard"][i][i] for i in range(3)] == [1.0] * 3
    # two seeds differ somewhere after rewiring
    last = overlap(client, ids[:2], layer="fc1.weight").json()
    assert last["jaccard"][0][1] < 1.0


def test_the_series_equals_brute_force_at_each_grid_step(app_client):
    client, runs = app_client
    ids = [runs["seed0"], runs["seed1"], runs["again"]]
    response = client.get("/api/compare/overlap/series",
                          params={"runs": ",".join(ids), "layer": "conv.weight"})
    assert response.status_code == 200, response.text
    got = response.json()
    grid = sorted(set().union(*(layer_steps(client, run_id, 0) for run_id in ids)))
    assert got["steps"] == grid and got["pairs"] == [[0, 1], [0, 2], [1, 2]]
    for column, step in enumerate(grid):
        masks = [mask_of(client, run_id, 0, step)[0] for run_id in ids]
        jaccard, shared = brute_overlap(masks)
        densities = np.array([mask.mean() for mask in masks])
        reference = random_jaccard(densities)
        for pair, (i, j) in enumerate(got["pairs"]):
            assert got["jaccard"][pair][column] == pytest.approx(jaccard[i][j], abs=1e-12)
            assert got["random_jaccard"][pair][column] == pytest.approx(reference[i, j])
        assert [got["active"][run][column] for run in range(3)] == [int(m.sum()) for m in masks]
    assert got["jaccard"][1] == [1.0] * len(grid)  # seed 0 and seed 0 again
    few = client.get("/api/compare/overlap/series",
                     params={"runs": ",".join(ids), "layer": 0, "points": 2}).json()
    assert few["steps"] == [grid[0], grid[-1]]
    assert few["jaccard"][0] == [got["jaccard"][0][0], got["jaccard"][0][-1]]


def test_a_run_without_a_mask_yet_is_null_in_the_series_and_a_422_at_a_step(client):
    store = client.app.state.store
    shape = (5, 7)
    rng = np.random.default_rng(0)
    ids = []
    for first_step in (0, 10):
        run_id = store.create_run({}, f"from {first_step}", status="running")["id"]
        mask = rng.random(shape) < 0.4
        store.append_events(run_id, [
            ("meta", 0, {"layers": [{"name": "w", "shape": list(shape), "matrix": list(shape),
                                     "density": 0.4}]}),
            ("topology", first_step, keyframe_payload("w", 0, shape, torch.from_numpy(mask))),
            ("topology", 20, keyframe_payload("w", 0, shape,
                                              torch.from_numpy(rng.random(shape) < 0.4)))])
        store.set_status(run_id, "completed")
        ids.append(run_id)
    early = overlap(client, ids, layer="w", step=5)
    assert early.status_code == 422
    assert early.json()["detail"][0]["loc"] == ["query", "step"]
    assert ids[1] in early.json()["detail"][0]["msg"]
    series = client.get("/api/compare/overlap/series",
                        params={"runs": ",".join(ids), "layer": "w"}).json()
    assert series["steps"] == [0, 10, 20]
    assert series["jaccard"][0][0] is None and series["jaccard"][0][1] is not None
    assert series["active"][1][0] is None
    assert overlap(client, ids, layer="w", step=10).status_code == 200


def test_refusals_name_the_field(app_client):
    client, runs = app_client
    ids = [runs["seed0"], runs["seed1"]]

    def field_of(response) -> str:
        assert response.status_code == 422, response.text
        return response.json()["detail"][0]["loc"][-1]

    assert field_of(overlap(client, ids[:1], layer=0)) == "runs"
    assert field_of(overlap(client, [ids[0], ids[0]], layer=0)) == "runs"
    many = [f"{n:016x}" for n in range(17)]
    assert field_of(overlap(client, many, layer=0)) == "runs"
    assert field_of(client.get("/api/compare/overlap/series",
                               params={"runs": ",".join(many), "layer": 0})) == "runs"
    assert overlap(client, [ids[0], "0123456789abcdef"], layer=0).status_code == 404
    assert overlap(client, [ids[0], "../etc"], layer=0).status_code == 404
    assert field_of(overlap(client, ids, layer="nope")) == "layer"
    assert field_of(overlap(client, ids, layer=0, step=-1)) == "step"
    assert client.get("/api/compare/overlap", params={"layer": 0}).status_code == 422
    assert field_of(client.get("/api/compare/overlap/series",
                               params={"runs": ",".join(ids), "layer": 0, "points": 1})) == \
        "points"
    # a conv of 6 channels: its matrix is 6 × 9, not 4 × 9; fc1's input differs too
    for layer in ("conv.weight", 0, "fc1.weight"):
        response = overlap(client, [ids[0], runs["wide"]], layer=layer)
        assert field_of(response) == "layer"
        message = response.json()["detail"][0]["msg"]
        assert ids[0] in message and runs["wide"] in message
    assert "4×9" in overlap(client, [ids[0], runs["wide"]], layer=0).json()["detail"][0]["msg"]
    # fc2 (3 × 12) has the same shape in both: compared
    assert overlap(client, [ids[0], runs["wide"]], layer="fc2.weight").status_code == 200


def test_cached_answers_and_stored_data_that_does_not_read(client):
    store = client.app.state.store
    ids = [record_run(store.data_dir, seed, rewires=3) for seed in (0, 1)]
    first = overlap(client, ids, layer=1)
    assert first.status_code == 200 and first.headers["cache-control"].startswith("private")
    again = client.get("/api/compare/overlap", params={"runs": ",".join(ids), "layer": 1},
                       headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    steps = store.frame_steps(ids[1], 1)
    store.db.execute("UPDATE events SET blob = x'01ff00' WHERE run_id = ? AND layer = 1 "
                     "AND step = ?", (ids[1], steps[1]))
    client.app.state.layer_views.chains.cache.clear()
    client.app.state.overlap.answers.clear()  # stored frames never change but here
    assert overlap(client, ids, layer=1, step=steps[0]).status_code == 200
    broken = overlap(client, ids, layer=1, step=steps[1])
    assert broken.status_code == 422
    assert "stored data" in broken.json()["detail"] and ids[1] in broken.json()["detail"]
    series = client.get("/api/compare/overlap/series", params={"runs": ",".join(ids),
                                                               "layer": 1})
    assert series.status_code == 422 and "stored data" in series.json()["detail"]
    store.db.execute("UPDATE events SET payload = 'not json' WHERE run_id = ? AND layer = 1 "
                     "AND step = ?", (ids[0], steps[2]))
    client.app.state.layer_views.chains.cache.clear()
    assert overlap(client, ids, layer=1).status_code == 422
    store.db.execute("DELETE FROM events WHERE run_id = ? AND type = 'meta'", (ids[0],))
    assert overlap(client, ids, layer=1).status_code == 422  # no layers at all in run 0


@pytest.mark.parametrize("numel", [1, 63, 64, 1000, (1 << 14) * 64 + 37])
def test_shared_counts_are_exact_on_packed_bits(numel):
    rng = np.random.default_rng(numel)
    masks = [rng.random(numel) < density for density in (0.0, 0.1, 0.5, 0.97)]
    shared = shared_counts([packed(mask) for mask in masks])
    want = [[int(np.logical_and(a, b).sum()) for b in masks] for a in masks]
    assert shared.tolist() == want
    # A series' recount of some rows: the same counts, row by row.
    rows = shared_rows([packed(mask) for mask in masks], [3, 1])
    assert rows.tolist() == [want[3], want[1]]


@pytest.mark.parametrize("changes", [1, 5, 40, 1000])
def test_a_delta_applied_to_packed_bits_equals_the_mask(changes):
    """Both ways a delta is applied (few changes: into their bytes; many: the whole layer
    unpacked and packed again) give the mask's packed bits."""
    rng = np.random.default_rng(changes)
    numel = 64 * 100 + 13
    mask = rng.random(numel) < 0.3
    words = packed(mask)
    removed = np.sort(rng.choice(np.flatnonzero(mask), changes, replace=False))
    added = np.sort(rng.choice(np.flatnonzero(~mask), changes, replace=False))
    mask[removed], mask[added] = False, True
    _apply_delta(words, added.astype(np.uint32), removed.astype(np.uint32))
    assert np.array_equal(words, packed(mask))


def test_overlap_is_in_the_openapi_schema(client):
    spec = client.get("/openapi.json").json()
    for path, model in (("/api/compare/overlap", "Overlap2D"),
                        ("/api/compare/overlap/series", "OverlapSeries")):
        schema = spec["paths"][path]["get"]["responses"]["200"]
        assert schema["content"]["application/json"]["schema"]["$ref"].endswith(model)
    fields = spec["components"]["schemas"]["Overlap2D"]["properties"]
    for field in ("layer", "index", "shape", "step", "runs", "steps", "rewires", "active",
                  "numel", "jaccard", "shared", "random_jaccard"):
        assert field in fields


def test_frames_an_older_version_stored_that_do_not_fit_are_skipped_as_mask_skips_them(client):
    """Rows written directly (as versions before the frame checks could): the overlap at each
    step and the series (which walks the frames itself) equal the masks `/mask` answers."""
    from tests.backend.test_frame_checks import SHAPE, delta, good_start, insert_legacy, keyframe

    store = client.app.state.store
    ids = []
    for legacy in (False, True):
        run_id = store.create_run({}, "legacy" if legacy else "plain", status="running")["id"]
        store.append_events(run_id, [*good_start(), ("topology", 10, delta([1], [0], 12))])
        if legacy:
            last = store.last_seq(run_id)
            insert_legacy(store, run_id, last + 1, 20, delta([3], [5], 12))  # 5 is not active
            insert_legacy(store, run_id, last + 2, 30, keyframe(np.ones(SHAPE, bool), active=3))
            insert_legacy(store, run_id, last + 3, 40, delta([5], [1], 12, shape=(6, 4)))
            insert_legacy(store, run_id, last + 4, 50, delta([7], [1], 12))
        else:
            store.append_events(run_id, [("topology", 35, delta([3, 5], [1, 2], 12))])
        store.set_status(run_id, "completed")
        ids.append(run_id)
    series = client.get("/api/compare/overlap/series",
                        params={"runs": ",".join(ids), "layer": "fc1"}).json()
    assert series["steps"] == [0, 10, 20, 30, 35, 40, 50]
    for column, step in enumerate(series["steps"]):
        masks = [mask_of(client, run_id, "fc1", step)[0] for run_id in ids]
        jaccard, shared = brute_overlap(masks)
        assert series["jaccard"][0][column] == pytest.approx(jaccard[0][1]), step
        assert [series["active"][run][column] for run in (0, 1)] == [int(m.sum()) for m in masks]
        got = overlap(client, ids, layer="fc1", step=step).json()
        assert got["shared"] == shared and np.allclose(got["jaccard"], jaccard), step
