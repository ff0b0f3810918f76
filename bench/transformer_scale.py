"""Transformer-sized runs: what the store keeps and what the first requests cost (issue 26).

    .venv/bin/python bench/transformer_scale.py [--layers 12] [--hidden 768] [--rewires 7]

A LLaMA-style model at GPT-2-small size built from `transformers.LlamaConfig` (12 blocks of
q/k/v/o and gate/up/down projections, 84 `nn.Linear` layers with the untied head, ~162 M
parameters), sparsified at density 0.1 (ERK) and recorded by a script while SET rewires it
(`--rewires` rewires, one per step: SET needs no gradient, so no forward pass is paid and the
bench measures the recorder and the store, not the model). Then, through the HTTP app
(TestClient, every in-process cache emptied before each request: a server's first request):
`/rewires`, the first four panels' `/view`, `/topology` of a block's q projection (with
heads) and `/topology/model`. Last, one 7B-shaped layer (4096 × 11008, LLaMA-7B's MLP)
recorded the same way, and its `/view` and `/topology` cold. Prints one line per part and a
JSON summary; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi.testclient import TestClient  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from backend.app import create_app  # noqa: E402
from backend.settings import Settings  # noqa: E402
from dst_core import SparseDriver  # noqa: E402
from dst_core.recording import Recorder  # noqa: E402
from dst_core.store import RunStore  # noqa: E402


def record(model: torch.nn.Module, folder: Path, rewires: int, name: str) -> tuple[str, float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    driver = SparseDriver(model, optimizer, method="set", density=0.1, total_steps=rewires + 1,
                          interval_steps=1)
    started = time.perf_counter()
    with Recorder(folder, name=name) as recorder:
        recorder.attach(driver)
        for step in range(1, rewires + 1):
            driver.step()  # no gradient: SET rewires by magnitude and draws its growth
            recorder.log(step, loss=1.0)
    return recorder.run_id, time.perf_counter() - started


def sizes_mb(folder: Path, run_id: str) -> tuple[float, float]:
    db = RunStore(folder).db
    index = db.execute("SELECT COALESCE(SUM(LENGTH(blob) + LENGTH(header)), 0) FROM "
                       "topology_index WHERE run_id = ?", (run_id,)).fetchone()[0]
    frames = db.execute("SELECT COALESCE(SUM(LENGTH(blob) + LENGTH(payload)), 0) FROM events "
                        "WHERE run_id = ? AND type = 'topology'", (run_id,)).fetchone()[0]
    return index / 1e6, frames / 1e6


def cold(client: TestClient, url: str, params: dict | None = None) -> tuple[float, int]:
    client.app.state.topology.cache.clear()
    client.app.state.layer_views.chains.cache.clear()
    client.app.state.layer_views.answers.clear()
    started = time.perf_counter()
    response = client.get(url, params=params)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{url} {params}: {response.status_code} {response.text[:200]}")
    return elapsed, len(response.content)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--rewires", type=int, default=7)
    parser.add_argument("--keep", type=Path, default=None, help="record into this folder")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        model = LlamaForCausalLM(LlamaConfig(
            num_hidden_layers=args.layers, hidden_size=args.hidden,
            intermediate_size=args.hidden * 8 // 3 // 64 * 64, num_attention_heads=12,
            num_key_value_heads=12, vocab_size=32000, tie_word_embeddings=False))
        parameters = sum(p.numel() for p in model.parameters())
        run_id, record_s = record(model, folder, args.rewires, "llama-style")
        del model
        index_mb, frames_mb = sizes_mb(folder, run_id)
        print(f"LLaMA-style {parameters / 1e6:.0f} M parameters, {args.rewires} SET rewires: "
              f"recorded in {record_s:.1f} s; topology index {index_mb:.1f} MB beside "
              f"{frames_mb:.1f} MB of frames", flush=True)
        settings = Settings(data_dir=folder, warm_workers=0)
        with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
            rewires_s, rewires_bytes = cold(client, f"/api/runs/{run_id}/rewires")
            layers = client.get(f"/api/runs/{run_id}/rewires").json()["layers"]
            views = [cold(client, f"/api/runs/{run_id}/view",
                          {"layer": layer["index"], "rows": 160, "cols": 240})[0]
                     for layer in layers[:4]]
            q_proj = next(layer["name"] for layer in layers if "layers.3.self_attn.q_proj"
                          in layer["name"])
            topology_s, _ = cold(client, f"/api/runs/{run_id}/topology",
                                 {"layer": q_proj, "step": args.rewires})
            heads = client.get(f"/api/runs/{run_id}/topology",
                               params={"layer": q_proj, "step": args.rewires}).json()["heads"]
            model_s, model_bytes = cold(client, f"/api/runs/{run_id}/topology/model",
                                        {"step": args.rewires})
        print(f"cold: /rewires {1e3 * rewires_s:.0f} ms ({rewires_bytes / 1e3:.0f} kB, "
              f"{len(layers)} layers); first four /view {', '.join(f'{1e3 * s:.0f}' for s in views)} "
              f"ms; /topology of {q_proj} {1e3 * topology_s:.0f} ms ({len(heads)} heads); "
              f"/topology/model {1e3 * model_s:.0f} ms ({model_bytes / 1e3:.0f} kB)", flush=True)

        big = torch.nn.Sequential(torch.nn.Linear(11008, 4096, bias=False))
        big_id, big_record_s = record(big, folder, args.rewires, "7B-shaped layer")
        del big
        big_index_mb, big_frames_mb = sizes_mb(folder, big_id)
        with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
            big_view_s, _ = cold(client, f"/api/runs/{big_id}/view",
                                 {"layer": 0, "rows": 160, "cols": 240})
            big_topology_s, _ = cold(client, f"/api/runs/{big_id}/topology",
                                     {"layer": 0, "step": args.rewires})
        print(f"4096 × 11008 layer: recorded in {big_record_s:.1f} s; index {big_index_mb:.1f} MB "
              f"beside {big_frames_mb:.1f} MB of frames; cold /view {1e3 * big_view_s:.0f} ms, "
              f"/topology {1e3 * big_topology_s:.0f} ms", flush=True)
    print(json.dumps({
        "parameters_m": parameters / 1e6, "rewires": args.rewires, "record_s": record_s,
        "index_mb": index_mb, "frames_mb": frames_mb, "rewires_ms": 1e3 * rewires_s,
        "view_ms": [1e3 * s for s in views], "topology_ms": 1e3 * topology_s,
        "model_ms": 1e3 * model_s, "big_index_mb": big_index_mb, "big_frames_mb": big_frames_mb,
        "big_view_ms": 1e3 * big_view_s, "big_topology_ms": 1e3 * big_topology_s}))


if __name__ == "__main__":
    main()
