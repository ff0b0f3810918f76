"""How the server behaves as a service, measured on a real `python -m backend` process.

    .venv/bin/python bench/service.py

Prints: worker start-up, cooperative stop and forced stop (a frozen worker killed after the
grace period) as seen by the client, replay throughput of one viewer against twenty at once
(as a ratio, from one run), and the time from SIGTERM to exit with twenty viewers connected
to a live run. Timings depend on the machine's load; the ratios are what to compare.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

REPO = Path(__file__).resolve().parent.parent
LONG_RUN = {"epochs": 5000, "hidden": [64, 64]}
VIEWERS = 20
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(data_dir.parent / "server.log", "wb")  # noqa: SIM115  (lives as long as the server)
    process = subprocess.Popen([sys.executable, "-m", "backend", "--port", str(port),
                                "--data-dir", str(data_dir)], cwd=REPO, stdout=log,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)


def wait_status(url: str, run_id: str, statuses: tuple[str, ...]) -> dict:
    while True:
        run = httpx.get(f"{url}/api/runs/{run_id}").json()
        if run["status"] in statuses:
            return run
        time.sleep(0.02)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads, not its children)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def worker_pid(server_pid: int) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2:].split()[1]) == server_pid:
                return int(entry.name)
    raise RuntimeError("no worker")


async def viewer(url: str) -> int:
    count = 0
    async with connect(url, max_size=None) as ws:
        async for text in ws:
            count += 1
            if json.loads(text)["type"] == "end":
                return count
    return count


async def viewers(url: str, how_many: int) -> tuple[float, int]:
    started = time.perf_counter()
    counts = await asyncio.gather(*(viewer(url) for _ in range(how_many)))
    return time.perf_counter() - started, sum(counts)


def main() -> None:
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        process, url = start_server(data_dir)
        ws_url = url.replace("http://", "ws://")
        try:
            asked = time.perf_counter()
            run = httpx.post(f"{url}/api/runs", json=LONG_RUN).json()
            wait_status(url, run["id"], ("running",))
            rows.append(("POST → running (worker start-up)", f"{time.perf_counter() - asked:.2f} s"))
            # Stop mid-training (the set-up before the first step is not interruptible).
            while httpx.get(f"{url}/api/runs/{run['id']}").json()["summary"].get("steps", 0) < 50:
                time.sleep(0.05)
            asked = time.perf_counter()
            stopped = httpx.post(f"{url}/api/runs/{run['id']}/stop", timeout=30).json()
            rows.append((f"cooperative stop mid-training → {stopped['status']}",
                         f"{time.perf_counter() - asked:.3f} s"))

            frozen = httpx.post(f"{url}/api/runs", json=LONG_RUN).json()
            wait_status(url, frozen["id"], ("running",))
            os.kill(worker_pid(process.pid), signal.SIGSTOP)
            asked = time.perf_counter()
            stopped = httpx.post(f"{url}/api/runs/{frozen['id']}/stop", timeout=30).json()
            rows.append((f"frozen worker stop → {stopped['status']} (3 s grace, then SIGKILL)",
                         f"{time.perf_counter() - asked:.3f} s"))

            done = httpx.post(f"{url}/api/runs", json={"epochs": 100, "hidden": [64, 64]}).json()
            wait_status(url, done["id"], ("completed", "failed"))
            replay = f"{ws_url}/ws/runs/{done['id']}"
            one_s, one_n = asyncio.run(viewers(replay, 1))
            many_s, many_n = asyncio.run(viewers(replay, VIEWERS))
            rows.append(("replay, 1 viewer", f"{one_n / one_s:,.0f} messages/s ({one_n} msgs)"))
            rows.append((f"replay, {VIEWERS} viewers at once",
                         f"{many_n / many_s:,.0f} messages/s in total"))
            rows.append((f"{VIEWERS}-viewer total throughput ÷ 1-viewer throughput",
                         f"{(many_n / many_s) / (one_n / one_s):.2f}×"))

            live = httpx.post(f"{url}/api/runs", json=LONG_RUN).json()
            wait_status(url, live["id"], ("running",))

            async def hold_and_terminate() -> float:
                sockets = [await connect(f"{ws_url}/ws/runs/{live['id']}", max_size=None)
                           for _ in range(VIEWERS)]
                for ws in sockets:
                    await ws.recv()
                sent = time.perf_counter()
                process.send_signal(signal.SIGTERM)
                while process.poll() is None:
                    await asyncio.sleep(0.01)
                elapsed = time.perf_counter() - sent
                for ws in sockets:
                    await ws.close()
                return elapsed

            exit_s = asyncio.run(hold_and_terminate())
            rows.append((f"SIGTERM → exit, live run + {VIEWERS} viewers open", f"{exit_s:.2f} s"))
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
