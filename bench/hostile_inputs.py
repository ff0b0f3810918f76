"""Memory and time of a real server under the inputs that used to exhaust it (issue 12).

    .venv/bin/python bench/hostile_inputs.py

A fresh `python -m backend` on a fresh data folder; its resident memory (VmRSS) and peak
(VmHWM) idle, then after each of: a 200 MB request header sent without a token, a remote
run's keyframe declaring a [46340, 46340] layer, and one 60 MB ingest batch (the ingest body
limit is 64 MiB); the server's health afterwards. One run; nothing is asserted (the refusals
themselves are tested in tests/backend/test_guards.py and test_stored_input.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.service import free_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HEADER_MB = 200


def memory_mb(pid: int, key: str) -> float:
    """A /proc/<pid>/status figure in MB (VmRSS: resident now, VmHWM: the peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def huge_header(port: int) -> tuple[str, float]:
    """Send a request whose header grows to HEADER_MB; (the status line answered, seconds)."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        try:
            connection.sendall(b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
            chunk = b"a" * (1 << 20)
            for _ in range(HEADER_MB):
                connection.sendall(chunk)
        except OSError:
            pass  # the server answered and closed while we were still sending
        try:
            line = connection.recv(200).split(b"\r\n")[0].decode(errors="replace")
        except OSError as error:
            line = repr(error)
    return line, time.perf_counter() - started


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="hostile-"))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "backend", "--port", str(port), "--data-dir", str(folder / "data")],
        cwd=REPO, env={**os.environ, "SPARSESCOPE_WARM_WORKERS": "0"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=60)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if client.get("/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        pid = server.pid
        print(f"idle: RSS {memory_mb(pid, 'VmRSS'):.0f} MB")
        line, seconds = huge_header(port)
        print(f"{HEADER_MB} MB header: {line!r} after {seconds:.2f} s; RSS "
              f"{memory_mb(pid, 'VmRSS'):.0f} MB, peak {memory_mb(pid, 'VmHWM'):.0f} MB")
        run_id = client.post("/api/ingest/runs", json={"name": "hostile", "info": {}}).json()["id"]
        frame = {"seq": 2, "step": 0, "type": "topology", "layer": "x", "index": 0,
                 "shape": [46340, 46340], "keyframe": True, "active": 0, "bits": ""}
        started = time.perf_counter()
        answer = client.post(f"/api/ingest/runs/{run_id}/events", json={"events": [frame]})
        print(f"keyframe of [46340, 46340]: {answer.status_code} after "
              f"{time.perf_counter() - started:.3f} s; RSS {memory_mb(pid, 'VmRSS'):.0f} MB")
        events = [{"seq": 3 + i, "step": i, "type": "metrics", "loss": 0.5, "pad": "x" * 6000}
                  for i in range(10_000)]
        body = json.dumps({"events": events}).encode()
        started = time.perf_counter()
        answer = client.post(f"/api/ingest/runs/{run_id}/events", content=body,
                             headers={"content-type": "application/json"})
        print(f"{len(body) / 1e6:.0f} MB ingest batch: {answer.status_code} after "
              f"{time.perf_counter() - started:.2f} s; RSS {memory_mb(pid, 'VmRSS'):.0f} MB, "
              f"peak {memory_mb(pid, 'VmHWM'):.0f} MB")
        print(f"health afterwards: {client.get('/api/health').status_code}")
    finally:
        server.terminate()
        server.wait(timeout=15)


if __name__ == "__main__":
    main()
