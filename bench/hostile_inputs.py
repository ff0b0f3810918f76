"""Memory and time of a real server under the inputs that used to exhaust it (issue 12).

    .venv/bin/python bench/hostile_inputs.py

A fresh `python -m backend` on a fresh data folder; its resident memory (VmRSS) and peak
(VmHWM) idle, then after each of: a 200 MB request header sent without a token, a remote
run's keyframe declaring a [46340, 46340] layer, and one 60 MB ingest batch (the ingest body
limit is 64 MiB); the server's health afterwards. One run; nothing is asserted (the refusals
themselves are tested in tests/backend/test_guards.py and test_stored_input.py).

Then (issue 30, bounded whatever is stored), each with its answer's size, time and the
server's resident memory and peak (reset before each case where the kernel allows): the runs
list over 64 runs whose config, info and summary are 4 MiB each; over 20,000 runs (first
page, a 304 poll, every page, filters), and the dashboard painting it in chromium (when
installed); a remote writer sending 1 M distinct metric names (refused); 16 clients listing at
once. Only loopback; the server is stopped at the end.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.service import free_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HEADER_MB = 200
MIB = 1024 * 1024
MANY_RUNS = 20_000
METRIC_NAMES = 1_000_000
LISTERS = 16


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


def reset_peak(pid: int) -> None:
    """Start VmHWM again from the current RSS (Linux: 5 > clear_refs), so a case's peak is
    its own; where that is not allowed the peak stays the process's."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def memory(pid: int) -> str:
    return f"RSS {memory_mb(pid, 'VmRSS'):.0f} MB, peak {memory_mb(pid, 'VmHWM'):.0f} MB"


def timed_get(client: httpx.Client, path: str, **kwargs) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = client.get(path, **kwargs)
    return response, time.perf_counter() - started


def report(label: str, response: httpx.Response, seconds: float, pid: int) -> None:
    print(f"  {label}: {response.status_code}, {len(response.content):,} bytes, "
          f"{seconds * 1e3:.0f} ms; {memory(pid)}")


def next_page(response: httpx.Response) -> str | None:
    match = re.search(r'<([^>]*)>; rel="next"', response.headers.get("link", ""))
    return match.group(1) if match else None


def insert_runs(data_dir: Path, rows: list[tuple]) -> None:
    """Runs written straight into the server's folder, as another writer on it would."""
    from dst_core.store import RunStore

    store = RunStore(data_dir)
    with store._write() as db:
        db.executemany("INSERT INTO runs (id, name, config, status, created_at, info, summary) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    store.close()


def fat_runs(client: httpx.Client, data_dir: Path, pid: int) -> None:
    """64 runs whose config, info and summary are ~4 MiB each (the store's limit per
    document), their listed fields the huge ones."""
    big = "x" * (4 * MIB - 100)
    config = json.dumps({"task": big, "method": "set", "pad": big[:100]})
    info = json.dumps({"writer": big, "settings": {"model": big, "method": "rigl"}})
    summary = json.dumps({"steps": 7, "best_test_accuracy": 0.5, "pad": big})
    insert_runs(data_dir, [(f"fa7{index:013x}", "n" * 1000, config, "completed",
                            1_000_000.0 + index, info, summary) for index in range(64)])
    print(f"64 runs of 3 × 4 MiB ({64 * 3 * 4} MiB stored):")
    for label, path in (("list", "/api/runs"), ("list again", "/api/runs"),
                        ("list ?q=zzz (searches all 64)", "/api/runs?q=zzz"),
                        ("one run whole", "/api/runs/fa70000000000000")):
        reset_peak(pid)
        report(label, *timed_get(client, path), pid)


def many_runs(client: httpx.Client, data_dir: Path, pid: int, url: str) -> None:
    now = time.time()
    settings = {"task": "digits", "model": "mlp [64, 64]", "method": "rigl", "density": 0.1}
    info = json.dumps({"writer": "worker", "torch": "2", "seed": 1, "settings": settings})
    summary = json.dumps({"steps": 1000, "final_loss": 0.3, "best_test_accuracy": 0.9})
    insert_runs(data_dir, [(f"{index:016x}", f"run {index}", json.dumps({**settings,
                            "hidden": [64, 64], "epochs": 3}), ("completed", "failed")[index % 2],
                            now - MANY_RUNS + index, info, summary) for index in range(MANY_RUNS)])
    print(f"{MANY_RUNS:,} runs:")
    reset_peak(pid)
    first, seconds = timed_get(client, "/api/runs")
    report("first page (200)", first, seconds, pid)
    reset_peak(pid)
    report("poll, unchanged (If-None-Match)",
           *timed_get(client, "/api/runs", headers={"If-None-Match": first.headers["etag"]}), pid)
    reset_peak(pid)
    started, pages, size, path = time.perf_counter(), 0, 0, "/api/runs?limit=500"
    while path:
        response = client.get(path)
        pages, size = pages + 1, size + len(response.content)
        path = next_page(response)
    print(f"  every page at limit=500: {pages} pages, {size:,} bytes, "
          f"{(time.perf_counter() - started) * 1e3:.0f} ms; {memory(pid)}")
    for label, path in (("?status=failed", "/api/runs?status=failed"),
                        ("?q=run 1999 (name)", "/api/runs?q=run%201999"),
                        ("?q=RIGL (every run's method)", "/api/runs?q=RIGL")):
        reset_peak(pid)
        report(label, *timed_get(client, path), pid)
    paint(url)


def paint(url: str) -> None:
    """The runs page in Debian chromium, from a cold tab: until its first 200 rows are
    painted (and of that, from the list's request on), then what its 3 s polls of the
    unchanged list cost over 10 s (request and answer, headers included)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("  (no playwright: the page was not measured)")
        return
    if not Path("/usr/bin/chromium").exists():
        print("  (no /usr/bin/chromium: the page was not measured)")
        return

    def size(response) -> int:
        request = response.request
        head = sum(len(item["name"]) + len(item["value"]) + 4
                   for item in response.headers_array() + request.headers_array())
        return head + len(request.url) + (len(response.body()) if response.status == 200 else 0)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                             args=["--headless", "--no-sandbox", "--disable-gpu"])
        for attempt in range(3):  # the first tab also warms chromium itself
            page = browser.new_page()
            started = time.perf_counter()
            page.goto(f"{url}/#/runs")
            page.wait_for_selector("#runs-body tr:nth-child(200)", timeout=60_000)
            painted_s = time.perf_counter() - started
            list_ms = page.evaluate(
                "performance.now() - performance.getEntriesByType('resource')"
                ".find(entry => /\\/api\\/runs\\?/.test(entry.name)).startTime")
            polls: list = []

            def polled(response, polls=polls) -> None:
                if re.search(r"/api/runs(\?|$)", response.url):
                    polls.append((response.status, size(response)))

            page.on("response", polled)
            page.wait_for_timeout(10_000)
            print(f"  the runs page, tab {attempt + 1}: 200 rows painted {painted_s * 1e3:.0f} ms "
                  f"after navigating ({list_ms:.0f} ms of it from the list's request on); "
                  f"{len(polls)} polls in 10 s, statuses {sorted({s for s, _ in polls})}, "
                  f"{max((b for _, b in polls), default=0):,} bytes each at most")
            page.close()
        browser.close()


def metric_names(client: httpx.Client, pid: int) -> None:
    run_id = client.post("/api/ingest/runs", json={"name": "many names"}).json()["id"]
    per_event = 100
    events = [{"seq": 2 + index, "step": index, "type": "metrics",
               **{f"m{index * per_event + name}": 1.0 for name in range(per_event)}}
              for index in range(METRIC_NAMES // per_event)]
    body = json.dumps({"events": events}).encode()
    reset_peak(pid)
    started = time.perf_counter()
    answer = client.post(f"/api/ingest/runs/{run_id}/events", content=body,
                         headers={"content-type": "application/json"})
    seconds = time.perf_counter() - started
    message = answer.json()["detail"][0]["msg"] if answer.status_code == 422 else answer.text
    print(f"{METRIC_NAMES:,} metric names in one {len(body) / 1e6:.0f} MB batch: "
          f"{answer.status_code} after {seconds * 1e3:.0f} ms ({message[:90]}…); {memory(pid)}")
    accepted = refused_after = 0
    for index in range(20):  # a writer creeping up: 100 new names a batch
        batch = {"events": [{"seq": 2 + index, "step": index, "type": "metrics",
                             **{f"c{index}_{name}": 1.0 for name in range(100)}}]}
        started = time.perf_counter()
        answer = client.post(f"/api/ingest/runs/{run_id}/events", json=batch)
        if answer.status_code != 200:
            refused_after = (time.perf_counter() - started) * 1e3
            break
        accepted += 100
    print(f"  100 new names a batch: {accepted} accepted, the next batch refused "
          f"({answer.status_code}) in {refused_after:.0f} ms")
    reset_peak(pid)
    report("/metrics of that run (default: 64 series)",
           *timed_get(client, f"/api/runs/{run_id}/metrics"), pid)
    reset_peak(pid)
    report("/metrics/names", *timed_get(client, f"/api/runs/{run_id}/metrics/names"), pid)


def concurrent_lists(url: str, pid: int) -> None:
    paths = ["/api/runs", "/api/runs?limit=500", "/api/runs?status=completed",
             "/api/runs?q=run%201", "/api/runs?q=zzz"]

    def lister(worker: int) -> tuple[int, int]:
        largest = failures = 0
        with httpx.Client(base_url=url, timeout=300) as client:
            for round_ in range(5):
                response = client.get(paths[(worker + round_) % len(paths)])
                largest = max(largest, len(response.content))
                failures += response.status_code != 200
        return largest, failures

    reset_peak(pid)
    started = time.perf_counter()
    with ThreadPoolExecutor(LISTERS) as pool:
        results = list(pool.map(lister, range(LISTERS)))
    print(f"{LISTERS} clients × 5 lists at once (pages, filters; fat runs included): "
          f"{(time.perf_counter() - started) * 1e3:.0f} ms, largest answer "
          f"{max(size for size, _ in results):,} bytes, "
          f"{sum(failed for _, failed in results)} not 200; {memory(pid)}")


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="hostile-"))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "backend", "--port", str(port), "--data-dir", str(folder / "data")],
        cwd=REPO, env={**os.environ, "SPARSESCOPE_WARM_WORKERS": "0"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=300)
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
        fat_runs(client, folder / "data", pid)
        many_runs(client, folder / "data", pid, url)
        metric_names(client, pid)
        concurrent_lists(url, pid)
        print(f"health afterwards: {client.get('/api/health').status_code}")
    finally:
        server.terminate()
        server.wait(timeout=15)


if __name__ == "__main__":
    main()
