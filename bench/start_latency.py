"""Start → first heatmap: from `POST /api/runs` to `running` and to the first stored topology
frame, on a real `python -m backend` process, cold workers against warm ones in one run.

    .venv/bin/python bench/start_latency.py [--rounds 5] [--config '{"task": "digits"}']

Cold: every run starts a new worker process that imports torch (`SPARSESCOPE_WARM_WORKERS=0`).
Warm: an idle worker with torch imported takes the run (the default, 1). The servers are
measured in alternating rounds so a load change on the machine hits both alike; between
starts the bench waits as a person reading the form would (`--pause-s`), so the warm server
has its next idle worker ready. Prints each round's times and the medians; the ratio is what
to compare across machines (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dst_core.store import RunStore  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, data_dir: Path, warm_workers: int):
        self.data_dir = data_dir
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "SPARSESCOPE_WARM_WORKERS": str(warm_workers)}
        self.log = open(data_dir.parent / f"server-{warm_workers}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "backend", "--port", str(port), "--data-dir", str(data_dir)],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        self.store = RunStore(data_dir)

    def start_once(self, config: dict) -> tuple[float, float]:
        """(seconds to `running`, seconds to the first stored topology frame)."""
        started = time.perf_counter()
        run = httpx.post(f"{self.url}/api/runs", json=config, timeout=30).json()
        running_s = frame_s = None
        while frame_s is None:
            now = time.perf_counter() - started
            if now > 120:
                raise RuntimeError(f"run {run['id']} showed no frame in 120 s")
            if running_s is None and self.store.get_run(run["id"])["status"] == "running":
                running_s = now
            if self.store.db.execute("SELECT 1 FROM events WHERE run_id = ? AND type = "
                                     "'topology' LIMIT 1", (run["id"],)).fetchone():
                frame_s = now
                running_s = running_s if running_s is not None else now
            time.sleep(0.005)
        httpx.post(f"{self.url}/api/runs/{run['id']}/stop", timeout=30)
        return running_s, frame_s

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.store.close()
        self.log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pause-s", type=float, default=8.0,
                        help="between starts: time for the next idle worker to import torch")
    parser.add_argument("--config", default='{"epochs": 5000}',
                        help="the run each start posts (JSON)")
    args = parser.parse_args()
    config = json.loads(args.config)
    with tempfile.TemporaryDirectory(prefix="sparsescope-start-") as folder:
        servers = {}
        for label, warm in (("cold", 0), ("warm", 1)):
            (Path(folder) / label).mkdir()
            servers[label] = Server(Path(folder) / label / "data", warm)
        time.sleep(args.pause_s)  # the warm server's first idle worker
        results: dict[str, list[tuple[float, float]]] = {label: [] for label in servers}
        try:
            for round_number in range(args.rounds):
                for label, server in servers.items():
                    running_s, frame_s = server.start_once(config)
                    results[label].append((running_s, frame_s))
                    print(f"round {round_number + 1} {label}: running {running_s:.2f} s, "
                          f"first frame {frame_s:.2f} s", flush=True)
                    time.sleep(args.pause_s)
        finally:
            for server in servers.values():
                server.close()
    medians = {label: (statistics.median(r for r, _ in rows), statistics.median(f for _, f in rows))
               for label, rows in results.items()}
    print(f"\nconfig {json.dumps(config)}, {args.rounds} rounds, {os.cpu_count()} CPUs")
    print("| workers | to running (median) | to first heatmap (median) |")
    print("|---|---|---|")
    for label, (running_s, frame_s) in medians.items():
        print(f"| {label} | {running_s:.2f} s | {frame_s:.2f} s |")
    print(f"warm / cold, first heatmap: {medians['warm'][1] / medians['cold'][1]:.2f}")


if __name__ == "__main__":
    main()
