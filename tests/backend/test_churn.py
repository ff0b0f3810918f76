"""GET /api/runs/{id}/churn: toggle counts, flip rates and the panel view against brute force
over consecutive `/mask` answers at every rewire, for a recorded run (its cohort index cut into
several segments), a run stored without an index, a live run, and stored data that does not
read (a 422, never a 5xx)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch

from backend.services.views import PixelMap
from dst_core.events import delta_payload, keyframe_payload
from dst_core.store import RunReader
from tests.backend.test_overlap import mask_of, record_run
from tests.backend.test_topology import record_old_style_run


def brute_churn(client, run_id: str, index: int, step: int) -> dict:
    """Toggles per connection and flip rates from the masks `/mask` answers at each of the
    layer's rewire steps up to `step`."""
    steps = [s for s in client.app.state.store.frame_steps(run_id, index) if s <= step]
    masks = [mask_of(client, run_id, index, s)[0] for s in steps]
    toggles = np.zeros(masks[0].size, dtype=np.int64)
    flip_rate = []
    for rewire in range(1, len(masks)):
        changed = masks[rewire] != masks[rewire - 1]
        toggles += changed
        before = int(masks[rewire - 1].sum())
        flip_rate.append([rewire, int(changed.sum()) / before if before else None])
    values, counts = np.unique(toggles, return_counts=True)
    pairs = [[int(v), int(n)] for v, n in zip(values, counts, strict=True)]
    if pairs[0][0] != 0:
        pairs.insert(0, [0, 0])
    return {"steps": steps, "toggles": toggles, "pairs": pairs, "flip_rate": flip_rate,
            "rewire": len(steps) - 1, "active": int(masks[-1].sum())}


def decoded(view: dict, field: str) -> np.ndarray:
    rows, cols = view["grid"]
    return np.frombuffer(base64.b64decode(view[field]), dtype="<u4").reshape(rows, cols)


def check_churn(client, run_id: str, probes: int | None = None) -> int:
    """Every layer at every rewire step (and between two) equals brute force; returns how
    many answers were checked."""
    layers = RunReader(client.app.state.store).layers(run_id)
    checked = 0
    for index, meta in enumerate(layers):
        steps = client.app.state.store.frame_steps(run_id, index)
        rows, cols = meta["matrix"]
        # scrubbing: forward, then back (cached totals are reused, then recounted)
        for position in [*range(len(steps)), *range(len(steps) - 1, -1, -3)][:probes]:
            step = steps[position]
            probe = step + 1 if position + 1 < len(steps) and steps[position + 1] > step + 1 \
                else step
            panel = (3, 5) if position % 2 else (64, 64)
            response = client.get(f"/api/runs/{run_id}/churn", params={
                "layer": meta["name"] if position % 2 else index, "step": probe,
                "rows": panel[0], "cols": panel[1]})
            assert response.status_code == 200, response.text
            got = response.json()
            want = brute_churn(client, run_id, index, probe)
            assert (got["layer"], got["index"], got["step"], got["requested_step"]) == \
                (meta["name"], index, step, probe)
            assert got["rewire"] == position == want["rewire"]
            assert got["shape"] == [rows, cols] and got["numel"] == rows * cols
            assert got["active"] == want["active"]
            assert got["toggles"] == want["pairs"]
            assert sum(n for _, n in got["toggles"]) == got["numel"]
            assert got["toggles_total"] == int(want["toggles"].sum())
            assert got["flip_steps"] == want["steps"][1:]
            assert [r for r, _ in got["flip_rate"]] == [r for r, _ in want["flip_rate"]]
            for (_, share), (_, expected) in zip(got["flip_rate"], want["flip_rate"],
                                                 strict=True):
                assert share == pytest.approx(expected)
            view = got["view"]
            grid = (min(panel[0], rows), min(panel[1], cols))
            assert view["grid"] == list(grid) and view["exact"] == (grid == (rows, cols))
            pixels = PixelMap(rows, cols, *grid)
            sums = np.zeros(grid, dtype=np.int64)
            per_connection = want["toggles"].reshape(rows, cols)
            np.add.at(sums, (pixels.row_pixel[:, None], pixels.col_pixel[None, :]),
                      per_connection)
            assert decoded(view, "toggles").tolist() == sums.tolist()
            assert decoded(view, "possible").tolist() == pixels.possible().tolist()
            assert int(decoded(view, "toggles").sum()) == got["toggles_total"]
            assert view["max_mean"] == pytest.approx((sums / pixels.possible()).max())
            checked += 1
    return checked


def as_format_3(store, run_id: str) -> None:
    """The run's stored segments as format 3 wrote them: no growth counts at the checkpoints."""
    rows = store.db.execute("SELECT layer, first_rewire, header FROM topology_index WHERE "
                            "run_id = ?", (run_id,)).fetchall()
    for layer, first, header in rows:
        header = json.loads(header)
        header["format"] = 3
        header["parts"].pop("grown", None)
        store.db.execute("UPDATE topology_index SET header = ? WHERE run_id = ? AND layer = ? "
                         "AND first_rewire = ?", (json.dumps(header), run_id, layer, first))


def test_a_recorded_run_answers_exactly_across_index_segments(client, monkeypatch):
    """Segments of 3 rewires. Format 4: the nearest checkpoint's growth counts plus the
    cohorts after it (counts in every 4th full segment; then in every full one); the same
    segments as format 3 stored them (no counts): every earlier cohort counted, the totals at
    segment ends cached, and recounted from an earlier one scrubbing back."""
    from dst_core.store import cohorts

    monkeypatch.setattr(cohorts, "SEGMENT_REWIRES", 3)
    store = client.app.state.store
    mixed = record_run(store.data_dir, 1, method="rigl", rewires=9)  # counts at the end only
    assert check_churn(client, mixed) > 30
    monkeypatch.setattr(cohorts, "GROWN_EVERY", 1)
    client.app.state.churn.totals.clear()
    run_id = record_run(store.data_dir, 0, method="rigl", rewires=9)
    segments = store.db.execute("SELECT COUNT(*) FROM topology_index WHERE run_id = ? AND "
                                "layer = 1", (run_id,)).fetchone()[0]
    assert segments >= 3
    assert check_churn(client, run_id) > 30
    assert len(client.app.state.churn.totals) == 0  # every segment holds its counts
    newest = client.get(f"/api/runs/{run_id}/churn", params={"layer": 1}).json()
    assert newest["requested_step"] is None
    assert newest["step"] == store.frame_steps(run_id, 1)[-1]
    as_format_3(store, run_id)
    client.app.state.churn.answers.clear()
    client.app.state.topology.cache.clear()
    assert check_churn(client, run_id) > 30
    assert len(client.app.state.churn.totals) > 0
    client.app.state.churn.totals.clear()
    client.app.state.churn.answers.clear()
    client.app.state.topology.cache.clear()
    assert check_churn(client, run_id, probes=4) == 12  # cold: every total recounted


def test_every_fourth_checkpoint_holds_every_connections_growth_count(client, monkeypatch):
    """Segments of 2 rewires, 11 of them: the 4th and the 8th checkpoint hold the counts, the
    run's last (short) one does not (its reader adds its cohorts to the 8th's); an indexer
    resumed at a checkpoint without them adds the cohorts since the last one that has them."""
    from dst_core.store import cohorts, topology_index

    monkeypatch.setattr(cohorts, "SEGMENT_REWIRES", 2)
    store = client.app.state.store
    run_id = record_run(store.data_dir, 3, rewires=10)
    for index in range(3):
        steps = store.frame_steps(run_id, index)
        assert len(steps) == 11
        masks = [mask_of(client, run_id, index, step)[0] for step in steps]
        grown = np.zeros(masks[0].size, dtype=np.int64)
        counts = [grown.copy()]
        for before, after in zip(masks, masks[1:], strict=False):
            grown += after & ~before
            counts.append(grown.copy())
        found = topology_index.stored_segments(lambda: store.db, run_id, index)
        assert [segment.last for segment in found] == [1, 3, 5, 7, 9, 10]
        holding = [segment.last for segment in found if segment.grown_totals() is not None]
        assert holding == [7]
        for segment in found:
            if segment.grown_totals() is not None:
                assert segment.grown_totals().tolist() == counts[segment.last].tolist()
        resumed = cohorts.LayerIndexer.resume(found[0], found[4], found[:5])
        assert resumed.grown_total.tolist() == counts[9].tolist()
        assert cohorts.LayerIndexer.resume(found[0], found[4]).grown_total is None


def test_a_run_stored_without_an_index_answers_from_its_frames(client):
    client.app.state.topology.cache.clear()
    run_id = record_old_style_run(client.app.state.store, rewires=6)
    assert check_churn(client, run_id) > 10


def test_a_live_run_is_followed(client):
    """Rewires no stored segment holds yet (the reader's own indexer) answer, and a new frame
    is taken in."""
    client.app.state.topology.cache.clear()
    store = client.app.state.store
    rng = np.random.default_rng(5)
    shape = (6, 9)
    mask = rng.random(shape).reshape(-1) < 0.4
    run_id = store.create_run({}, "live", status="running")["id"]
    store.append_events(run_id, [
        ("meta", 0, {"layers": [{"name": "w", "shape": list(shape), "matrix": list(shape),
                                 "density": 0.4}]}),
        ("topology", 0, keyframe_payload("w", 0, shape,
                                         torch.from_numpy(mask.reshape(shape))))])
    for rewire in range(1, 6):
        drop = np.sort(rng.choice(np.flatnonzero(mask), 4, replace=False))
        grow = np.sort(rng.choice(np.flatnonzero(~mask), 4, replace=False))
        mask[drop], mask[grow] = False, True
        store.append_events(run_id, [("topology", 10 * rewire, delta_payload(
            "w", 0, shape, grow, drop, int(mask.sum())))])
        got = client.get(f"/api/runs/{run_id}/churn", params={"layer": "w"})
        assert got.status_code == 200 and got.headers["cache-control"] == "no-cache"
        assert got.json()["rewire"] == rewire
    assert check_churn(client, run_id) == 8


def test_bad_requests_and_broken_runs_never_answer_5xx(client):
    client.app.state.topology.cache.clear()
    store = client.app.state.store
    run_id = record_old_style_run(store)
    url = f"/api/runs/{run_id}/churn"
    assert client.get(url, params={"layer": "nope"}).status_code == 404
    assert client.get(url, params={"layer": 0, "step": -1}).status_code == 422
    assert client.get(url, params={"layer": 0, "rows": 0}).status_code == 422
    assert client.get(url, params={"layer": 0, "cols": 4097}).status_code == 422
    assert client.get(url).status_code == 422  # layer is required
    assert client.get("/api/runs/0123456789abcdef/churn?layer=0").status_code == 404
    first = client.get(url, params={"layer": 0})
    assert first.status_code == 200 and first.headers["cache-control"].startswith("private")
    cached = client.get(url, params={"layer": 0}, headers={"If-None-Match": first.headers["etag"]})
    assert cached.status_code == 304
    # A delta that does not decode: rewires before it still answer, later ones 422 naming it.
    store.db.execute("UPDATE events SET blob = x'01ffff' WHERE run_id = ? AND type = 'topology' "
                     "AND layer = 0 AND step = 40", (run_id,))
    client.app.state.topology.cache.clear()
    client.app.state.churn.answers.clear()
    assert client.get(url, params={"layer": 0, "step": 35}).status_code == 200
    broken = client.get(url, params={"layer": 0, "step": 45})
    assert broken.status_code == 422 and "stored data" in broken.json()["detail"]
    assert "seq" in broken.json()["detail"]
    # the newest rewire is a checkpoint of the (intact) index: no frame is read for it
    assert client.get(url, params={"layer": 0}).status_code == 200
    # A stored segment whose blob is damaged: the frames are replayed instead.
    other = record_run(store.data_dir, 1, rewires=4)
    store.db.execute("UPDATE topology_index SET blob = x'00' WHERE run_id = ?", (other,))
    client.app.state.topology.cache.clear()
    assert check_churn(client, other, probes=3) == 9
    store.db.execute("DELETE FROM events WHERE run_id = ? AND type = 'meta'", (run_id,))
    assert client.get(url, params={"layer": 0}).status_code == 404


def test_churn_is_in_the_openapi_schema(client):
    spec = client.get("/openapi.json").json()
    schema = spec["paths"]["/api/runs/{run_id}/churn"]["get"]["responses"]["200"]
    assert schema["content"]["application/json"]["schema"]["$ref"].endswith("LayerChurn")
    fields = spec["components"]["schemas"]["LayerChurn"]["properties"]
    for field in ("layer", "index", "shape", "step", "requested_step", "rewire", "numel",
                  "toggles", "flip_rate", "flip_steps", "view"):
        assert field in fields


def test_frames_an_older_version_stored_that_do_not_fit_are_no_rewires(client):
    """Rows written directly: a frame that does not fit its layer is skipped by every reader,
    so it toggles nothing and is no rewire (as /topology counts them)."""
    from tests.backend.test_frame_checks import SHAPE, delta, good_start, insert_legacy, keyframe

    store = client.app.state.store
    run_id = store.create_run({}, "legacy", status="running")["id"]
    store.append_events(run_id, [*good_start(), ("topology", 10, delta([1], [0], 12))])
    last = store.last_seq(run_id)
    insert_legacy(store, run_id, last + 1, 20, delta([3], [5], 12))  # 5 is not active
    insert_legacy(store, run_id, last + 2, 30, keyframe(np.ones(SHAPE, bool), active=3))
    insert_legacy(store, run_id, last + 3, 40, delta([0, 3], [1, 2], 12))
    store.set_status(run_id, "completed")
    client.app.state.topology.cache.clear()
    got = client.get(f"/api/runs/{run_id}/churn", params={"layer": "fc1"}).json()
    want = brute_churn(client, run_id, 0, 40)
    assert got["toggles"] == want["pairs"] and got["rewire"] == 2
    assert got["flip_steps"] == [10, 40]
    assert got["flip_rate"] == [[1, 2 / 12], [2, 4 / 12]]


def test_growth_counts_widen_past_255_and_survive_a_resume(monkeypatch):
    """A connection grown 300 times: the writer's uint8 counts widen to uint16; a checkpoint
    stores them and an indexer resumed from a later one goes on counting."""
    from dst_core.store import cohorts
    from dst_core.store.cohorts import LayerIndexer

    monkeypatch.setattr(cohorts, "SEGMENT_REWIRES", 64)
    indexer = LayerIndexer(np.array([[True, False]]), (1, 2), step=0, seq=1)
    segments = []
    for rewire in range(1, 601):  # the active connection moves back and forth
        on, off = (1, 0) if rewire % 2 else (0, 1)
        indexer.take_changes(rewire, rewire + 1, np.array([on]), np.array([off]), active=1)
        if indexer.due:
            segments.append(indexer.cut())
    assert indexer.grown_total.dtype == np.uint16
    assert indexer.grown_total.tolist() == [300, 300]
    assert segments[3].last == 255 and segments[3].grown_totals().tolist() == [127, 128]
    assert segments[-1].last == 575  # rewires 1..575: the odd ones grew connection 1
    assert segments[-1].grown_totals() is None  # the 9th: only every 4th holds them
    resumed = LayerIndexer.resume(segments[0], segments[-1], segments)
    assert resumed.grown_total.tolist() == [287, 288]
    assert resumed.grown_total.dtype == np.uint16
    resumed.take_changes(576, 577, np.array([0]), np.array([1]), active=1)
    assert resumed.grown_total.tolist() == [288, 288]
