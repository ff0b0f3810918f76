"""`sparsescope train` (flags generated from RunConfig) and `sparsescope runs ...`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from backend.cli import main
from dst_core.store import RunStore
from dst_core.store.config import RunConfig
from tests.conftest import REPO


def test_every_run_config_field_is_a_train_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in RunConfig.model_fields:
        assert f"--{name.replace('_', '-')}" in text


@pytest.mark.parametrize("argv, message", [
    (["--density", "3"], "--density"),
    (["--method", "nope"], "--method"),
    (["--epochs", "many"], "--epochs"),
    (["--model", "cnn"], "model"),  # cnn on the synthetic task: a combination error
    (["--bogus", "1"], "unrecognized arguments"),
    (["--hidden", "abc"], "--hidden: invalid int value: 'abc'"),
    (["--hidden", "8", "0"], "--hidden (value 2)"),
    (["--density", "2"], "--density"),
])
def test_bad_flags_give_a_message_and_a_nonzero_exit(tmp_path, capsys, argv, message):
    try:
        code = main(["train", "--data-dir", str(tmp_path), *argv])
    except SystemExit as exit_info:
        code = exit_info.code
    assert code != 0
    error = capsys.readouterr().err
    assert message in error
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error and "usage:" not in error
    assert not (tmp_path / "runs.sqlite3").exists() or not RunStore(tmp_path).list_runs()


def test_train_records_a_run_with_a_progress_bar(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "backend.cli", "train", "--data-dir", str(tmp_path), "--epochs",
         "2", "--hidden", "16", "8", "--method", "set", "--seed", "7", "--keyframe-every", "2",
         "--name", "from the cli"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip()
    assert "100/100" in result.stderr and "completed" in result.stderr
    run = RunStore(tmp_path).get_run(run_id)
    assert run["status"] == "completed" and run["name"] == "from the cli"
    assert run["config"]["hidden"] == [16, 8] and run["config"]["keyframe_every"] == 2
    assert run["info"]["writer"] == "cli" and run["info"]["seed"] == 7
    assert RunStore(tmp_path).get_artifact(run_id, "model.pt")


# dst_core/recording/training.py calls float(loss) on a tensor that requires grad (the core's file)
@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_runs_list_show_export_import_delete(tmp_path, capsys):
    assert main(["train", "--data-dir", str(tmp_path), "--epochs", "1", "--hidden", "8",
                 "--quiet"]) == 0
    run_id = capsys.readouterr().out.strip()
    assert main(["runs", "list", "--data-dir", str(tmp_path)]) == 0
    assert run_id in capsys.readouterr().out
    assert main(["runs", "show", run_id, "--data-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == run_id
    target = tmp_path / "out.sparsescope"
    assert main(["runs", "export", run_id, "-o", str(target), "--data-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    other = tmp_path / "other"
    assert main(["runs", "import", str(target), "--data-dir", str(other)]) == 0
    copy_id = capsys.readouterr().out.strip()
    assert RunStore(other).read_events(copy_id, 0, 10**6) == RunStore(tmp_path).read_events(
        run_id, 0, 10**6)
    assert main(["runs", "delete", run_id, "--data-dir", str(tmp_path)]) == 0
    assert RunStore(tmp_path).get_run(run_id) is None
    with pytest.raises(SystemExit, match="no run"):
        main(["runs", "show", run_id, "--data-dir", str(tmp_path)])
    (tmp_path / "junk.sparsescope").write_bytes(b"junk" * 100)
    with pytest.raises(SystemExit, match="SQLite header"):
        main(["runs", "import", str(tmp_path / "junk.sparsescope"), "--data-dir", str(other)])


def test_runs_commands_on_missing_ids_and_bad_paths_exit_with_a_message(tmp_path, capsys):
    assert main(["train", "--data-dir", str(tmp_path), "--epochs", "1", "--hidden", "8",
                 "--quiet"]) == 0
    run_id = capsys.readouterr().out.strip()
    for action in ("show", "export", "delete"):
        with pytest.raises(SystemExit, match="no run '0123456789abcdef'"):
            main(["runs", action, "0123456789abcdef", "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="cannot write"):
        main(["runs", "export", run_id, "-o", str(tmp_path / "missing" / "x.sparsescope"),
              "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="No such file"):
        main(["runs", "import", str(tmp_path / "nothing.sparsescope"), "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="no run store"):
        main(["runs", "list", "--data-dir", str(tmp_path / "empty")])
    assert [run["id"] for run in RunStore(tmp_path).list_runs()] == [run_id]


def test_ctrl_c_during_train_leaves_the_run_stopped_with_its_data(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "train", "--data-dir", str(tmp_path), "--epochs",
         "5000", "--hidden", "16", "--quiet"], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        store = None
        # Training under way: the first frames are stored at step 0, metrics after steps.
        while store is None or not any(event["type"] == "metrics" for event in
                                       store.read_events(store.list_runs()[0]["id"], 0, 200)):
            assert process.poll() is None, process.stderr.read()
            if (tmp_path / "runs.sqlite3").exists() and RunStore(tmp_path).list_runs():
                store = RunStore(tmp_path)
            subprocess.run(["sleep", "0.2"])
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    run = store.get_run(out.strip())
    assert run["status"] == "stopped" and run["summary"]["steps"] > 0
    events = store.read_events(run["id"], 0, 10**6)
    assert events[-1] == {**events[-1], "type": "status", "status": "stopped"}
    assert any(event["type"] == "metrics" for event in events)


def test_serve_keeps_its_flags(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    assert "--host" in text and "--port" in text and "--data-dir" in text


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_train_records_into_a_running_server(tmp_path, capsys):
    from tests.backend.test_ingest import ThreadServer
    from tests.conftest import free_port

    port = free_port()
    with ThreadServer(tmp_path / "server", port, token="t0ken"):
        code = main(["train", "--url", f"http://127.0.0.1:{port}", "--token", "t0ken",
                     "--epochs", "1", "--hidden", "8", "--quiet"])
    assert code == 0
    run_id = capsys.readouterr().out.strip()
    store = RunStore(tmp_path / "server")
    run = store.get_run(run_id)
    assert run["status"] == "completed" and run["info"]["writer"] == "remote"
    events = store.read_events(run_id, 0, 10**6)
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert store.get_artifact(run_id, "model.pt")


def test_epochs_help_names_the_tasks_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    epochs = text.rsplit("--epochs EPOCHS", 1)[1].split("--batch-size", 1)[0]
    assert "the task's" in epochs and "method" not in epochs
    drop = text.rsplit("--drop-fraction DROP_FRACTION", 1)[1].split("--schedule", 1)[0]
    assert "the method" in drop


def _store_with_runs(data_dir):
    store = RunStore(data_dir)
    script = store.create_run({}, "my loop", status="running", info={"writer": "script"})
    store.append_events(script["id"], [("meta", 0, {"settings": {
        "method": "rigl", "density": 0.2, "task": None, "model": "custom: Net (1.2 k params)"}})],
        {"steps": 40, "best_test_accuracy": 0.8125})
    store.set_status(script["id"], "completed")
    old = store.create_run(RunConfig(method="snfs", task="digits", density=0.05).model_dump(),
                           "old run", status="stopped")
    return script["id"], old["id"]


def test_runs_list_shows_method_task_density_and_accuracy(tmp_path, capsys):
    script_id, old_id = _store_with_runs(tmp_path)
    assert main(["runs", "list", "--data-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[:5] == ["id", "status", "method", "task", "density"] and "acc" in header
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows[script_id][1:5] == ["completed", "rigl", "–", "0.2"]
    assert "81.25%" in rows[script_id]
    assert rows[old_id][1:5] == ["stopped", "snfs", "digits", "0.05"]


@pytest.mark.parametrize("action", ["show", "list"])
def test_a_closed_pipe_ends_runs_output_quietly(tmp_path, action):
    script_id, _ = _store_with_runs(tmp_path)
    store = RunStore(tmp_path)
    for index in range(200):  # enough output to outlast the pipe's buffer
        store.create_run({"note": "x" * 500}, f"run {index}", status="stopped")
    argv = [sys.executable, "-m", "backend.cli", "runs", action, "--data-dir", str(tmp_path)]
    argv += [script_id] if action == "show" else []
    if action == "show":
        store.set_info(script_id, {"writer": "script", "notes": ["y" * 200] * 2000})
    result = subprocess.run(f"{' '.join(argv)} | head -n 2", shell=True, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert len(result.stdout.splitlines()) == 2
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr


def test_url_with_data_dir_is_an_error_naming_both(tmp_path, capsys):
    code = main(["train", "--url", "http://127.0.0.1:9", "--data-dir", str(tmp_path),
                 "--epochs", "1", "--hidden", "8", "--quiet"])
    assert code == 2
    error = capsys.readouterr().err
    assert "--url" in error and "--data-dir" in error
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error
    assert not (tmp_path / "runs.sqlite3").exists()  # nothing recorded anywhere


def test_runs_show_answers_the_warnings_of_its_config(tmp_path, capsys, make_client):
    store = RunStore(tmp_path)
    # RigL on digits for 5 epochs: 115 steps, rewiring stops at step 86 before the first is due.
    silent = store.create_run(RunConfig(method="rigl", task="digits", epochs=5).model_dump(),
                              "no rewire", status="completed")
    fine = store.create_run(RunConfig(method="set", task="digits", epochs=5).model_dump(),
                            "fine", status="completed")
    script = store.create_run({"lr": 0.1}, "my loop", status="completed",
                              info={"writer": "script"})
    shown = {}
    for run in (silent, fine, script):
        assert main(["runs", "show", run["id"], "--data-dir", str(tmp_path)]) == 0
        shown[run["name"]] = json.loads(capsys.readouterr().out)
    assert len(shown["no rewire"]["warnings"]) == 1
    assert shown["no rewire"]["warnings"][0].startswith("no rewire: 115 steps")
    assert shown["fine"]["warnings"] == [] and shown["my loop"]["warnings"] == []
    assert shown["fine"]["id"] == fine["id"]
    api = make_client().post("/api/runs/plan", json=silent["config"]).json()["warnings"]
    assert shown["no rewire"]["warnings"] == api  # what POST /api/runs answers for it
