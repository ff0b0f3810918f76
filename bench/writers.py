"""Many remote writers, one server: what one SQLite run store takes in, measured end to end.

    .venv/bin/python bench/writers.py [--writers 1,4,16] [--duration-s 15] [--replay] [--quick]

For each N, a fresh `python -m backend` on a fresh data folder, and N writer processes, each
training a 784-1024-1024-10 MLP with a real SparseDriver (SET by default, rewired every
`--interval-steps` steps at a tiny batch, so the rewires come often) and streaming its
rewires, topology frames and per-step metrics through the library's remote Recorder
(`Recorder(url=...)`) over loopback. Every writer runs unpaced for `--duration-s`, then
finishes its run (the recorder drains everything it has not yet delivered), so the window
ends when the server has acknowledged the last batch: a server that falls behind stretches
the window instead of hiding a backlog.

Per N it prints the events/s and MB/s (request bodies) the server acknowledged in the
window, the round trip of one batch POST as each writer sees it (median / p99 over all
writers: parse, validate, one SQLite commit, reply), the server's CPU (utime + stime from
/proc, % of one core over the window) and its peak RSS (VmHWM), the writers' own steps/s,
and whether every run's stored events equal what its writer emitted (read from the data
folder after the run ended). On a machine with few cores the writers' training competes
with the server for CPU; the server's CPU column says which of the two ran out.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.service import cpu_s, free_port  # noqa: E402  (the /proc readers the benches share)

WIDTHS = [784, 1024, 1024, 10]  # the MLP every recording bench uses (bench/stream.py)


@dataclass
class WriterOptions:
    """What each writer trains and how it records; one set for all N writers of a round."""

    widths: list[int] = field(default_factory=lambda: list(WIDTHS))
    method: str = "set"  # SET: random growth, so no dense gradient is needed between rewires
    density: float = 0.1
    batch_size: int = 8  # tiny: the rewires and the recording are the point, not the math
    interval_steps: int = 5  # a rewire every 5 steps (RigL's default is 100): traffic, not accuracy
    duration_s: float = 15.0  # unpaced training, then finish (drain) the run
    flush_interval_s: float = 0.25  # the Recorder's default
    keyframe_every: int = 10  # the Recorder's default
    # Replay: train one keyframe cycle for real, then send its captured events (the same
    # payloads, steps moved on) in a loop: the writers' CPU goes to recording, not training,
    # so the server, not the writers, is what runs out. Masks read back are not meaningful.
    replay: bool = False


@dataclass
class RoundResult:
    """One N: what the server acknowledged, how fast, at what cost, and whether all arrived."""

    writers: int
    window_s: float
    events: int
    body_bytes: int
    latencies_s: list[float]
    retries: int
    server_cpu_s: float
    server_peak_rss_bytes: int
    steps_per_s: list[float]
    writers_cpu_s: float  # all writers together, their sender threads included
    rewires: int
    emitted: dict[str, int]  # run id -> events its writer numbered
    stored: dict[str, int]  # run id -> events stored from the writer's first seq on
    max_seq_ok: bool  # every run's highest stored seq is its writer's last

    @property
    def lost(self) -> int:
        return sum(self.emitted.values()) - sum(self.stored.get(run, 0) for run in self.emitted)






def peak_rss_bytes(pid: int) -> int:
    """The kernel's high-water mark of the process's resident set (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def launch_server(data_dir: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """A real server, as a user starts it; no warm worker, so its process is only the server."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "SPARSESCOPE_WARM_WORKERS": "0"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "backend", "--port", str(port),
                                    "--data-dir", str(data_dir)], cwd=REPO, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}"


def wait_healthy(process: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early: {log_path.read_text(errors='replace')}")
        try:
            if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server never became healthy")


def writer_process(index: int, url: str, options: WriterOptions, spool_dir: str,
                   server_up, go, results) -> None:
    """One training job on its own: builds its model and driver, records remotely, reports.

    Each events POST of the remote writer's sender thread is timed around its `_request`
    (the instance's attribute, looked up on every send), with the batch's seq range read from
    the head of its pending queue, which only the sender thread pops."""
    import torch

    from dst_core import SparseDriver
    from dst_core.recording.recorder import Recorder

    torch.set_num_threads(1)  # N jobs on a few cores: one thread each, as a fair share
    torch.manual_seed(index)
    layers: list[torch.nn.Module] = [torch.nn.Flatten()]
    for fan_in, fan_out in zip(options.widths[:-1], options.widths[1:], strict=True):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    driver = SparseDriver(model, optimizer, method=options.method, density=options.density,
                          distribution="uniform", interval_steps=options.interval_steps,
                          total_steps=1_000_000)  # far past the window: the fraction stays ~constant
    x = torch.rand(options.batch_size, options.widths[0])
    y = torch.randint(0, options.widths[-1], (options.batch_size,))
    server_up.wait()  # imports and the model were built while the server started

    recorder = Recorder(url=url, name=f"writer {index}", spool_dir=spool_dir,
                        flush_interval_s=options.flush_interval_s,
                        keyframe_every=options.keyframe_every)
    writer = recorder.writer
    first_seq = writer.next_seq
    sends: list[tuple[float, float, int, int]] = []  # (start, end, events, body bytes), monotonic
    retries = [0]
    plain_request = writer._request

    def timed_request(method: str, path: str, body: bytes | None = None, *args, **kwargs):
        if not path.endswith("/events"):
            return plain_request(method, path, body, *args, **kwargs)
        first, last, _ = writer._pending[0]
        started = time.monotonic()
        try:
            answer = plain_request(method, path, body, *args, **kwargs)
        except Exception:
            retries[0] += 1
            raise
        sends.append((started, time.monotonic(), last - first + 1, len(body or b"")))
        return answer

    writer._request = timed_request

    def train_step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        driver.step()
        recorder.log(driver.step_count, loss=loss.item())

    recorder.attach(driver)
    captured: list[tuple[str, int, dict]] = []
    if options.replay:
        # One keyframe cycle of real training, captured where the recorder takes events in
        # (the instance's `emit`, which the driver's listeners and `log` call) instead of sent.
        recorder.emit = lambda event_type, step, payload: captured.append(
            (event_type, step, payload))
        for _ in range(options.interval_steps * options.keyframe_every):
            train_step()
        del recorder.emit
    results.put({"ready": index})
    go.wait()
    started, cpu_started = time.monotonic(), time.process_time()
    steps = 0
    if not options.replay:
        while time.monotonic() - started < options.duration_s:
            train_step()
            steps += 1
    else:
        span = options.interval_steps * options.keyframe_every
        while time.monotonic() - started < options.duration_s:
            for event_type, step, payload in captured:
                recorder.emit(event_type, step + steps, payload)
            steps += span
            # Flow control the real recorder lacks: a writer always a batch behind never
            # empties its queue, so its spool file never starts over, fills (spool_max_bytes)
            # and the recorder gives up. Here each cycle waits until the server has it all.
            recorder.flush()
            while writer._pending:
                time.sleep(0.002)
    trained_s = time.monotonic() - started
    recorder.finish("completed")  # drains: returns once the server acknowledged every batch
    results.put({"index": index, "run_id": recorder.run_id, "first_seq": first_seq,
                 "last_seq": writer.next_seq - 1, "sends": sends, "retries": retries[0],
                 "steps_per_s": steps / trained_s, "rewires": steps // options.interval_steps,
                 "finished": time.monotonic(), "cpu_s": time.process_time() - cpu_started})


def _next_result(results, processes: list) -> dict:
    """The next message of any writer; a writer that died instead is an error, not a hang."""
    while True:
        try:
            return results.get(timeout=1.0)
        except queue.Empty:
            dead = [process.exitcode for process in processes
                    if process.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a writer process exited with {dead[0]}") from None


def stored_counts(data_dir: Path, firsts: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """Per run: events stored from its writer's first seq on, and its highest seq, read from
    the file itself (the count of rows, not a summary the server keeps)."""
    counts, highest = {}, {}
    with sqlite3.connect(f"file:{data_dir / 'runs.sqlite3'}?mode=ro", uri=True) as db:
        for run_id, first in firsts.items():
            counts[run_id], highest[run_id] = db.execute(
                "SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM events WHERE run_id = ? AND seq >= ?",
                (run_id, first)).fetchone()
    return counts, highest


def run_round(writer_count: int, options: WriterOptions, folder: Path) -> RoundResult:
    """N writers into one fresh server; the window runs from their common start to the last
    acknowledged batch."""
    data_dir = folder / f"data-{writer_count}"
    log_path = folder / f"server-{writer_count}.log"
    server, url = launch_server(data_dir, log_path)
    # Writers fork from a fork server that imported torch and the library once (never from
    # this process, which may be threaded): N processes without N imports of torch.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "dst_core", "dst_core.recording.recorder"])
    server_up, go = context.Event(), context.Event()
    results = context.Queue()
    processes = [context.Process(target=writer_process, daemon=True,
                                 args=(index, url, options, str(folder / "spool"), server_up, go,
                                       results))
                 for index in range(writer_count)]
    try:
        for process in processes:
            process.start()
        wait_healthy(server, url, log_path)
        server_up.set()
        # Every writer has built its model and attached (its keyframes are stored) before
        # the window opens: start-up (importing torch N times) is not ingest.
        for _ in processes:
            _next_result(results, processes)
        window_start = time.monotonic()
        cpu_before = cpu_s(server.pid)
        go.set()
        reports = [_next_result(results, processes) for _ in processes]
        cpu_after = cpu_s(server.pid)
        window_end = max(report["finished"] for report in reports)
        peak_rss = peak_rss_bytes(server.pid)
        for process in processes:
            process.join(timeout=60)
        firsts = {report["run_id"]: report["first_seq"] for report in reports}
        stored, highest = stored_counts(data_dir, firsts)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
        server.terminate()
        server.wait(timeout=60)
    in_window = [send for report in reports for send in report["sends"]
                 if send[0] >= window_start]
    return RoundResult(
        writers=writer_count, window_s=window_end - window_start,
        events=sum(send[2] for send in in_window), body_bytes=sum(send[3] for send in in_window),
        latencies_s=[send[1] - send[0] for send in in_window],
        retries=sum(report["retries"] for report in reports),
        server_cpu_s=cpu_after - cpu_before, server_peak_rss_bytes=peak_rss,
        steps_per_s=[report["steps_per_s"] for report in reports],
        writers_cpu_s=sum(report["cpu_s"] for report in reports),
        rewires=sum(report["rewires"] for report in reports),
        emitted={report["run_id"]: report["last_seq"] - report["first_seq"] + 1
                 for report in reports},
        stored=stored,
        max_seq_ok=all(highest[report["run_id"]] == report["last_seq"] for report in reports))


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: with few samples, a value that was actually measured."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def table(rows: list[RoundResult]) -> str:
    head = ("| writers | events/s | MB/s | batch POST median / p99 ms | server CPU % of a core "
            "| server peak RSS MB | writers' CPU % of a core (all) | steps/s per writer (median) "
            "| rewires | events emitted = stored |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        lines.append(
            f"| {row.writers} | {row.events / row.window_s:,.0f} | "
            f"{row.body_bytes / row.window_s / 1e6:.2f} | "
            f"{1e3 * statistics.median(row.latencies_s):.1f} / "
            f"{1e3 * percentile(row.latencies_s, 0.99):.1f} | "
            f"{100 * row.server_cpu_s / row.window_s:.0f} | "
            f"{row.server_peak_rss_bytes / 2**20:.0f} | "
            f"{100 * row.writers_cpu_s / row.window_s:.0f} | "
            f"{statistics.median(row.steps_per_s):.1f} | {row.rewires:,} | "
            f"{'yes' if row.lost == 0 and row.max_seq_ok else f'NO ({row.lost} lost)'} "
            f"({sum(row.emitted.values()):,}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", default="1,4,16", help="comma-separated N, one round each")
    parser.add_argument("--duration-s", type=float, default=None,
                        help="seconds each writer trains (default 15; 4 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: N = 1,2 (unless --writers), a 4-second window")
    parser.add_argument("--method", default="set", help="set or rigl (any registered method)")
    parser.add_argument("--interval-steps", type=int, default=5)
    parser.add_argument("--flush-interval-s", type=float, default=0.25)
    parser.add_argument("--keyframe-every", type=int, default=10)
    parser.add_argument("--replay", action="store_true",
                        help="writers resend one captured keyframe cycle of real training instead "
                             "of training: finds the server's own limit on a machine with few cores")
    args = parser.parse_args()
    writers = "1,2" if args.quick and args.writers == parser.get_default("writers") else args.writers
    counts = [int(part) for part in writers.split(",") if part.strip()]
    options = WriterOptions(method=args.method, interval_steps=args.interval_steps,
                            duration_s=args.duration_s or (4.0 if args.quick else 15.0),
                            flush_interval_s=args.flush_interval_s,
                            keyframe_every=args.keyframe_every, replay=args.replay)
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for count in counts:
            rows.append(run_round(count, options, Path(folder)))
            print(f"N = {count} done ({rows[-1].window_s:.1f} s window)", flush=True)
    print(f"\n{os.cpu_count()} cores, load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after; MLP {'-'.join(map(str, options.widths))}, "
          f"{options.method} density {options.density} every {options.interval_steps} steps, "
          f"batch {options.batch_size}, {options.duration_s:g} s per writer, flush every "
          f"{options.flush_interval_s:g} s, keyframe every {options.keyframe_every} rewires"
          f"{', replaying one captured keyframe cycle' if options.replay else ''}")
    print(table(rows))
    lost = [row for row in rows if row.lost or not row.max_seq_ok]
    if lost:
        raise SystemExit(f"events lost at N = {', '.join(str(row.writers) for row in lost)}")


if __name__ == "__main__":
    main()
