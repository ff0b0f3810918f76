"""RigL on a Hugging Face GPT-2 built from its config, recorded for the dashboard.

    pip install transformers          # not a sparsescope requirement; this example's only
    python examples/gpt2_rigl.py --data-dir ./sparsescope-data
    python examples/gpt2_rigl.py --url http://127.0.0.1:8000      # live in a running dashboard

GPT-2 small (124 M parameters, 12 blocks) from `GPT2Config()`, random init, nothing
downloaded: it learns a byte-level language model of the Python standard library's own source
files (text every Python install carries). The driver sparsifies the 48 block weights (HF
`Conv1D`: attention `c_attn`/`c_proj`, MLP `c_fc`/`c_proj`) and leaves the token embedding,
which `lm_head` is tied to, dense; `driver.summary()` prints what it chose and why. The
recorder stores the head layout of every attention projection, so the dashboard shows the
block grid (blocks × roles), per-head density and the loss around each rewire. On a 2-core
CPU a step of GPT-2 small takes seconds: `--layers 2 --embd 128` trains a small one in a
minute. See docs/transformers.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from dst_core import SparseDriver  # noqa: E402
from dst_core.recording import Recorder  # noqa: E402

try:
    from transformers import GPT2Config, GPT2LMHeadModel
except ImportError:  # pragma: no cover - said once, plainly
    sys.exit("this example needs Hugging Face transformers: pip install transformers")

SOURCES = ("argparse", "textwrap", "inspect", "dataclasses", "typing", "pathlib", "json.decoder")


def byte_stream() -> torch.Tensor:
    """(N,) int64 bytes of some standard-library sources: real text, shipped with Python."""
    import importlib

    text = b"\n".join(Path(importlib.import_module(name).__file__).read_bytes()
                      for name in SOURCES)
    return torch.tensor(list(text), dtype=torch.long)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="record into this folder")
    parser.add_argument("--url", default=None, help="record to a running dashboard instead")
    parser.add_argument("--layers", type=int, default=12, help="blocks (GPT-2 small: 12)")
    parser.add_argument("--embd", type=int, default=768, help="width (GPT-2 small: 768)")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--context", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--interval-steps", type=int, default=25, help="steps between rewires")
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="gpt2 · rigl")
    args = parser.parse_args(argv)
    if args.data_dir and args.url:
        parser.error("--data-dir and --url: give one (a folder, or a running server)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    config = GPT2Config(n_layer=args.layers, n_embd=args.embd, n_head=args.heads,
                        vocab_size=256, n_positions=args.context, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)  # bytes as tokens: a 256-entry vocabulary
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    driver = SparseDriver(model, optimizer, method="rigl", density=args.density,
                          total_steps=args.steps, interval_steps=args.interval_steps,
                          seed=args.seed)
    print(driver.summary(), flush=True)
    stream = byte_stream()
    sampler = torch.Generator().manual_seed(args.seed)
    recorder_args = {"url": args.url} if args.url else {"data_dir": args.data_dir or
                                                        "./sparsescope-data"}
    with Recorder(**recorder_args, name=args.name, config=vars(args)) as recorder:
        recorder.attach(driver, task="stdlib source bytes")
        print(f"recording run {recorder.run_id}", flush=True)
        started = time.perf_counter()
        for step in range(1, args.steps + 1):
            starts = torch.randint(0, len(stream) - args.context - 1, (args.batch_size,),
                                   generator=sampler)
            tokens = torch.stack([stream[s:s + args.context] for s in starts.tolist()])
            loss = model(tokens, labels=tokens).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            driver.step()
            recorder.log(step, loss=loss.item())
            if step % 10 == 0 or step == args.steps:
                print(f"step {step}/{args.steps} loss {loss.item():.3f} "
                      f"({(time.perf_counter() - started) / step:.2f} s/step)", flush=True)


if __name__ == "__main__":
    main()
