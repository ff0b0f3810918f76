"""The docs' torchrun command: a 2-rank DDP job streams to a running server as one live run."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx

from tests.conftest import REPO

COMMAND = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "examples/ddp_train.py", "--task", "synthetic", "--hidden", "32,32", "--epochs", "2",
           "--batch-size", "8", "--interval-steps", "50", "--method", "set", "--name", "ddp job"]


def test_a_torchrun_job_appears_live_as_one_run(live_server):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen([*COMMAND, "--url", live_server], cwd=REPO, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen_running = False
    deadline = time.monotonic() + 240
    while job.poll() is None and time.monotonic() < deadline:
        runs = httpx.get(f"{live_server}/api/runs", timeout=10).json()
        seen_running |= any(run["status"] == "running" for run in runs)
        time.sleep(0.05)
    output = job.communicate(timeout=30)[0]
    assert job.returncode == 0, output
    runs = httpx.get(f"{live_server}/api/runs", timeout=10).json()
    assert [run["name"] for run in runs] == ["ddp job"], output  # one run for two ranks
    run = httpx.get(f"{live_server}/api/runs/{runs[0]['id']}", timeout=10).json()
    assert seen_running and run["status"] == "completed"
    layout = run["info"]["distributed"]
    assert layout["world_size"] == 2 and layout["backend"] == "gloo" and layout["ranks"] == [0, 1]
    rewires = httpx.get(f"{live_server}/api/runs/{run['id']}/rewires", timeout=10).json()
    assert len(rewires["steps"]) >= 3 and len(rewires["layers"]) == 3
    assert "recording run" in output and output.count("epoch 2/2") == 1  # rank 0 reports


def test_the_example_refuses_to_start_without_torchrun():
    result = subprocess.run([sys.executable, "examples/ddp_train.py"], cwd=REPO,
                            capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if k != "RANK"})
    assert result.returncode != 0 and "torchrun" in result.stderr
