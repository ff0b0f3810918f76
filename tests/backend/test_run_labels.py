"""Issue 28 item 6: a person renames a run, tags it and writes a note; the list finds runs by
them and shows chosen config/summary keys as columns. Checked where they enter (422 naming the
field), kept apart from what a writer stores, carried by export/import, and never a 5xx
whatever the labels column holds."""

from __future__ import annotations

import sqlite3

import pytest

from dst_core.store.schema import MAX_NOTE_CHARS, MAX_TAGS


def _script_run(client, name: str, config: dict, summary: dict | None = None) -> str:
    store = client.app.state.store
    run = store.create_run(config, name, status="running", info={"writer": "script"})
    if summary:
        store.update_summary(run["id"], summary)
    return run["id"]


def test_rename_tag_and_note_are_stored_and_answered(client):
    run_id = _script_run(client, "first try", {"lr": 0.1})
    answer = client.patch(f"/api/runs/{run_id}", json={
        "name": "baseline lr 0.1", "tags": ["baseline", "  seed   0 ", "Baseline"],
        "note": "loss plateaus after\nstep 2000"})
    assert answer.status_code == 200, answer.text
    run = answer.json()
    # Spaces folded, a tag repeated in another case kept once (first spelling).
    assert (run["name"], run["tags"], run["note"]) == (
        "baseline lr 0.1", ["baseline", "seed 0"], "loss plateaus after\nstep 2000")
    # A field left out stays; the run by id says the same.
    client.patch(f"/api/runs/{run_id}", json={"note": ""})
    again = client.get(f"/api/runs/{run_id}").json()
    assert (again["name"], again["tags"], again["note"]) == ("baseline lr 0.1",
                                                             ["baseline", "seed 0"], "")


def test_a_writer_replacing_its_info_keeps_the_labels(client):
    run_id = _script_run(client, "scripted", {"lr": 0.1})
    client.patch(f"/api/runs/{run_id}", json={"tags": ["keep me"], "note": "mine"})
    client.app.state.store.set_info(run_id, {"writer": "script", "seed": 3})
    run = client.get(f"/api/runs/{run_id}").json()
    assert (run["tags"], run["note"], run["info"]["seed"]) == (["keep me"], "mine", 3)


@pytest.mark.parametrize(("body", "where"), [
    ({"tags": ["a,b"]}, ["body", "tags", "0"]),
    ({"tags": [""]}, ["body", "tags", "0"]),
    ({"tags": ["x" * 41]}, ["body", "tags", "0"]),
    ({"tags": [f"t{i}" for i in range(MAX_TAGS + 1)]}, ["body", "tags"]),
    ({"tags": "one"}, ["body", "tags"]),
    ({"note": "x" * (MAX_NOTE_CHARS + 1)}, ["body", "note"]),
    ({"note": "bell\x07"}, ["body", "note"]),
    ({"name": ""}, ["body", "name"]),
    ({"name": "   "}, ["body", "name"]),
    ({"colour": "red"}, ["body", "colour"]),
])
def test_bad_labels_are_refused_naming_the_field_and_change_nothing(client, body, where):
    run_id = _script_run(client, "kept", {"lr": 0.1})
    client.patch(f"/api/runs/{run_id}", json={"tags": ["before"], "note": "before"})
    answer = client.patch(f"/api/runs/{run_id}", json=body)
    assert answer.status_code == 422, answer.text
    locations = [[str(part) for part in error["loc"]] for error in answer.json()["detail"]]
    assert any(location[:len(where)] == where for location in locations), locations
    run = client.get(f"/api/runs/{run_id}").json()
    assert (run["name"], run["tags"], run["note"]) == ("kept", ["before"], "before")


def test_labels_of_an_unknown_run_are_a_404(client):
    assert client.patch("/api/runs/0123456789abcdef", json={"name": "x"}).status_code == 404


def test_the_list_finds_runs_by_tag_and_note_and_shows_chosen_columns(client):
    first = _script_run(client, "alpha", {"lr": 0.1, "method": "rigl"},
                        {"steps": 40, "final_loss": 0.5})
    second = _script_run(client, "beta", {"lr": 0.01, "method": "set"})
    client.patch(f"/api/runs/{first}", json={"tags": ["Baseline"], "note": "widest sweep"})
    client.patch(f"/api/runs/{second}", json={"tags": ["baseline-2"]})

    def names(**params) -> list[str]:
        answer = client.get("/api/runs", params=params)
        assert answer.status_code == 200, answer.text
        return sorted(run["name"] for run in answer.json())

    assert names(q="sweep") == ["alpha"]  # the note
    assert names(q="BASELINE") == ["alpha", "beta"]  # a substring of a tag
    assert names(tag="baseline") == ["alpha"]  # a tag exactly, case-insensitive
    assert names(tag="nothing") == []
    rows = {run["name"]: run for run in client.get(
        "/api/runs", params={"columns": "config.lr,summary.final_loss,config.absent"}).json()}
    assert rows["alpha"]["columns"] == {"config.lr": 0.1, "summary.final_loss": 0.5}
    assert rows["beta"]["columns"] == {"config.lr": 0.01}
    assert rows["alpha"]["tags"] == ["Baseline"] and rows["alpha"]["note"] == "widest sweep"


@pytest.mark.parametrize("columns", ["config.l r", "info.writer", "config.x'--", "lr",
                                     ",".join(f"config.k{i}" for i in range(9))])
def test_bad_columns_are_a_422_naming_columns(client, columns):
    answer = client.get("/api/runs", params={"columns": columns})
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"] == ["query", "columns"]


@pytest.mark.parametrize("stored", ["not json", "[1, 2]", '{"tags": "x", "note": 5}',
                                    '{"tags": [1, {"a": 2}, "ok"], "note": null}',
                                    '{"tags": ["' + "y" * 20_000 + '"]}'])
def test_whatever_the_labels_column_holds_reads_answer(client, stored):
    run_id = _script_run(client, "damaged labels", {"lr": 0.1})
    store = client.app.state.store
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE runs SET labels = ? WHERE id = ?", (stored, run_id))
    run = client.get(f"/api/runs/{run_id}")
    assert run.status_code == 200
    assert all(isinstance(tag, str) and len(tag) <= 40 for tag in run.json()["tags"])
    listed = client.get("/api/runs", params={"q": "damaged", "columns": "config.lr"})
    assert listed.status_code == 200 and listed.json()[0]["id"] == run_id
    assert client.get("/api/runs", params={"tag": "ok"}).status_code == 200
    # Labels set anew over the damaged ones.
    assert client.patch(f"/api/runs/{run_id}", json={"tags": ["fixed"]}).json()["tags"] == ["fixed"]


def test_labels_travel_with_an_export(client):
    run_id = _script_run(client, "exported", {"lr": 0.1})
    client.patch(f"/api/runs/{run_id}", json={"tags": ["paper"], "note": "figure 3"})
    exported = client.get(f"/api/runs/{run_id}/export")
    assert exported.status_code == 200
    imported = client.post("/api/runs/import", content=exported.content)
    assert imported.status_code == 201, imported.text
    assert (imported.json()["tags"], imported.json()["note"]) == (["paper"], "figure 3")
