"""Recording and streaming benchmark: frame sizes, binary vs JSON, recording overhead, seek.

    .venv/bin/python bench/stream.py [--quick] [--steps N] [--overhead-only]
    .venv/bin/python bench/stream.py --overhead-only --model gpt2 --steps 60

Targets: keyframe <= 1/8 of the bool mask's bytes, delta <= 4 bytes per changed
edge, recording overhead <= 5% of training time for a 784-1024-1024-10 MLP (and, with
`--model gpt2`, for GPT-2 small under RigL, issue 26), seek <= 200 ms
to a random step of a 10,000-step run rewired every 10 steps. Figures are ratios and
medians of one run on this machine; nothing here is asserted in tests.
"""
# ruff: noqa: B023  (the timed closures run inside the loop iteration that defines them)

from __future__ import annotations

import argparse
import base64
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dst_core import SparseDriver  # noqa: E402
from dst_core.events import delta_payload, keyframe_payload  # noqa: E402
from dst_core.recording import Recorder  # noqa: E402
from dst_core.store import RunReader, RunStore, codec
from dst_core.store.run_store import dumps  # noqa: E402

DENSITY = 0.1
DROP_FRACTION = 0.3  # SET's default: 30% of active connections replaced per rewire
GPT2_BATCH, GPT2_CONTEXT = 2, 32  # --model gpt2: tokens per step (a CPU step takes ~1 s)


def random_mask(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    numel = rows * cols
    mask = np.zeros(numel, dtype=bool)
    mask[rng.choice(numel, int(DENSITY * numel), replace=False)] = True
    return mask


def rewire_indices(mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Net changes of one SET-sized rewire: 30% of active dropped, as many grown elsewhere."""
    active = np.flatnonzero(mask)
    inactive = np.flatnonzero(~mask)
    count = int(DROP_FRACTION * active.size)
    removed = np.sort(rng.choice(active, count, replace=False))
    added = np.sort(rng.choice(inactive, count, replace=False))
    return added, removed


def best_of(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def frame_sizes(sizes: list[int]) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for side in sizes:
        mask = random_mask(side, side, rng)
        packed = np.packbits(mask, bitorder="little").tobytes()
        keyframe = codec.encode_keyframe(packed)
        added, removed = rewire_indices(mask, rng)
        delta = codec.encode_delta(added, removed)
        changed = added.size + removed.size
        repeats = 3 if side >= 4096 else 10

        # JSON wire: server builds the payload text, the client parses it and decodes.
        kf_header = {"seq": 9, "step": 10, "type": "topology", "layer": "w", "index": 0,
                     "shape": [side, side], "keyframe": True, "active": int(mask.sum())}
        dl_header = {**kf_header, "keyframe": False}

        def json_keyframe():
            text = dumps({**kf_header, **codec.stored_to_payload(kf_header, keyframe)})
            event = json.loads(text)
            bits = np.frombuffer(base64.b64decode(event["bits"]), np.uint8)
            return np.unpackbits(bits, bitorder="little", count=side * side)

        def binary_keyframe():
            message = codec.binary_message(kf_header, codec.stored_to_raw(kf_header, keyframe))
            header, payload = codec.parse_binary_message(message)
            return np.unpackbits(np.frombuffer(payload, np.uint8), bitorder="little",
                                 count=side * side)

        def json_delta():
            text = dumps({**dl_header, **codec.stored_to_payload(dl_header, delta)})
            event = json.loads(text)
            return (np.frombuffer(base64.b64decode(event["added"]), "<u4"),
                    np.frombuffer(base64.b64decode(event["removed"]), "<u4"))

        def binary_delta():
            header = {**dl_header, "n_added": int(added.size), "n_removed": int(removed.size)}
            message = codec.binary_message(header, codec.stored_to_raw(header, delta))
            header, payload = codec.parse_binary_message(message)
            indices = np.frombuffer(payload, "<u4")
            return indices[:header["n_added"]], indices[header["n_added"]:]

        json_kf_bytes = len(dumps({**kf_header, **codec.stored_to_payload(kf_header, keyframe)}))
        binary_kf_bytes = len(codec.binary_message(kf_header, packed))
        json_dl_bytes = len(dumps({**dl_header, **codec.stored_to_payload(dl_header, delta)}))
        binary_dl_bytes = len(codec.binary_message(
            {**dl_header, "n_added": int(added.size), "n_removed": int(removed.size)},
            added.astype("<u4").tobytes() + removed.astype("<u4").tobytes()))
        rows.append({
            "layer": f"{side}x{side}", "bool_bytes": mask.size, "packbits_bytes": len(packed),
            "keyframe_bytes": len(keyframe), "keyframe_vs_bool": len(keyframe) / mask.size,
            "changed_edges": changed, "delta_bytes": len(delta),
            "delta_bytes_per_edge": len(delta) / changed,
            "json_keyframe_bytes": json_kf_bytes, "binary_keyframe_bytes": binary_kf_bytes,
            "json_keyframe_ms": 1e3 * best_of(json_keyframe, repeats),
            "binary_keyframe_ms": 1e3 * best_of(binary_keyframe, repeats),
            "json_delta_bytes": json_dl_bytes, "binary_delta_bytes": binary_dl_bytes,
            "json_delta_ms": 1e3 * best_of(json_delta, repeats),
            "binary_delta_ms": 1e3 * best_of(binary_delta, repeats),
        })
    return rows


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 1024), torch.nn.ReLU(),
                               torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
                               torch.nn.Linear(1024, 10))


class Trainer:
    """The MLP's training, plain or recorded, stepped a chunk at a time so that the two can
    take turns in one process (see `overhead`).

    Besides its own wall time it keeps the seconds spent inside rewires (the engine's, not
    the recorder's) and inside the recorder's own calls (listeners at each rewire, log,
    flushes)."""

    def __init__(self, total_steps: int, interval_steps: int, record_dir: Path | None,
                 model: str = "mlp"):
        torch.manual_seed(0)  # both trainers start from the same weights, masks and data
        self.kind = model
        if model == "gpt2":  # GPT-2 small as examples/gpt2_rigl.py trains it: RigL, AdamW
            from transformers import GPT2Config, GPT2LMHeadModel

            self.model = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=GPT2_CONTEXT,
                                                    bos_token_id=0, eos_token_id=0))
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=6e-4)
            method, distribution = "rigl", "erk"
            self.x = torch.randint(0, 256, (GPT2_BATCH, GPT2_CONTEXT))
        else:
            self.model = mlp()
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
            method, distribution = "set", "uniform"
            self.x, self.y = torch.rand(128, 784), torch.randint(0, 10, (128,))
        self.driver = SparseDriver(self.model, self.optimizer, method=method, density=DENSITY,
                                   total_steps=total_steps * 10, interval_steps=interval_steps,
                                   distribution=distribution)
        self.step = 0
        self.spent = {"total_s": 0.0, "rewire_s": 0.0, "recorder_s": 0.0, "fixed_s": 0.0}
        # The rewire runs inside the algorithm's after-step hook, timed on a copy of the
        # registry's (shared, stateless) instance that is this driver's own.
        algorithm = self.driver.algorithm = copy.copy(self.driver.algorithm)
        algorithm.after_optimizer_step = self._timed(
            type(algorithm).after_optimizer_step.__get__(algorithm), "rewire_s")
        self.recorder = None
        if record_dir is not None:
            start = time.perf_counter()
            self.recorder = Recorder(record_dir, name="overhead", heartbeat_s=2.0)
            self.recorder.attach(self.driver)
            self.driver.listeners[:] = [self._timed(listener, "recorder_s")
                                        for listener in self.driver.listeners]
            self.recorder.log = self._timed(self.recorder.log, "recorder_s")
            self._charge(time.perf_counter() - start, fixed=True)

    def _timed(self, function, key):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.spent[key] += time.perf_counter() - start
        return wrapper

    def _charge(self, seconds: float, fixed: bool = False) -> None:
        self.spent["total_s"] += seconds
        if fixed:
            self.spent["fixed_s"] += seconds

    def run(self, steps: int) -> None:
        start = time.perf_counter()
        model, optimizer, driver, recorder = self.model, self.optimizer, self.driver, self.recorder
        for _ in range(steps):
            self.step += 1
            loss = (model(self.x, labels=self.x).loss if self.kind == "gpt2"
                    else torch.nn.functional.cross_entropy(model(self.x), self.y))
            optimizer.zero_grad()
            loss.backward()
            driver.step()
            if recorder is not None:
                recorder.log(self.step, loss=loss.item())
        if recorder is not None:
            # What a loop that went on would flush at its next emit: flushed in this turn,
            # not by the heartbeat thread while the other trainer has its turn.
            recorder.flush()
        self._charge(time.perf_counter() - start)

    def finish(self) -> None:
        if self.recorder is not None:
            start = time.perf_counter()
            self.recorder.finish("completed")
            self._charge(time.perf_counter() - start, fixed=True)

    def background_cpu_s(self) -> float:
        """CPU seconds the recorder's heartbeat thread has used (Linux's schedstat; 0 where
        it cannot be read)."""
        thread = self.recorder._beat_thread if self.recorder is not None else None
        if thread is None or thread.native_id is None:
            return 0.0
        try:
            with open(f"/proc/self/task/{thread.native_id}/schedstat") as file:
                return int(file.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0


def overhead(steps: int, interval_steps: int, chunk_steps: int = 50, model: str = "mlp") -> dict:
    """Plain and recorded training of the same MLP, in one process, taking turns every
    `chunk_steps` steps in the order ABBA ABBA …: a shared machine drifts by several percent
    between runs seconds apart, and turns this short cancel that drift out.

    What the recorder's heartbeat thread spends while the plain trainer has its turn
    (checkpoints, heartbeats) is charged to the recorded one, so nothing it costs is hidden;
    creating, attaching and finishing the recorder are charged too. The overhead is the
    recorded trainer's total over the plain one's, minus 1; `block_overheads` are the same per
    ABBA block, whose median shows how steady the figure is."""
    chunk_steps = max(1, min(chunk_steps, steps))
    with tempfile.TemporaryDirectory() as folder:
        plain = Trainer(steps, interval_steps, None, model)
        recorded = Trainer(steps, interval_steps, Path(folder) / "recorded", model)
        blocks: list[tuple[float, float]] = []
        background_during_plain = 0.0
        done = 0
        while done < steps:
            block = [0.0, 0.0]  # plain, recorded seconds of this block
            for trainer in (plain, recorded, recorded, plain):
                count = min(chunk_steps, steps - trainer.step)
                if count <= 0:
                    continue
                before_total = trainer.spent["total_s"]
                before_background = recorded.background_cpu_s()
                trainer.run(count)
                if trainer is plain:
                    charged = recorded.background_cpu_s() - before_background
                    background_during_plain += charged
                    recorded._charge(charged)
                    block[1] += charged
                block[trainer is recorded] += trainer.spent["total_s"] - before_total
            blocks.append((block[0], block[1]))
            done = min(plain.step, recorded.step)
        recorded.finish()
    plain_s, recorded_s = plain.spent["total_s"], recorded.spent["total_s"]
    block_overheads = [b / a - 1 for a, b in blocks if a > 0]
    return {"model": model, "steps": steps, "interval_steps": interval_steps,
            "chunk_steps": chunk_steps,
            "plain_s": plain_s, "recorded_s": recorded_s,
            "overhead": recorded_s / plain_s - 1,
            "block_overheads": block_overheads,
            "block_median": statistics.median(block_overheads),
            "background_charged_s": background_during_plain,
            "recorder_s": recorded.spent["recorder_s"], "rewire_s": plain.spent["rewire_s"],
            "fixed_s": recorded.spent["fixed_s"],
            "recorder_share": recorded.spent["recorder_s"] / plain_s,
            "recorder_share_without_rewire_time":
                recorded.spent["recorder_s"] / max(1e-9, plain_s - plain.spent["rewire_s"])}


class _Layer:
    def __init__(self, name: str, shape: tuple[int, int], rng: np.random.Generator):
        self.name, self.shape = name, shape
        self.mask = random_mask(*shape, rng)


def record_seek_run(folder: str | Path, total_steps: int, interval_steps: int,
                    keyframe_every: int) -> tuple[str, int, float]:
    """Record a run of the MLP's layer shapes with SET-sized rewires (no training): the run
    seek and topology are measured on. Returns (run id, rewires, seconds to write)."""
    rng = np.random.default_rng(1)
    layers = [_Layer("1.weight", (1024, 784), rng), _Layer("3.weight", (1024, 1024), rng),
              _Layer("5.weight", (10, 1024), rng)]
    started = time.perf_counter()
    recorder = Recorder(folder, name="seek", flush_interval_s=1.0, heartbeat_s=0)
    meta = {"layers": [{"name": layer.name, "shape": list(layer.shape),
                        "matrix": list(layer.shape), "density": DENSITY} for layer in layers]}
    recorder.emit("meta", 0, meta)
    for index, layer in enumerate(layers):
        recorder.emit("topology", 0, keyframe_payload(layer.name, index, layer.shape,
                                                      torch.from_numpy(layer.mask)))
    rewires = 0
    for step in range(interval_steps, total_steps + 1, interval_steps):
        rewires += 1
        for index, layer in enumerate(layers):
            added, removed = rewire_indices(layer.mask, rng)
            layer.mask[removed] = False
            layer.mask[added] = True
            if rewires % keyframe_every == 0:
                payload = keyframe_payload(layer.name, index, layer.shape,
                                           torch.from_numpy(layer.mask))
            else:
                payload = delta_payload(layer.name, index, layer.shape, added, removed,
                                        int(layer.mask.sum()))
            recorder.emit("topology", step, payload)
        recorder.emit("metrics", step, {"loss": 1.0 / step})
    recorder.finish("completed")
    return recorder.run_id, rewires, time.perf_counter() - started


def seek(total_steps: int, interval_steps: int, keyframe_every: int, probes: int) -> dict:
    """Record a run of the MLP's layer shapes with SET-sized rewires, then seek at random."""
    rng = np.random.default_rng(2)
    with tempfile.TemporaryDirectory() as folder:
        run_id, rewires, record_s = record_seek_run(folder, total_steps, interval_steps,
                                                    keyframe_every)
        store = RunStore(folder)
        reader = RunReader(store)
        size = sum(path.stat().st_size for path in Path(folder).glob("runs.sqlite3*"))
        times = []
        for _ in range(probes):
            step = int(rng.integers(0, total_steps + 1))
            layer = int(rng.integers(0, 3))
            start = time.perf_counter()
            reader.mask_at(run_id, layer, step)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        reader.metrics(run_id, 500)
        metrics_s = time.perf_counter() - start
    return {"steps": total_steps, "rewires": rewires, "record_s": record_s, "file_mb": size / 1e6,
            "seek_median_ms": 1e3 * statistics.median(times), "seek_max_ms": 1e3 * max(times),
            "metrics_500_buckets_ms": 1e3 * metrics_s}


def overhead_line(result: dict) -> str:
    blocks = result["block_overheads"]
    spread = (f"{100 * min(blocks):+.1f}% … {100 * max(blocks):+.1f}%" if blocks else "none")
    model = (f"GPT-2 small (GPT2Config, vocabulary 256), {GPT2_BATCH} × {GPT2_CONTEXT} tokens, "
             f"AdamW, RigL ERK d={DENSITY}" if result["model"] == "gpt2" else
             f"784-1024-1024-10 MLP, batch 128, SET d={DENSITY}")
    return (f"recording overhead, {model} rewired every "
            f"{result['interval_steps']} steps, metrics every step, {result['steps']} steps each, "
            f"plain and recorded taking turns every {result['chunk_steps']} steps (ABBA): "
            f"plain {result['plain_s']:.2f} s (of which rewires {result['rewire_s']:.2f} s), "
            f"recorded {result['recorded_s']:.2f} s → end-to-end {100 * result['overhead']:.1f}% "
            f"(target ≤ 5%; per block median {100 * result['block_median']:+.1f}%, range "
            f"{spread}); charged to the recorded run: its heartbeat thread's CPU during the "
            f"plain turns {result['background_charged_s']:.3f} s, creating + attaching + "
            f"finishing the recorder {1e3 * result['fixed_s']:.0f} ms; time inside the "
            f"recorder's per-step calls {result['recorder_s']:.3f} s = "
            f"{100 * result['recorder_share']:.2f}% of training, "
            f"{100 * result['recorder_share_without_rewire_time']:.2f}% if rewires were free")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer steps")
    parser.add_argument("--steps", type=int, default=2000,
                        help="training steps of each of the plain and recorded runs (default "
                             "2000)")
    parser.add_argument("--overhead-only", action="store_true",
                        help="only the recording overhead (no frame sizes, no seek)")
    parser.add_argument("--model", choices=("mlp", "gpt2"), default="mlp",
                        help="the overhead's model: the 784-1024-1024-10 MLP (SET), or GPT-2 "
                             "small from its config (RigL, 48 sparsified layers; with "
                             "--overhead-only, e.g. --steps 60)")
    parser.add_argument("--interval-steps", type=int, default=10, help="steps between rewires")
    args = parser.parse_args()
    torch.set_num_threads(2)
    sizes = [256, 1024] if args.quick else [256, 1024, 4096]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    if args.overhead_only:
        result = overhead(60 if args.quick else args.steps, args.interval_steps,
                          chunk_steps=10 if args.model == "gpt2" else 50, model=args.model)
        print(overhead_line(result) + "\n" + json.dumps(result, default=float))
        return

    print("| layer | bool bytes | keyframe bytes | keyframe / bool (≤ 0.125) | changed edges | "
          "delta bytes | bytes / changed edge (≤ 4) |")
    print("|---|---|---|---|---|---|---|")
    rows = frame_sizes(sizes)
    for row in rows:
        print(f"| {row['layer']} | {row['bool_bytes']:,} | {row['keyframe_bytes']:,} | "
              f"{row['keyframe_vs_bool']:.4f} | {row['changed_edges']:,} | {row['delta_bytes']:,} | "
              f"{row['delta_bytes_per_edge']:.2f} |")

    print("\n| layer | frame | JSON bytes | binary bytes | JSON encode+decode ms | "
          "binary encode+decode ms |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        for kind in ("keyframe", "delta"):
            print(f"| {row['layer']} | {kind} | {row[f'json_{kind}_bytes']:,} | "
                  f"{row[f'binary_{kind}_bytes']:,} | {row[f'json_{kind}_ms']:.2f} | "
                  f"{row[f'binary_{kind}_ms']:.2f} |")

    result = overhead(60 if args.quick else args.steps, interval_steps=10)
    print("\n" + overhead_line(result))

    total = 2_000 if args.quick else 10_000
    seek_result = seek(total, interval_steps=10, keyframe_every=10, probes=50)
    print(f"seek: {seek_result['steps']:,}-step run of the MLP's layers, {seek_result['rewires']} "
          f"rewires (every 10 steps, keyframe every 10 rewires), file "
          f"{seek_result['file_mb']:.1f} MB, written in {seek_result['record_s']:.1f} s: "
          f"seek to a random step median {seek_result['seek_median_ms']:.1f} ms, "
          f"max {seek_result['seek_max_ms']:.1f} ms (target ≤ 200 ms); metrics in 500 buckets "
          f"{seek_result['metrics_500_buckets_ms']:.1f} ms")
    print("\n" + json.dumps({"frames": rows, "overhead": result, "seek": seek_result},
                            default=float))


if __name__ == "__main__":
    sys.exit(main())
