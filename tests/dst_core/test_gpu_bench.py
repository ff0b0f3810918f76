"""bench/gpu.py, the rewire and training-overhead benches' GPU section, stays runnable where no
GPU is: its `--quick --device cpu` smoke run goes through every code path the CUDA run takes
but the CUDA-event clock, and asking for CUDA where there is none fails with one clear line
instead of a traceback. Figures are printed, never asserted: timings are not a test."""

from __future__ import annotations

import subprocess
import sys

import torch

from bench import gpu
from tests.conftest import REPO


def test_quick_cpu_smoke_run_prints_both_sections(capsys):
    assert gpu.main(["--device", "cpu", "--quick"]) == 0
    out = capsys.readouterr().out
    assert gpu.REWIRE_HEADER in out and gpu.TRAIN_HEADER in out
    for method in ("set", "set_magnitude", "rigl", "snfs", "grad_sample"):
        assert f" {method} " in out
    for precision in ("float32", "bfloat16", "bf16-autocast"):
        assert precision in out
    # RigL's timed window holds a rewire, so the rewiring step's cost is a figure, not "-".
    rigl_rows = [line.split() for line in out.splitlines() if line.split()[1:2] == ["rigl"]]
    assert len(rigl_rows) == 2 and all(row[5] != "-" for row in rigl_rows)


def test_cuda_without_a_gpu_exits_with_one_clear_line():
    """Where CUDA exists the same command is the real thing, at smoke size."""
    command = [sys.executable, "bench/gpu.py", "--device", "cuda"]
    if torch.cuda.is_available():
        result = subprocess.run([*command, "--quick"], cwd=REPO, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        assert gpu.REWIRE_HEADER in result.stdout and gpu.TRAIN_HEADER in result.stdout
        return
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert result.stderr.strip() == gpu.NO_CUDA
    assert "no CUDA device" in result.stderr and "--device cpu --quick" in result.stderr
    assert result.stdout == ""
