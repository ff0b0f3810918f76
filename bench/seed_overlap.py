"""How much do the masks of different seeds share? RigL and SET on MNIST-5k at 90% sparsity.

    .venv/bin/python bench/seed_overlap.py [--epochs N] [--hidden 300 100] [--keep DIR]

Trains seeds 0, 1 and 2 of RigL and of SET on the built-in MNIST-5k task at density 0.1, each
as the dashboard would start it (RunConfig's defaults: an MLP of two hidden layers of 64,
30 epochs of batch 64, each method's own defaults for layer densities, drop fraction and
schedule), recorded into a data folder like `sparsescope train`. Then, through the HTTP app:
`GET /api/compare/overlap` of the first layer at the end (and at the start) for the three
seeds of each method and for all six runs, with the Jaccard two independent random masks of
those densities would have; `/overlap/series` for the seeds' Jaccard over training; and
`/churn` for how many of the first layer's connections ever changed. Prints tables; nothing
is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi.testclient import TestClient  # noqa: E402

from backend.app import create_app  # noqa: E402
from backend.settings import Settings  # noqa: E402
from dst_core.recording import Recorder  # noqa: E402
from dst_core.recording.training import train  # noqa: E402
from dst_core.store.config import RunConfig  # noqa: E402

METHODS = ("rigl", "set")
SEEDS = (0, 1, 2)


def record(folder: Path, config: RunConfig) -> str:
    """One run trained and recorded as `sparsescope train` records it."""
    recorder = Recorder(folder, name=config.display_name(), config=config.model_dump(),
                        writer="cli", keyframe_every=config.keyframe_every, heartbeat_s=0)
    recorder.start()
    outcome = train(config, recorder)
    recorder.finish(outcome)
    return recorder.run_id


def get(client: TestClient, url: str, **params) -> dict:
    response = client.get(url, params=params)
    if response.status_code != 200:
        raise RuntimeError(f"{url} {params}: {response.status_code} {response.text[:300]}")
    return response.json()


def matrix(title: str, labels: list[str], values: list[list[float]], digits: int = 3) -> str:
    lines = [f"{title}", "| | " + " | ".join(labels) + " |",
             "|---|" + "---|" * len(labels)]
    for label, row in zip(labels, values, strict=True):
        lines.append(f"| {label} | " + " | ".join(f"{value:.{digits}f}" for value in row) + " |")
    return "\n".join(lines)


def off_diagonal(values: list[list[float]], rows, cols) -> list[float]:
    return [values[i][j] for i in rows for j in cols if i != j]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of each run (default: the task's, 30)")
    parser.add_argument("--hidden", type=int, nargs="+", default=None,
                        help="hidden layer widths (default: the dashboard's, 64 64)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="record the runs into DIR once and reuse them on later calls")
    args = parser.parse_args()
    torch.set_num_threads(2)
    fields = {"task": "mnist", "density": 0.1}
    if args.epochs is not None:
        fields["epochs"] = args.epochs
    if args.hidden is not None:
        fields["hidden"] = args.hidden
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        marker = folder / f"seed-overlap-{json.dumps(fields, sort_keys=True)}.json"
        started = time.perf_counter()
        if marker.exists():
            runs = json.loads(marker.read_text())
        else:
            runs = {method: [record(folder, RunConfig(**fields, method=method, seed=seed))
                             for seed in SEEDS] for method in METHODS}
            marker.write_text(json.dumps(runs))
        train_s = time.perf_counter() - started
        app = create_app(Settings(data_dir=folder, warm_workers=0))
        with TestClient(app, base_url="http://127.0.0.1:8000") as client:
            report(client, runs, fields, train_s)


def report(client: TestClient, runs: dict, fields: dict, train_s: float) -> None:
    every = [run_id for method in METHODS for run_id in runs[method]]
    first = get(client, f"/api/runs/{every[0]}")
    settings = first["settings"] or {}
    layer = get(client, f"/api/runs/{every[0]}/rewires")["layers"][0]["name"]
    print(f"MNIST-5k, density {fields['density']}, RunConfig {json.dumps(fields)} "
          f"({settings.get('model')}, {settings.get('total_steps')} steps); "
          f"trained and recorded in {train_s:.0f} s (0 when reused)\n")
    labels = [f"{method} {seed}" for method in METHODS for seed in SEEDS]
    for run_id, label in zip(every, labels, strict=True):
        run = get(client, f"/api/runs/{run_id}")
        summary, used = run["summary"], run["settings"] or {}
        rewires = get(client, f"/api/runs/{run_id}/rewires")
        layer_info = rewires["layers"][0]
        churn = get(client, f"/api/runs/{run_id}/churn", layer=layer)
        never = dict(churn["toggles"]).get(0, 0)
        print(f"{label}: test accuracy {summary.get('final_test_accuracy'):.4f}, "
              f"{len(rewires['steps']) - 1} rewires (every {used.get('interval_steps')} steps, "
              f"{used.get('distribution')}), first layer {layer} {layer_info['shape']} density "
              f"{layer_info['density']:.4f}; share of its positions that changed at least "
              f"once: {1 - never / churn['numel']:.3f}")
    print()
    for method in METHODS:
        ids = runs[method]
        for when, step in (("start", 0), ("end", None)):
            params = {"runs": ",".join(ids), "layer": layer}
            if step is not None:
                params["step"] = step
            answer = get(client, "/api/compare/overlap", **params)
            print(matrix(f"{method}, first layer, {when} (steps {answer['steps']}): Jaccard",
                         [f"seed {seed}" for seed in SEEDS], answer["jaccard"]))
            print(f"random masks of these densities: "
                  f"{np.mean(off_diagonal(answer['random_jaccard'], range(3), range(3))):.4f}; "
                  f"active {answer['active']}, shared {answer['shared'][0][1]}, "
                  f"{answer['shared'][0][2]}, {answer['shared'][1][2]}\n")
        series = get(client, "/api/compare/overlap/series", runs=",".join(ids), layer=layer,
                     points=9)
        print(f"{method}: mean Jaccard of the 3 seed pairs over training: " + ", ".join(
            f"step {step} {np.mean([pair[k] for pair in series['jaccard']]):.3f}"
            for k, step in enumerate(series["steps"])) + "\n")
    answer = get(client, "/api/compare/overlap", runs=",".join(every), layer=layer)
    print(matrix("all six runs, first layer, end: Jaccard", labels, answer["jaccard"]))
    print(matrix("random masks of those densities", labels, answer["random_jaccard"], 4))
    rigl, sets = range(0, 3), range(3, 6)
    print(f"\nmeans of the off-diagonal Jaccard: RigL seeds "
          f"{np.mean(off_diagonal(answer['jaccard'], rigl, rigl)):.4f}, SET seeds "
          f"{np.mean(off_diagonal(answer['jaccard'], sets, sets)):.4f}, RigL vs SET "
          f"{np.mean(off_diagonal(answer['jaccard'], rigl, sets)):.4f}, RigL vs SET same "
          f"seed {np.mean([answer['jaccard'][i][i + 3] for i in range(3)]):.4f}; random: RigL "
          f"{np.mean(off_diagonal(answer['random_jaccard'], rigl, rigl)):.4f}, SET "
          f"{np.mean(off_diagonal(answer['random_jaccard'], sets, sets)):.4f}, across "
          f"{np.mean(off_diagonal(answer['random_jaccard'], rigl, sets)):.4f}")
    print("\n" + json.dumps({"runs": runs, "layer": layer, "overlap_end": answer}))


if __name__ == "__main__":
    main()
