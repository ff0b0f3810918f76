"""GET /api/runs/{id}/topology (+ /series, /model): every field against brute force from the
stored masks, for a run recorded now, one recorded before weights existed, an imported one,
a live one that grows, and stored runs that do not decode (never a 5xx)."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch

from backend.services.topology_reader import linear_chains
from dst_core import SparseDriver
from dst_core.events import delta_payload, keyframe_payload
from dst_core.recording import Recorder
from dst_core.store import RunReader, topology_index
from dst_core.store.masks import StoredDataError
from dst_core.store.run_store import RunStore
from tests.dst_core.test_analytics import brute_chain, brute_degrees, brute_history


class ConvNet(torch.nn.Module):
    """A conv layer (4 × 1×3×3 → matrix 4 × 9), then an MLP-shaped Linear chain."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc1 = torch.nn.Linear(4 * 4 * 4, 12)
        self.fc2 = torch.nn.Linear(12, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


def record_training_run(data_dir, method: str = "rigl", rewires: int = 9) -> str:
    torch.manual_seed(0)
    model = ConvNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    driver = SparseDriver(model, optimizer, method=method, density=0.3, total_steps=4 * rewires,
                          interval_steps=2, drop_fraction=0.5, schedule="constant",
                          end_fraction=1.0)
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,))
    with Recorder(data_dir, name="topology", keyframe_every=4, heartbeat_s=0) as recorder:
        recorder.attach(driver)
        for step in range(1, 2 * rewires + 1):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            driver.step()
            recorder.log(step, loss=loss.item())
    return recorder.run_id


def record_old_style_run(store, rewires: int = 6) -> str:
    """A run as older writers stored it: meta, keyframes and deltas, no weights anywhere, no
    cohort index (the store indexes what it writes: those rows are taken out again)."""
    rng = np.random.default_rng(4)
    shapes = [(5, 7), (3, 5)]
    run_id = store.create_run({}, "old", status="running")["id"]
    masks = [rng.random(shape) < 0.4 for shape in shapes]
    events = [("meta", 0, {"layers": [{"name": f"l{i}.weight", "shape": list(shape),
                                       "matrix": list(shape), "density": 0.4}
                                      for i, shape in enumerate(shapes)]})]
    for index, mask in enumerate(masks):
        events.append(("topology", 0, keyframe_payload(f"l{index}.weight", index, mask.shape,
                                                       torch.from_numpy(mask))))
    for rewire in range(1, rewires + 1):
        events.append(("rewire", 10 * rewire, {"layers": {}}))
        for index, mask in enumerate(masks):
            flat = mask.reshape(-1)
            drop = rng.choice(np.flatnonzero(flat), 2, replace=False)
            grow = rng.choice(np.flatnonzero(~flat), 2, replace=False)
            flat[drop] = False
            flat[grow] = True
            events.append(("topology", 10 * rewire, delta_payload(
                f"l{index}.weight", index, mask.shape, np.sort(grow), np.sort(drop),
                int(flat.sum()))))
    store.append_events(run_id, events)
    store.set_status(run_id, "completed")
    store.db.execute("DELETE FROM topology_index WHERE run_id = ?", (run_id,))
    return run_id


def stored_masks(store, run_id: str, index: int) -> tuple[list[int], list[np.ndarray]]:
    """Every rewire's mask of one layer, through the plain mask reader (an independent path)."""
    steps = sorted({row[0] for row in store.db.execute(
        "SELECT step FROM events WHERE run_id = ? AND layer = ? ORDER BY seq",
        (run_id, index)).fetchall()})
    reader = RunReader(store)
    return steps, [reader.mask_at(run_id, index, step)[0] for step in steps]


def check_against_brute_force(client, run_id: str) -> list[dict]:
    store = client.app.state.store
    layers = RunReader(store).layers(run_id)
    answers = []
    for index, meta in enumerate(layers):
        steps, masks = stored_masks(store, run_id, index)
        assert len(steps) >= 2
        for rewire, (step, mask) in enumerate(zip(steps, masks, strict=True)):
            probe = step + 1 if rewire + 1 < len(steps) and steps[rewire + 1] > step + 1 else step
            response = client.get(f"/api/runs/{run_id}/topology",
                                  params={"layer": meta["name"] if rewire % 2 else index,
                                          "step": probe})
            assert response.status_code == 200, response.text
            got = response.json()
            want = brute_history(masks, rewire)
            assert (got["layer"], got["index"], got["rewire"], got["step"]) == \
                (meta["name"], index, rewire, step)
            assert got["requested_step"] == probe and got["shape"] == list(mask.shape)
            for key in ("age", "survival", "repruned_next", "distance_initial",
                        "distance_previous", "active"):
                assert got[key] == want[key], (key, index, rewire)
            degrees = brute_degrees(mask)
            for key in ("fan_in", "fan_out", "dead_in", "dead_out"):
                assert got[key] == degrees[key], (key, index, rewire)
            mean, std, top = degrees["fan_in_stats"]
            assert got["fan_in_stats"]["max"] == top
            assert got["fan_in_stats"]["mean"] == pytest.approx(mean)
            assert got["fan_in_stats"]["std"] == pytest.approx(std)
            answers.append(got)
    return answers


def test_a_recorded_run_answers_every_field_exactly(client, tmp_path):
    client.app.state.topology.cache.clear()
    run_id = record_training_run(client.app.state.store.data_dir, "rigl")
    answers = check_against_brute_force(client, run_id)
    conv = [answer for answer in answers if answer["layer"] == "conv.weight"]
    assert conv[0]["shape"] == [4, 9]  # output channels × (input channel × kernel position)
    # ERK makes the 36-weight fc2 dense: it takes no part in a rewire, so it has no weights
    rewired = {"conv.weight", "fc1.weight"}
    later = [answer for answer in answers if answer["rewire"] > 0 and answer["layer"] in rewired]
    assert later and all(answer["weights"] is not None for answer in later)
    assert all(answer["weights"] is None for answer in answers if answer["rewire"] == 0)
    some = later[0]["weights"]
    assert some["levels"][0] == 0.0 and some["levels"][-1] == 1.0
    assert some["grown"]["quantiles"] is None or some["grown"]["quantiles"][-1] == 0.0  # RigL
    stored = client.app.state.store.db.execute(
        "SELECT payload FROM events WHERE run_id = ? AND type = 'rewire' ORDER BY seq LIMIT 1",
        (run_id,)).fetchone()[0]
    assert '"weights"' in stored  # recorded by the driver, read back as it was stored


def test_a_run_recorded_before_weights_answers_without_inventing_them(client):
    client.app.state.topology.cache.clear()
    run_id = record_old_style_run(client.app.state.store)
    answers = check_against_brute_force(client, run_id)
    assert answers and all(answer["weights"] is None for answer in answers)


def test_an_imported_run_answers_like_the_original(client):
    client.app.state.topology.cache.clear()
    store = client.app.state.store
    run_id = record_training_run(store.data_dir, "set", rewires=5)
    copy = client.post("/api/runs/import",
                       content=client.get(f"/api/runs/{run_id}/export").content).json()["id"]
    for step in (0, 3, 6, 100):
        original = client.get(f"/api/runs/{run_id}/topology", params={"layer": 1, "step": step})
        imported = client.get(f"/api/runs/{copy}/topology", params={"layer": 1, "step": step})
        assert original.status_code == imported.status_code == 200
        assert original.json() == imported.json()


def test_a_growing_run_is_followed_and_series_and_model_answer(client):
    client.app.state.topology.cache.clear()
    store = client.app.state.store
    run_id = record_old_style_run(store, rewires=3)
    first = client.get(f"/api/runs/{run_id}/topology", params={"layer": 0, "step": 10**6}).json()
    assert first["rewire"] == 3
    rng = np.random.default_rng(9)
    mask = RunReader(store).mask_at(run_id, 0, 30)[0].reshape(-1).copy()
    drop = np.sort(rng.choice(np.flatnonzero(mask), 3, replace=False))
    grow = np.sort(rng.choice(np.flatnonzero(~mask), 3, replace=False))
    mask[drop], mask[grow] = False, True
    store.append_events(run_id, [("topology", 40, delta_payload("l0.weight", 0, (5, 7), grow,
                                                                 drop, int(mask.sum())))])
    second = client.get(f"/api/runs/{run_id}/topology", params={"layer": 0, "step": 40}).json()
    assert second["rewire"] == 4 and second["distance_previous"] == 3 / mask.sum()
    assert second["age"][0] == [0, 3]

    series = client.get(f"/api/runs/{run_id}/topology/series",
                        params={"layer": "l0.weight"}).json()
    steps, masks = stored_masks(store, run_id, 0)
    assert series["step"] == steps and series["rewire"] == list(range(5))
    for r, stored in enumerate(masks):
        brute = brute_degrees(stored)
        assert [[d, n] for d, n in enumerate(series["fan_in_counts"][r]) if n] == brute["fan_in"]
        assert series["dead_in"][r] == brute["dead_in"]
        assert series["distance_initial"][r] == brute_history(masks, r)["distance_initial"]
    assert series["repruned_next"] == brute_history(masks, 4)["repruned_next"]
    few = client.get(f"/api/runs/{run_id}/topology/series", params={"layer": 0, "points": 2})
    assert few.json()["rewire"] == [0, 4]

    model = client.get(f"/api/runs/{run_id}/topology/model", params={"step": 40}).json()
    assert [layer["layer"] for layer in model["layers"]] == ["l0.weight", "l1.weight"]
    chain = model["chains"][0]
    masks_now = [RunReader(store).mask_at(run_id, index, 40)[0] for index in (0, 1)]
    effective, cut_in, cut_out, unused = brute_chain(masks_now)
    assert chain["layers"] == ["l0.weight", "l1.weight"]
    assert chain["effective_params"] == effective and chain["inputs_unused"] == unused
    assert [layer["cut_from_input"] for layer in chain["per_layer"]] == cut_in
    assert [layer["cut_from_output"] for layer in chain["per_layer"]] == cut_out


def test_linear_chains_follow_matching_shapes():
    def linear(rows, cols):
        return {"kind": "linear", "matrix": [rows, cols]}

    layers = [{"kind": "conv", "matrix": [4, 9]}, linear(8, 16), linear(5, 8), linear(2, 5),
              linear(3, 7), linear(9, 3), {"kind": "conv", "matrix": [1, 9]}, linear(1, 4)]
    assert linear_chains(layers) == [[1, 2, 3], [4, 5]]


def test_linear_chains_leave_attention_projections_out():
    """q→k→v→o→gate line up by shape in a LLaMA block but are no chain: a layer with a head
    layout ends one; the MLP's up→down is one."""
    def linear(rows, cols, heads=None):
        return {"kind": "linear", "matrix": [rows, cols], **({"heads": heads} if heads else {})}

    heads = {"axis": "out", "count": 4, "size": 4, "parts": None}
    block = [linear(16, 16, heads), linear(16, 16, heads), linear(16, 16, heads),
             linear(16, 16, {**heads, "axis": "in"}), linear(40, 16), linear(40, 16), linear(16, 40)]
    assert linear_chains(block + block) == [[5, 6], [12, 13]]


def test_the_whole_model_answer_equals_the_masks_at_every_step(client, tmp_path):
    """/topology/model reads each layer's summary from its cohort index and a chain's masks
    from the index's checkpoints where it holds them: at every step (on a rewire, between two,
    the newest) the answer equals degrees and chains computed from the stored masks."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.ReLU(), torch.nn.Linear(20, 9),
                                torch.nn.ReLU(), torch.nn.Linear(9, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    driver = SparseDriver(model, optimizer, method="set", density=0.3, total_steps=40,
                          interval_steps=5, seed=0)
    store = client.app.state.store
    with Recorder(store.data_dir, name="model answer") as recorder:
        recorder.attach(driver)
        for step in range(1, 31):
            loss = model(torch.randn(8, 12)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            driver.step()
            recorder.log(step, loss=loss.item())
    run_id = recorder.run_id
    reader = RunReader(store)
    for step in (0, 5, 7, 15, 25, 30, 10**6):
        client.app.state.topology.cache.clear()
        client.app.state.layer_views.chains.cache.clear()
        answer = client.get(f"/api/runs/{run_id}/topology/model", params={"step": step}).json()
        masks = [reader.mask_at(run_id, index, step) for index in range(3)]
        for layer, (mask, frame_step) in zip(answer["layers"], masks, strict=True):
            brute = brute_degrees(mask)
            assert layer["step"] == frame_step and layer["shape"] == list(mask.shape)
            assert layer["active"] == int(mask.sum())
            assert layer["density"] == pytest.approx(mask.mean())
            assert layer["dead_in"] == brute["dead_in"] and layer["dead_out"] == brute["dead_out"]
            assert layer["fan_in_stats"]["max"] == max(d for d, _ in brute["fan_in"])
            assert layer["fan_in_stats"]["mean"] == pytest.approx(mask.sum(axis=1).mean())
            assert layer["fan_out_stats"]["std"] == pytest.approx(mask.sum(axis=0).std())
        effective, cut_in, cut_out, unused = brute_chain([mask for mask, _ in masks])
        chain = answer["chains"][0]
        assert chain["effective_params"] == effective and chain["inputs_unused"] == unused
        assert [layer["cut_from_input"] for layer in chain["per_layer"]] == cut_in
        assert [layer["cut_from_output"] for layer in chain["per_layer"]] == cut_out


def test_bad_requests_and_broken_runs_never_answer_5xx(client):
    client.app.state.topology.cache.clear()
    store = client.app.state.store
    run_id = record_old_style_run(store)
    url = f"/api/runs/{run_id}/topology"
    assert client.get(url, params={"layer": "nope", "step": 5}).status_code == 404
    assert client.get(url, params={"layer": 0, "step": -1}).status_code == 422
    assert client.get(url, params={"layer": 0, "step": 10**23}).status_code == 422
    assert client.get(url, params={"layer": 0}).status_code == 422
    assert client.get("/api/runs/0123456789abcdef/topology?layer=0&step=1").status_code == 404
    # A delta that does not decode: rewires before it still answer, later ones 422 naming it.
    store.db.execute("UPDATE events SET blob = x'01ffff' WHERE run_id = ? AND type = 'topology' "
                     "AND layer = 0 AND step = 40", (run_id,))
    client.app.state.topology.cache.clear()
    assert client.get(url, params={"layer": 0, "step": 35}).status_code == 200
    broken = client.get(url, params={"layer": 0, "step": 45})
    assert broken.status_code == 422 and "stored data" in broken.json()["detail"]
    assert "seq" in broken.json()["detail"]
    model = client.get(f"/api/runs/{run_id}/topology/model", params={"step": 45})
    assert model.status_code == 200 and "error" in model.json()["layers"][0]
    # A header that is not JSON, and a run whose meta is gone.
    store.db.execute("UPDATE events SET payload = 'not json' WHERE run_id = ? AND layer = 1 "
                     "AND step = 20", (run_id,))
    client.app.state.topology.cache.clear()
    client.app.state.layer_views.chains.cache.clear()  # /model decoded that delta before
    assert client.get(url, params={"layer": 1, "step": 45}).status_code == 422
    assert client.get(f"{url}/series", params={"layer": 1}).status_code == 200
    store.db.execute("DELETE FROM events WHERE run_id = ? AND type = 'meta'", (run_id,))
    for path in (url, f"{url}/series"):
        response = client.get(path, params={"layer": 0, "step": 45})
        assert response.status_code == 404, (path, response.text)
    model = client.get(f"{url}/model", params={"step": 45})
    assert model.status_code == 200 and model.json()["layers"] == []


def test_topology_is_in_the_openapi_schema(client):
    spec = client.get("/openapi.json").json()
    for path in ("/api/runs/{run_id}/topology", "/api/runs/{run_id}/topology/series",
                 "/api/runs/{run_id}/topology/model"):
        assert path in spec["paths"]
    schema = spec["paths"]["/api/runs/{run_id}/topology"]["get"]["responses"]["200"]
    assert schema["content"]["application/json"]["schema"]["$ref"].endswith("LayerTopology")
    fields = spec["components"]["schemas"]["LayerTopology"]["properties"]
    for field in ("layer", "step", "fan_in", "fan_out", "fan_in_stats", "fan_out_stats",
                  "dead_in", "dead_out", "age", "survival", "repruned_next", "distance_initial",
                  "distance_previous", "weights"):
        assert field in fields


def index_rows(store, run_id: str) -> dict[int, list[tuple[int, int]]]:
    rows = store.db.execute("SELECT layer, first_rewire, last_rewire FROM topology_index "
                            "WHERE run_id = ? ORDER BY layer, first_rewire", (run_id,))
    found: dict[int, list[tuple[int, int]]] = {}
    for layer, first, last in rows:
        found.setdefault(layer, []).append((first, last))
    return found


def frames_per_layer(store, run_id: str) -> dict[int, int]:
    rows = store.db.execute("SELECT layer, COUNT(*) FROM events WHERE run_id = ? AND "
                            "type = 'topology' GROUP BY layer", (run_id,))
    return {layer: count for layer, count in rows}


@pytest.fixture
def replayed(monkeypatch):
    """How many stored frames the topology reader replays (0: answered from the index)."""
    count = {"frames": 0}
    original = topology_index.take_stored

    def counting(indexer, row, *args):
        count["frames"] += 1
        return original(indexer, row, *args)

    monkeypatch.setattr(topology_index, "take_stored", counting)
    return count


def test_a_recorded_run_is_indexed_as_it_is_written_and_answers_without_replaying(
        client, monkeypatch, replayed):
    """The writer stores the cohort index with the frames (segments of SEGMENT_REWIRES, the
    rest when the run ends): a cold request reads it and replays no frame."""
    from dst_core.store import cohorts

    monkeypatch.setattr(cohorts, "SEGMENT_REWIRES", 3)
    client.app.state.topology.cache.clear()
    store = client.app.state.store
    run_id = record_training_run(store.data_dir, "rigl", rewires=9)
    rows, frames = index_rows(store, run_id), frames_per_layer(store, run_id)
    assert sorted(rows) == sorted(frames)
    for layer, segments in rows.items():
        assert segments[0][0] == 0 and segments[-1][1] == frames[layer] - 1  # every frame in
        assert all(b[0] == a[1] + 1 for a, b in zip(segments, segments[1:], strict=False))
    assert max(len(segments) for segments in rows.values()) > 2
    replayed["frames"] = 0
    check_against_brute_force(client, run_id)
    assert replayed["frames"] == 0


def test_a_run_stored_without_an_index_is_indexed_from_its_frames_once(client, replayed):
    client.app.state.topology.cache.clear()
    store = client.app.state.store
    run_id = record_old_style_run(store, rewires=6)
    assert not index_rows(store, run_id)
    check_against_brute_force(client, run_id)
    assert replayed["frames"] == sum(frames_per_layer(store, run_id).values())
    assert sorted(index_rows(store, run_id)) == [0, 1]  # an ended run: what was replayed is kept
    client.app.state.topology.cache.clear()
    replayed["frames"] = 0
    check_against_brute_force(client, run_id)
    assert replayed["frames"] == 0


def test_a_live_run_and_a_restarted_writer_keep_one_contiguous_index(client, monkeypatch):
    """Frames written in batches by two store instances (a writer that restarts mid-run): the
    second resumes from the stored checkpoint; live requests answer the unsegmented rewires."""
    from dst_core.store import cohorts

    monkeypatch.setattr(cohorts, "SEGMENT_REWIRES", 4)
    client.app.state.topology.cache.clear()
    store = client.app.state.store
    rng = np.random.default_rng(21)
    shape = (6, 9)
    mask = rng.random(shape).reshape(-1) < 0.4
    run_id = store.create_run({}, "live", status="running")["id"]
    meta = {"layers": [{"name": "w", "shape": list(shape), "matrix": list(shape),
                        "density": 0.4}]}
    writer = RunStore(store.data_dir)
    writer.append_events(run_id, [("meta", 0, meta), ("topology", 0, keyframe_payload(
        "w", 0, shape, torch.from_numpy(mask.reshape(shape))))])
    for rewire in range(1, 15):
        if rewire == 7:
            writer = RunStore(store.data_dir)  # a new process: resumes from the store
        drop = np.sort(rng.choice(np.flatnonzero(mask), 4, replace=False))
        pool = np.flatnonzero(~mask)
        pool = pool[rng.random(pool.size) < 0.6] if rewire % 3 else pool  # regrowth of drops
        grow = np.sort(rng.choice(pool, 4, replace=False))
        mask[drop], mask[grow] = False, True
        if rewire % 5 == 0:
            payload = keyframe_payload("w", 0, shape, torch.from_numpy(mask.reshape(shape)))
        else:
            payload = delta_payload("w", 0, shape, grow, drop, int(mask.sum()))
        writer.append_events(run_id, [("topology", 10 * rewire, payload)])
        if rewire in (2, 6, 9, 14):  # live: answered from the index and the newest frames
            steps, masks = stored_masks(store, run_id, 0)
            got = client.get(f"/api/runs/{run_id}/topology",
                             params={"layer": 0, "step": 10 * rewire}).json()
            assert got["survival"] == brute_history(masks, rewire)["survival"]
            assert got["age"] == brute_history(masks, rewire)["age"]
    assert index_rows(store, run_id)[0] == [(0, 3), (4, 7), (8, 11)]
    writer.set_status(run_id, "completed")
    assert index_rows(store, run_id)[0] == [(0, 3), (4, 7), (8, 11), (12, 14)]
    client.app.state.topology.cache.clear()
    check_against_brute_force(client, run_id)


def test_a_stored_index_that_disagrees_with_the_frames_is_not_used(client, monkeypatch):
    """A damaged index row (a header that does not parse, a blob cut short, counts that do not
    match the frames) is never served: the layer is replayed from its frames instead."""
    from dst_core.store import cohorts

    monkeypatch.setattr(cohorts, "SEGMENT_REWIRES", 3)
    store = client.app.state.store
    run_id = record_training_run(store.data_dir, "set", rewires=9)
    damages = [
        "UPDATE topology_index SET header = 'not json' WHERE run_id = ? AND first_rewire = 3",
        "UPDATE topology_index SET blob = substr(blob, 1, 10) WHERE run_id = ? "
        "AND first_rewire = 0",
        "UPDATE topology_index SET header = replace(header, '\"active\":[', "
        "'\"active\":[1,') WHERE run_id = ?",
    ]
    for damage in damages:
        store.db.execute(damage, (run_id,))
        client.app.state.topology.cache.clear()
        check_against_brute_force(client, run_id)


def test_ingested_frames_are_indexed_by_the_server(client):
    """A remote writer's frames (the ingest path, base64 on the wire) are indexed by the
    server's store in the same transaction, and a resent batch is not indexed twice."""
    from dst_core.events import to_wire

    client.app.state.topology.cache.clear()
    store = client.app.state.store
    rng = np.random.default_rng(5)
    shape = (4, 6)
    mask = rng.random(shape).reshape(-1) < 0.5
    run_id = store.create_run({}, "remote", status="running", status_event=False)["id"]
    meta = {"layers": [{"name": "w", "shape": list(shape), "matrix": list(shape),
                        "density": 0.5}]}
    events = [{"seq": 1, "step": 0, "type": "meta", **meta},
              {"seq": 2, "step": 0, "type": "topology", **to_wire(keyframe_payload(
                  "w", 0, shape, torch.from_numpy(mask.reshape(shape))))}]
    for rewire in range(1, 6):
        drop = np.sort(rng.choice(np.flatnonzero(mask), 2, replace=False))
        grow = np.sort(rng.choice(np.flatnonzero(~mask), 2, replace=False))
        mask[drop], mask[grow] = False, True
        events.append({"seq": 2 + rewire, "step": rewire, "type": "topology",
                       **to_wire(delta_payload("w", 0, shape, grow, drop, int(mask.sum())))})
    store.ingest_events(run_id, events[:4])
    store.ingest_events(run_id, events)  # the first four again: kept once
    store.ingest_events(run_id, [{"seq": 9, "step": 5, "type": "status",
                                  "status": "completed"}])
    assert index_rows(store, run_id) == {0: [(0, 5)]}
    check_against_brute_force(client, run_id)


def test_a_rewire_keyframe_is_indexed_from_its_changes_and_never_sends_them(client, monkeypatch):
    """The driver's keyframes at a rewire carry that rewire's changes in process: the index
    takes them (no whole-mask diff) and answers exactly; a remote writer strips them."""
    from dst_core.events import LOCAL_CHANGES
    from dst_core.recording.remote import wire_event
    from dst_core.store import cohorts

    diffs = {"count": 0}
    original = cohorts.LayerIndexer.take_mask

    def counting(self, *args, **kwargs):
        diffs["count"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cohorts.LayerIndexer, "take_mask", counting)
    client.app.state.topology.cache.clear()
    store = client.app.state.store
    run_id = record_training_run(store.data_dir, "set", rewires=9)  # keyframe every 4 rewires
    assert diffs["count"] == 0
    check_against_brute_force(client, run_id)
    mask = torch.ones(2, 3, dtype=torch.bool)
    payload = keyframe_payload("w", 0, (2, 3), mask, (np.array([1]), np.array([], int)))
    assert LOCAL_CHANGES in payload
    sent = wire_event("topology", 4, payload, seq=7)
    assert LOCAL_CHANGES not in sent and sent["bits"] is payload["bits"] and sent["seq"] == 7


def test_a_read_that_loses_its_run_to_a_delete_midway_is_the_missing_runs_404(client, monkeypatch):
    """The page still reading a run as it is deleted: a panel's view found its frame, then the
    run's rows went before it read them (the read fails as on undecodable data). The answer is
    the 404 of a missing run, as a moment later, not a 422 blaming stored data."""
    store = client.app.state.store
    run_id = record_old_style_run(store)
    views = client.app.state.layer_views
    url = f"/api/runs/{run_id}/view"
    params = {"layer": 0, "step": 45, "rows": 5, "cols": 7}
    assert client.get(url, params=params).status_code == 200
    plain_view = type(views).view

    def deleted_midway(run, located, rows, cols):
        store.delete_run(run["id"])
        raise StoredDataError(f"frame seq {located.get('seq')} of layer 0 is not stored")

    monkeypatch.setattr(views, "view", deleted_midway)
    gone = client.get(url, params={**params, "rows": 4})  # not the cached answer
    assert gone.status_code == 404 and gone.json()["detail"] == f"no run {run_id!r}"
    # A store that cannot say whether the run is there (a disk fault): the 422 stands, no 500.
    run_id = record_old_style_run(store)
    plain_get_run = type(store).get_run
    calls = []

    def get_run_then_fail(run):
        calls.append(run)
        if len(calls) > 1:  # the route's own lookup passes; the error handler's fails
            raise sqlite3.OperationalError("disk I/O error")
        return plain_get_run(store, run)

    monkeypatch.setattr(views, "view", lambda run, located, rows, cols: (_ for _ in ()).throw(
        StoredDataError("frame not stored")))
    monkeypatch.setattr(store, "get_run", get_run_then_fail)
    faulty = client.get(f"/api/runs/{run_id}/view", params=params)
    assert faulty.status_code == 422 and "stored data" in faulty.json()["detail"]
    assert len(calls) == 2
    monkeypatch.setattr(store, "get_run", lambda run: plain_get_run(store, run))
    # Stored data that does not decode, on a run that is still there, stays a 422 naming it.
    run_id = record_old_style_run(store)
    store.db.execute("UPDATE events SET blob = x'01ffff' WHERE run_id = ? AND type = 'topology' "
                     "AND layer = 0 AND step = 40", (run_id,))
    monkeypatch.setattr(views, "view", lambda *args: plain_view(views, *args))
    broken = client.get(f"/api/runs/{run_id}/view", params=params)
    assert broken.status_code == 422 and "stored data" in broken.json()["detail"]
