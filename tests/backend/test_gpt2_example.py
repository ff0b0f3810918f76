"""examples/gpt2_rigl.py, as docs/transformers.md runs it (a small GPT-2 for speed)."""

from __future__ import annotations

import os
import subprocess
import sys

from dst_core.store import RunReader, RunStore
from tests.conftest import REPO


def test_the_gpt2_example_records_a_run_with_blocks_and_heads(tmp_path):
    data_dir = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, "examples/gpt2_rigl.py", "--data-dir", str(data_dir), "--layers", "2",
         "--embd", "32", "--heads", "4", "--context", "16", "--steps", "12",
         "--interval-steps", "4"], cwd=REPO, capture_output=True, text=True, timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tied to the embedding transformer.wte.weight" in result.stdout
    store = RunStore(data_dir)
    [run] = store.list_runs()
    assert run["status"] == "completed" and run["name"] == "gpt2 · rigl"
    layers = RunReader(store).layers(run["id"])
    assert [layer["name"] for layer in layers] == [
        f"transformer.h.{block}.{role}.weight" for block in range(2)
        for role in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert layers[0]["heads"] == {"axis": "out", "parts": ["q", "k", "v"], "count": 4, "size": 8}
    assert layers[0]["matrix"] == [96, 32] and layers[0]["output_axis"] == 1
    rewires = [event for event in store.read_events(run["id"], limit=10_000)
               if event["type"] == "rewire"]
    assert [event["step"] for event in rewires] == [4, 8]  # RigL stops at 75 % of 12 steps
