"""`sparsescope export RUN [--compact] --out model.pt`: a recorded run's model, compacted."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from backend.cli import main
from dst_core import SparseDriver, compact_layers
from dst_core.compact import CompactLinear
from dst_core.recording import Recorder
from dst_core.store import MODEL_ARTIFACT, RunStore
from dst_core.store.transfer import load_model

# dst_core/recording/training.py calls float(loss) on a tensor that requires grad (the core's file)
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


def train_run(data_dir, capsys, *flags: str) -> str:
    assert main(["train", "--data-dir", str(data_dir), "--epochs", "1", "--method", "rigl",
                 "--density", "0.05", "--quiet", *flags]) == 0
    return capsys.readouterr().out.strip()


def test_export_compact_answers_as_the_stored_model(tmp_path, capsys):
    run_id = train_run(tmp_path, capsys, "--task", "digits", "--hidden", "256", "256")
    out = tmp_path / "model.pt"
    assert main(["export", run_id, "--compact", "--out", str(out), "--data-dir", str(tmp_path),
                 "--batch-size", "16"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert "density" in captured.err and "at batch 16" in captured.err
    stored = RunStore(tmp_path).get_artifact(run_id, MODEL_ARTIFACT)
    dense = load_model(stored)
    compacted = torch.load(out, weights_only=False)
    layers = compact_layers(compacted)
    assert [layer["layer"] for layer in layers] == ["1.weight", "3.weight", "5.weight"]
    assert all(isinstance(module, CompactLinear) for module in compacted if
               not isinstance(module, (nn.Flatten, nn.ReLU)))
    x = torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        want = dense(x)
    assert float((compacted(x) - want).abs().max() / want.abs().max()) <= 1e-4
    state = io.BytesIO()
    torch.save(dense.state_dict(), state)
    assert out.stat().st_size <= state.tell() / 4


def test_export_without_compact_writes_the_stored_model_file(tmp_path, capsys):
    run_id = train_run(tmp_path, capsys, "--hidden", "16")
    assert main(["export", run_id, "--data-dir", str(tmp_path), "-o",
                 str(tmp_path / "m.pt")]) == 0
    capsys.readouterr()
    stored = RunStore(tmp_path).get_artifact(run_id, MODEL_ARTIFACT)
    assert (tmp_path / "m.pt").read_bytes() == stored


def test_export_compact_of_a_cnn_run_times_its_convs(tmp_path, capsys):
    run_id = train_run(tmp_path, capsys, "--task", "digits", "--model", "cnn", "--hidden", "32")
    out = tmp_path / "cnn.pt"
    assert main(["export", run_id, "--compact", "--out", str(out), "--data-dir",
                 str(tmp_path)]) == 0
    capsys.readouterr()
    compacted = torch.load(out, weights_only=False)
    convs = [layer for layer in compact_layers(compacted) if layer["kind"] == "conv"]
    assert len(convs) == 2 and all(layer["timings_ms"] for layer in convs)
    dense = load_model(RunStore(tmp_path).get_artifact(run_id, MODEL_ARTIFACT))
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        want = dense(x)
    assert float((compacted(x) - want).abs().max() / want.abs().max()) <= 1e-4


def test_a_script_run_or_a_run_without_a_model_is_a_clear_error(tmp_path, capsys):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    driver = SparseDriver(model, torch.optim.SGD(model.parameters(), lr=0.1), method="set",
                          density=0.5, total_steps=4)
    with Recorder(tmp_path, name="script", config={"lr": 0.1}) as recorder:
        recorder.attach(driver)
        recorder.save_model(model, driver)
        script_id = recorder.run_id
    with pytest.raises(SystemExit, match="cannot be rebuilt here.*load_model"):
        main(["export", script_id, "--compact", "--data-dir", str(tmp_path)])
    with Recorder(tmp_path, name="no model", config={}) as recorder:
        empty_id = recorder.run_id
    with pytest.raises(SystemExit, match="stored no model"):
        main(["export", empty_id, "--compact", "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="no run '0123456789abcdef'"):
        main(["export", "0123456789abcdef", "--compact", "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--batch-size"):
        main(["export", script_id, "--compact", "--batch-size", "0", "--data-dir", str(tmp_path)])
