"""A console nobody reads must not freeze the server (its log lines are written off the loop)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx

from tests.conftest import REPO, free_port


def test_a_server_whose_output_is_never_read_keeps_answering(tmp_path):
    port = free_port()
    # stdout and stderr are a pipe this test never reads: 64 KiB of log lines fill it.
    process = subprocess.Popen([sys.executable, "-m", "backend", "--port", str(port),
                                "--data-dir", str(tmp_path / "data")], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/api/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline, "server never became healthy"
                    time.sleep(0.2)
            # One access-log line each, ~100 bytes: several times what the pipe holds.
            for _ in range(2500):
                assert client.get("/api/runs/0123456789abcdef").status_code == 404
            assert client.get("/api/runs").status_code == 200
        # The console resumes (the pipe is read): every queued line arrives, and the server
        # stops as usual.
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        assert process.returncode in (0, -signal.SIGTERM)
        text = output.decode(errors="replace")
        assert text.count("event=request") >= 2500 and "event=server_stopped" in text
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
