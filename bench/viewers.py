"""What viewers of a live run cost its trainer, measured on a real `python -m backend`.

    .venv/bin/python bench/viewers.py [--viewers 50] [--window-s 12] [--repo PATH]

One small-MLP run (digits, 64-64, the dashboard's defaults) trains in the server's worker;
its steps/s is measured over equal windows with 0 viewers, then N viewers following it live
(each subscribed from the newest seq, as the run view does, reading every message), then 0
again (the mean of the two 0-viewer windows is the baseline, so drift is not counted as
viewer cost). CPU seconds of the server process (without its worker), of the worker and of
this script's viewers are reported per window. Target (issue 12): N = 50 costs the trainer
≤ 10% of its steps/s. On a 2-core machine the viewers' own client CPU competes with the
trainer as well; the figures are from one run, on a machine other work may be loading.
`--repo` runs the server of another checkout (e.g. an older commit) for a before/after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.service import cpu_s, free_port, worker_pid  # noqa: E402  (/proc readers)

REPO = Path(__file__).resolve().parent.parent
RUN = {"epochs": 5000, "hidden": [64, 64]}  # far longer than the bench: it is deleted






def steps_of(url: str, run_id: str) -> int:
    return int(httpx.get(f"{url}/api/runs/{run_id}", timeout=30).json()["summary"].get("steps", 0))


class Viewers:
    """N websocket clients following a run live; each reads every message it is sent."""

    def __init__(self, url: str, count: int):
        self.url, self.count = url, count
        self.messages = 0
        self.tasks: list[asyncio.Task] = []

    async def _one(self, ready: asyncio.Event) -> None:
        async with connect(self.url, max_size=None) as ws:
            ready.set()
            async for _ in ws:
                self.messages += 1

    async def start(self) -> None:
        for _ in range(self.count):
            ready = asyncio.Event()
            self.tasks.append(asyncio.create_task(self._one(ready)))
            await asyncio.wait_for(ready.wait(), 30)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def window(url: str, run_id: str, seconds: float, server: int, worker: int) -> dict:
    before = (steps_of(url, run_id), cpu_s(server), cpu_s(worker), time.process_time(),
              time.perf_counter())
    await asyncio.sleep(seconds)
    after = (steps_of(url, run_id), cpu_s(server), cpu_s(worker), time.process_time(),
             time.perf_counter())
    wall = after[4] - before[4]
    return {"steps/s": (after[0] - before[0]) / wall, "server CPU s": after[1] - before[1],
            "worker CPU s": after[2] - before[2], "viewers' client CPU s": after[3] - before[3],
            "wall s": wall}


def newest_seq(data_dir: Path, run_id: str) -> int:
    """Read from the file (an older server has no endpoint for it): where the page starts."""
    with sqlite3.connect(f"file:{data_dir / 'runs.sqlite3'}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?",
                              (run_id,)).fetchone()[0])


async def measure(url: str, run_id: str, count: int, seconds: float, server: int,
                  data_dir: Path) -> list:
    ws_url = url.replace("http://", "ws://")
    while steps_of(url, run_id) < 200:  # past set-up and the first epoch
        await asyncio.sleep(0.2)
    worker = worker_pid(server)
    rows = [("0 viewers", await window(url, run_id, seconds, server, worker))]
    last_seq = newest_seq(data_dir, run_id)
    viewers = Viewers(f"{ws_url}/ws/runs/{run_id}?from_seq={last_seq + 1}", count)
    await viewers.start()
    await asyncio.sleep(2.0)  # connected and settled
    rows.append((f"{count} viewers", await window(url, run_id, seconds, server, worker)))
    rows[-1][1]["messages per viewer per s"] = viewers.messages / count / (seconds + 2.0)
    await viewers.stop()
    await asyncio.sleep(2.0)
    rows.append(("0 viewers again", await window(url, run_id, seconds, server, worker)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--window-s", type=float, default=12.0)
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose server to run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder) / "data"
        port = free_port()
        with open(Path(folder) / "server.log", "wb") as log:
            env = {**os.environ, "PYTHONPATH": str(args.repo)}
            server = subprocess.Popen([sys.executable, "-m", "backend", "--port", str(port),
                                       "--data-dir", str(data_dir)], cwd=args.repo, env=env,
                                      stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            run = httpx.post(f"{url}/api/runs", json=RUN, timeout=30).json()
            rows = asyncio.run(measure(url, run["id"], args.viewers, args.window_s, server.pid,
                                       data_dir))
            httpx.delete(f"{url}/api/runs/{run['id']}", timeout=60)
        finally:
            server.terminate()
            server.wait(timeout=30)
    baseline = (rows[0][1]["steps/s"] + rows[2][1]["steps/s"]) / 2
    print(f"server: {args.repo}  (load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores)")
    for name, figures in rows:
        print(f"{name:<16} " + "  ".join(f"{key} {value:,.1f}" for key, value in figures.items()))
    print(f"steps/s with {args.viewers} viewers ÷ without: "
          f"{rows[1][1]['steps/s'] / baseline:.3f} (target ≥ 0.90)")


if __name__ == "__main__":
    main()
