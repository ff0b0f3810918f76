"""Dashboard scale benchmark: a ResNet-50-shaped run opened in chromium, 100 vs 10 rewires.

    .venv/bin/python bench/dashboard_scale.py [--steps 100] [--width 64] [--quick] [--keep DIR]
                                              [--links-only]

Records, with `Recorder(data_dir)` and `SparseDriver(method="set", interval_steps=1)`, a model
built here (53 convs + a 1000-way fc, ~25.5 M weights at --width 64, BatchNorm, residuals, ERK at density
0.2) on 32×32 inputs, once with --steps rewires and once with a tenth of them; serves both with
`python -m backend`, opens each in chromium and prints, per run: time from navigation to the
visible panels painted, time for a scrub to another rewire to be painted (median of 50, the
page's view cache emptied before each), bytes
fetched in the first 20 s (everything but the page's own code, styles and fonts), JS heap
after open and after 50 scrubs. Then it follows a live recording of the same model and prints
how far behind the newest rewire the page ever was once a rewire had arrived, and what that
following cost the server (CPU ms) and each page (kB received) per rewire, with 1 and with 3
viewers (the difference: what one more viewer costs), next to the same following of a small
MLP (784-300-100-10).

First, for each run and for GPT-2 small (`GPT2Config()`, 124 M parameters, recorded by
examples/gpt2_rigl.py), a fresh page navigated straight to the run's link: seconds from the
navigation's start to the first painted panel, with an empty HTTP cache (`link_cold_s`) and
again from a second page (`link_warm_s`); then a notebook-like page of another origin with 7
inline views as `sparsescope.show()` renders them, all on screen: each view's first painted
panel, from the notebook page's navigation. `--links-only` stops there. (`open_s` is the third
figure: the in-page navigation from the runs list.)

Targets (issue 23): a link's first panel ≤ 1.0 s cold for the ResNet-50-shaped and the GPT-2
small runs, ≤ 1.5 s for each of the 7 inline views. Targets (issue 11): open ≤ 1.5 s, scrub
≤ 250 ms, ≤ 10 MB to open, heap ≤ 200 MB, none growing
with the number of rewires; live never more than one rewire behind. Nothing here is asserted
in tests; figures are of one run on this (shared) machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.service import cpu_s  # noqa: E402  (/proc reader)
from dst_core import SparseDriver  # noqa: E402
from dst_core.recording import Recorder  # noqa: E402

STAGES = (3, 4, 6, 3)  # ResNet-50: bottleneck blocks per stage


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3, 1×1 expand (×4), BatchNorm after each, a projection when the shape changes."""

    def __init__(self, inputs: int, width: int, stride: int):
        super().__init__()
        outputs = width * 4
        self.conv1 = nn.Conv2d(inputs, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, outputs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(outputs)
        self.project = None
        if stride != 1 or inputs != outputs:
            self.project = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (x if self.project is None else self.project(x)))


class ResNet(nn.Module):
    """ResNet-50's layout (stem conv, 16 bottlenecks in 4 stages, fc): 53 convs + 1 linear.

    `width` 64 is ResNet-50 itself (~25.5 M weights); a small width keeps the layer count and
    shapes' proportions for tests that need fifty layers recorded in seconds."""

    def __init__(self, width: int = 64, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)  # 32×32 inputs: a 3×3 stem
        self.bn = nn.BatchNorm2d(width)
        blocks = []
        inputs = width
        for stage, count in enumerate(STAGES):
            for block in range(count):
                blocks.append(Bottleneck(inputs, width * 2**stage, 2 if block == 0 and stage > 0 else 1))
                inputs = width * 2**stage * 4
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(inputs, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = self.blocks(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def record(data_dir: Path, *, steps: int, width: int = 64, image: int = 32, batch: int = 4,
           classes: int = 1000, name: str = "resnet", seed: int = 0, step_delay_s: float = 0.0,
           recorder_options: dict | None = None) -> str:
    """Train a ResNet-shaped model `steps` steps on random data, rewiring every step; returns
    the run id. The data are noise: the run is about the topology, not the accuracy."""
    torch.manual_seed(seed)
    model = ResNet(width, classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    driver = SparseDriver(model, optimizer, method="set", density=0.2, distribution="erk",
                          total_steps=steps + 1, interval_steps=1, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with Recorder(data_dir, name=name, seed=seed, **(recorder_options or {})) as recorder:
        recorder.attach(driver)
        for _step in range(steps):
            x = torch.randn(batch, 3, image, image, generator=generator)
            y = torch.randint(0, classes, (batch,), generator=generator)
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            driver.step()
            recorder.log(driver.step_count, loss=float(loss.detach()))
            if step_delay_s:
                time.sleep(step_delay_s)
        return recorder.run_id


# ---------------------------------------------------------------- measuring in chromium

OWN_CODE = ("/static/", "/vendor/", "/favicon")


def measure(browser, url: str, run_id: str, scrubs: int = 50) -> dict:
    """Open, scrub and heap figures of one run in a fresh tab."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
    page = context.new_page()
    fetched = {"bytes": 0, "requests": 0}
    started = {}

    def on_response(response):
        if time.monotonic() - started.get("t", 0) > 20 or any(part in response.url for part in OWN_CODE):
            return
        if response.url.rstrip("/") == url.rstrip("/"):
            return  # the page itself
        try:
            fetched["bytes"] += len(response.body())
            fetched["requests"] += 1
        except Exception:  # a response without a body (websocket upgrade, 204)
            pass

    page.on("response", on_response)
    client = context.new_cdp_session(page)
    frames = {"bytes": 0}
    client.send("Network.enable")
    client.on("Network.webSocketFrameReceived", lambda event: frames.__setitem__(
        "bytes", frames["bytes"] + len(event["response"]["payloadData"])))
    page.goto(f"{url}/#/runs")
    page.wait_for_function("document.querySelectorAll('#runs-body tr').length > 0")
    started["t"] = time.monotonic()
    t0 = time.perf_counter()
    page.evaluate(f"location.hash = '#/run/{run_id}'")
    page.wait_for_function("window.sparsescope.settled()"
                           " && document.querySelector('#heatmap-0')?.dataset.step",
                           timeout=60_000, polling="raf")
    open_s = time.perf_counter() - t0
    steps = page.evaluate("window.sparsescope.model.steps")
    heap_open = heap(client)
    times = []
    for i in range(scrubs):
        position = (i * 37 + 11) % len(steps)
        # Every scrub fetches: the page's view cache is emptied first, so a short run (whose 50
        # scrubs revisit its few rewires) is timed like a long one, not on cached answers.
        page.evaluate("(() => { const views = window.sparsescope.views;"
                      " views.entries.clear(); views.bytes = 0; })()")
        t1 = time.perf_counter()
        page.evaluate(f"window.sparsescope.player.seek({position})")
        page.wait_for_function("window.sparsescope.settled()"
                               f" && window.sparsescope.player.position === {position}",
                               timeout=30_000, polling="raf")
        times.append(time.perf_counter() - t1)
    heap_scrubbed = heap(client)
    remaining = 20 - (time.monotonic() - started["t"])
    if remaining > 0:
        page.wait_for_timeout(remaining * 1000)  # "bytes to open": what arrives in the first 20 s
    context.close()
    return {"rewires": len(steps), "open_s": round(open_s, 3),
            "scrub_ms_median": round(1000 * statistics.median(times), 1),
            "scrub_ms_max": round(1000 * max(times), 1),
            "bytes_fetched_20s_incl_scrubs": fetched["bytes"] + frames["bytes"],
            "heap_mb_open": heap_open, "heap_mb_after_50_scrubs": heap_scrubbed}


def bytes_to_open(browser, url: str, run_id: str) -> int:
    """Everything fetched in the first 20 s after navigating to the run (prefetch included),
    without scrubbing: REST answers and websocket frames, not the page's own code."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
    page = context.new_page()
    client = context.new_cdp_session(page)
    client.send("Network.enable")
    total = {"bytes": 0}
    client.on("Network.webSocketFrameReceived", lambda event: total.__setitem__(
        "bytes", total["bytes"] + len(event["response"]["payloadData"])))
    counted = []
    page.on("response", lambda response: counted.append(response))
    page.goto(f"{url}/#/run/{run_id}")
    page.wait_for_timeout(20_000)
    for response in counted:
        if any(part in response.url for part in OWN_CODE) or response.url.rstrip("/#") == url:
            continue
        try:
            total["bytes"] += len(response.body())
        except Exception:
            pass
    context.close()
    return total["bytes"]


def heap(client) -> float:
    client.send("HeapProfiler.collectGarbage")
    return round(client.send("Runtime.getHeapUsage")["usedSize"] / 2**20, 1)


def record_mlp(data_dir: Path, *, steps: int, name: str, seed: int = 0,
               step_delay_s: float = 0.0) -> str:
    """The small model live following is compared with: a 784-300-100-10 MLP, SET every step."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                          nn.Linear(100, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    driver = SparseDriver(model, optimizer, method="set", density=0.1, total_steps=steps + 1,
                          interval_steps=1, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with Recorder(data_dir, name=name, seed=seed) as recorder:
        recorder.attach(driver)
        for _step in range(steps):
            x = torch.randn(32, 784, generator=generator)
            y = torch.randint(0, 10, (32,), generator=generator)
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            driver.step()
            recorder.log(driver.step_count, loss=float(loss.detach()))
            time.sleep(step_delay_s)
        return recorder.run_id


def follow_live(browser, server, name: str, train, viewers: int = 1) -> dict:
    """A live recording (`train()` records a run called `name`), followed by `viewers` pages: how
    many rewires the first page was ever behind the newest stored one, sampled after each
    rewire is stored, and what following cost: the server's CPU seconds per rewire shown and
    the bytes each page received (REST answers and websocket frames) per rewire."""
    received = {"bytes": 0}

    def on_response(response):
        if any(part in response.url for part in OWN_CODE) or "/api/" not in response.url:
            return
        try:
            received["bytes"] += len(response.body())
        except Exception:  # a response without a body (websocket upgrade, 204)
            pass

    contexts, pages = [], []
    for _ in range(viewers):
        context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
        page = context.new_page()
        page.on("response", on_response)
        client = context.new_cdp_session(page)
        client.send("Network.enable")
        client.on("Network.webSocketFrameReceived", lambda event: received.__setitem__(
            "bytes", received["bytes"] + len(event["response"]["payloadData"])))
        contexts.append(context)
        pages.append(page)
    # The run this call records, not one of that name a kept folder holds from an earlier call.
    earlier = {run["id"] for run in server.http.get("/api/runs").json()}
    thread = threading.Thread(target=train)
    thread.start()
    deadline = time.monotonic() + 120
    run_id = None
    while time.monotonic() < deadline and run_id is None:
        runs = server.http.get("/api/runs").json()
        live = [run for run in runs if run["name"] == name and run["id"] not in earlier]
        run_id = live[0]["id"] if live else None
        time.sleep(0.2)
    server_cpu = cpu_s(server.process.pid)
    for page in pages:
        page.goto(f"{server.url}/#/run/{run_id}")
    behind = []
    while thread.is_alive():
        stored = server.http.get(f"/api/runs/{run_id}/rewires").json()["steps"]
        time.sleep(1.0)  # one rewire interval of this model, at least, for the page to show it
        shown = pages[0].evaluate("Number(document.querySelector('#heatmap-0')?.dataset.step ?? -1)")
        if stored:
            behind.append(sum(1 for step in stored if step > shown))
    thread.join()
    pages[0].wait_for_timeout(1500)  # the last rewire reaches the pages
    server_cpu = cpu_s(server.process.pid) - server_cpu
    shown = pages[0].evaluate("window.sparsescope.model.steps.length")
    for context in contexts:
        context.close()
    return {"live": name, "viewers": viewers, "live_samples": len(behind),
            "live_rewires_behind_max": max(behind, default=None), "rewires_shown": shown,
            "server_cpu_ms_per_rewire": round(1e3 * server_cpu / max(1, shown), 1),
            "kb_per_page_per_rewire": round(received["bytes"] / 1e3 / max(1, shown) / viewers, 1)}


def view_cost(browser, server, run_id: str, rewires: int = 15) -> dict:
    """Server CPU per rewire of what one more viewer asks for: the /view requests of the panels a
    page shows on opening the run, replayed at its last `rewires` rewires (the run is stored, so
    no training shares the CPU: following it live, the trainer on the same cores confounds it)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
    page = context.new_page()
    page.goto(f"{server.url}/#/run/{run_id}")
    page.wait_for_function("window.sparsescope.settled()"
                           " && document.querySelector('#heatmap-0')?.dataset.step",
                           timeout=60_000, polling="raf")
    urls = page.evaluate("performance.getEntriesByType('resource').map(e => e.name)"
                         ".filter(u => u.includes('/view?'))")
    context.close()
    panels = sorted({tuple(part.split("=")[1] for part in url.split("?")[1].split("&")
                           if part.split("=")[0] in ("layer", "rows", "cols")) for url in urls})
    steps = server.http.get(f"/api/runs/{run_id}/rewires").json()["steps"][-rewires:]
    before = cpu_s(server.process.pid)
    for step in steps:
        for layer, rows, cols in panels:
            answer = server.http.get(f"/api/runs/{run_id}/view",
                                     params={"layer": layer, "step": step, "rows": rows, "cols": cols})
            answer.raise_for_status()
    spent = cpu_s(server.process.pid) - before
    return {"views_per_rewire": len(panels),
            "server_cpu_ms_per_rewire_per_viewer": round(1e3 * spent / max(1, len(steps)), 1)}


PAINTED_AT = "window.sparsescope && window.sparsescope.firstPanelAt"


def wait_until_idle(busy_share: float = 0.15, window_s: float = 0.5, at_most_s: float = 30.0) -> None:
    """Until the machine's CPUs are mostly idle for `window_s` (/proc/stat): a link is opened on a
    server that has finished starting (its workers' torch import, the browser's own start-up),
    as a user opens one, not in the seconds the server spends starting."""
    def totals() -> tuple[int, int]:
        with open("/proc/stat") as file:
            values = [int(value) for value in file.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, all
    deadline = time.monotonic() + at_most_s
    while time.monotonic() < deadline:
        try:
            idle_before, all_before = totals()
            time.sleep(window_s)
            idle_after, all_after = totals()
        except OSError:  # not Linux: a fixed pause instead
            time.sleep(3)
            return
        if all_after > all_before and 1 - (idle_after - idle_before) / (all_after - all_before) < busy_share:
            return


def open_from_link(browser, url: str, run_id: str) -> dict:
    """A fresh page navigated straight to the run's link, as a shared link, a bookmark or a
    notebook cell opens it: seconds from the navigation's start to the first painted panel
    (the page's own clock), with an empty HTTP cache, then again from a second page of the
    same browser context (warm cache)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
    figures = {}
    for label in ("cold", "warm"):
        page = context.new_page()
        page.goto(f"{url}/#/run/{run_id}")
        painted_ms = page.wait_for_function(PAINTED_AT, timeout=60_000, polling=50).json_value()
        figures[f"link_{label}_s"] = round(painted_ms / 1000, 3)
        page.close()
    context.close()
    return figures


def inline_views(browser, url: str, parent_port: int, run_ids: list[str], count: int = 7,
                 all_on_screen: bool = True) -> list[float]:
    """A notebook-like page (another origin, as JupyterLab is) holding `count` inline views
    exactly as `sparsescope.show()` renders them. `all_on_screen`: a viewport tall enough for
    every view (the worst case: all of them load and paint together), seconds from the page's
    navigation to each view's first painted panel. Else a 1400 × 900 window scrolled to each
    view in turn as soon as the one before has painted: the first view's time from the
    navigation, each other's from the moment it was scrolled to."""
    import http.server

    from backend.notebook import InlineView

    cells = "".join(f"<div>{InlineView(f'{url}/#/run/{run_ids[i % len(run_ids)]}')._repr_html_()}</div>"
                    for i in range(count))
    body = f"<!doctype html><html><body>{cells}</body></html>".encode()

    class Notebook(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    notebook = http.server.ThreadingHTTPServer(("127.0.0.1", parent_port), Notebook)
    threading.Thread(target=notebook.serve_forever, daemon=True).start()
    height = 930 * count if all_on_screen else 900
    context = browser.new_context(viewport={"width": 1400, "height": height}, bypass_csp=True)
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{parent_port}/")
        origin = page.evaluate("performance.timeOrigin")
        times = []
        for position, element in enumerate(page.query_selector_all("iframe")):
            asked = 0.0
            if not all_on_screen and position:
                element.scroll_into_view_if_needed()
                asked = page.evaluate("performance.now()")
            frame = element.content_frame()
            painted_ms = frame.wait_for_function(PAINTED_AT, timeout=120_000, polling=50).json_value()
            painted = frame.evaluate("performance.timeOrigin") + painted_ms - origin
            times.append(round(max(0.0, painted - asked) / 1000, 3))
        return times
    finally:
        context.close()
        notebook.shutdown()
        notebook.server_close()


def record_gpt2(data_dir: Path) -> str:
    """GPT-2 small (124 M parameters, `GPT2Config()`) recorded by the example script as a user
    runs it (RigL, density 0.1, 4 rewires over 8 steps of 2 × 32 tokens); returns the run id."""
    from dst_core.store import RunStore
    from examples.gpt2_rigl import main as gpt2_rigl

    gpt2_rigl(["--data-dir", str(data_dir), "--steps", "8", "--interval-steps", "2",
               "--context", "32", "--batch-size", "2", "--name", "gpt2 small link"])
    return next(run["id"] for run in RunStore(data_dir).list_runs() if run["name"] == "gpt2 small link")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="rewires of the long run")
    parser.add_argument("--width", type=int, default=64, help="64 = ResNet-50 (~25.5 M weights)")
    parser.add_argument("--quick", action="store_true", help="width 16, 30 rewires: a smoke run")
    parser.add_argument("--keep", type=Path, default=None,
                        help="record into this folder once and reuse its runs the next time")
    parser.add_argument("--links-only", action="store_true",
                        help="only the opens from a link and the notebook's inline views")
    args = parser.parse_args()
    if args.quick:
        args.width, args.steps = 16, 30
    from playwright.sync_api import sync_playwright

    from tests.browser.conftest import CHROMIUM, FLAGS, Server
    from tests.conftest import free_port

    data_dir = args.keep or Path(tempfile.mkdtemp(prefix="dashboard-scale-"))
    model = ResNet(args.width, 1000)
    weights = sum(p.numel() for p in model.parameters() if p.dim() > 1)
    print(f"model: ResNet-50-shaped, width {args.width}, {weights / 1e6:.1f} M conv/fc weights, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")
    runs = {}
    kept = {}
    if args.keep is not None and (args.keep / "runs.sqlite3").exists():
        from dst_core.store import RunStore

        kept = {run["name"]: run["id"] for run in RunStore(args.keep).list_runs()
                if run["status"] == "completed"}
    for steps in (args.steps, max(1, args.steps // 10)):
        name = f"resnet {steps} rewires"
        if name in kept:
            runs[steps] = kept[name]
            continue
        t0 = time.perf_counter()
        runs[steps] = record(data_dir, steps=steps, width=args.width, name=name)
        print(f"recorded {steps} rewires in {time.perf_counter() - t0:.0f} s")
    gpt2 = kept.get("gpt2 small link") or record_gpt2(data_dir)
    # The notebook page is another origin: the server lets it frame the run view, as a server
    # that `sparsescope.show()` starts lets the notebook's origin.
    parent_port = free_port()
    os.environ["SPARSESCOPE_FRAME_ANCESTORS"] = f"'self' http://127.0.0.1:{parent_port}"
    server = Server(data_dir)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            # Each figure is one user's action on a quiet machine: a page closed after its first
            # panel leaves the server working on what it asked for next (GPT-2's speedup column
            # reads every layer's mask: seconds of CPU), which the next figure must not pay.
            for label, run_id in [*((f"resnet {steps} rewires", run_id) for steps, run_id in runs.items()),
                                  ("gpt2 small", gpt2)]:
                wait_until_idle()
                figures = open_from_link(browser, server.url, run_id)
                if not args.links_only and label != "gpt2 small":
                    figures.update(measure(browser, server.url, run_id))  # open_s: in-page navigation
                    figures["bytes_to_open"] = bytes_to_open(browser, server.url, run_id)
                print(json.dumps({"run": label, **figures}))
            for on_screen in (True, False):
                wait_until_idle()
                views = inline_views(browser, server.url, parent_port, [runs[min(runs)], gpt2],
                                     all_on_screen=on_screen)
                print(json.dumps({"notebook": "7 inline views, " + (
                    "all on screen at once" if on_screen else "a 900 px window scrolled to each"),
                    "first_panel_s": views}))
            if args.links_only:
                browser.close()
                return
            live_steps = max(10, args.steps // 5)
            # With 1 and with 3 viewers: the difference is what one more viewer costs the
            # server; the same for a small model, paced like the ResNet's steps (about 1/s).
            costs = {}
            for viewers in (1, 3):
                for model in ("resnet", "mlp"):
                    name = f"{model} live {viewers}"
                    train = (lambda name=name: record(data_dir, steps=live_steps, width=args.width,
                                                      name=name, seed=2)) if model == "resnet" \
                        else (lambda name=name: record_mlp(data_dir, steps=live_steps, name=name,
                                                           seed=2, step_delay_s=1.0))
                    figures = follow_live(browser, server, name, train, viewers)
                    costs[(model, viewers)] = figures["server_cpu_ms_per_rewire"]
                    print(json.dumps(figures))
            for model in ("resnet", "mlp"):
                extra = (costs[(model, 3)] - costs[(model, 1)]) / 2
                print(json.dumps({"live": model, "server_cpu_ms_per_rewire_per_extra_viewer":
                                  round(extra, 1)}))
            # What one viewer asks the server per rewire, without a trainer on the same cores.
            stored = {}  # name -> the newest run of that name (the list is newest first)
            for run in server.http.get("/api/runs").json():
                stored.setdefault(run["name"], run["id"])
            for name in (f"resnet {args.steps} rewires", "mlp live 1"):
                print(json.dumps({"stored": name, **view_cost(browser, server, stored[name])}))
            browser.close()
    finally:
        server.close()


if __name__ == "__main__":
    main()
