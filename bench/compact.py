"""What `dst_core.compact` buys: per-layer format timings and end-to-end models.

    .venv/bin/python bench/compact.py [--quick] [--threads 1 2] [--plot docs/img/speed-crossover.png]
        [--skip-layers] [--skip-models] [--resnet-size 224]

1. Layer table: square Linear layers 768²…4096² at densities 0.01–0.5 and batch 1/16/64, on
   1 and 2 threads: the time of one forward in each format (`dense` = the masked weight and
   `F.linear`, `csr`, `condensed`), the best sparse format and its speedup over dense. Masks
   have constant fan-in (as SRigL's; CSR times the same on an unstructured mask of the same
   density), so every format applies. The crossover (highest density at which a sparse format
   still beats dense) is printed per shape × batch and plotted with `--plot`.
2. End to end, one thread, batch 1 and 16: the built-in MNIST MLP (default width 64·64, and
   1024·1024 and 4096·4096), a ResNet-50-shaped CNN (bottleneck blocks 3·4·6·3, no torchvision needed)
   and GPT-2 small (`GPT2LMHeadModel(GPT2Config())`, 128 tokens), each masked by a
   `SparseDriver(method="rigl", density=0.05)` (ERK; GPT-2 uniform): the masked dense model
   against `compact(model, driver, batch_size=B, example_input=...)`, and the bytes of
   `torch.save(model.state_dict())` against `torch.save(compacted)`. A fresh RigL mask has
   the density and layout statistics of a trained one; the speed depends on those only.
3. GPU rows (CUDA, float16, with 2:4 semi-structured) when a GPU is present.

Timings are the best of 5 rounds (`dst_core.compact.measure_ms`; end to end, 7 rounds of the
two models interleaved); on a shared machine noise only adds time. Compare figures from one
run only.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dst_core import SparseDriver, compact, compact_layers  # noqa: E402
from dst_core.compact import CompactLinear, measure_ms  # noqa: E402
from dst_core.models import build_model  # noqa: E402
from dst_core.structure import constant_fan_in_mask  # noqa: E402

SHAPES = [768, 1024, 2048, 4096]
DENSITIES = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5]
BATCHES = [1, 16, 64]
SPARSE = ("csr", "condensed")
ROUNDS = 7  # end to end: the best of this many interleaved rounds of each model


def layer_row(size: int, density: float, batch: int, device: str = "cpu",
              dtype: torch.dtype = torch.float32, formats=("dense", *SPARSE)) -> dict:
    generator = torch.Generator(device=device).manual_seed(size)
    fan_in_active = max(1, round(density * size))
    mask = constant_fan_in_mask((size, size), fan_in_active, generator).to(device)
    weight = torch.randn(size, size, device=device, dtype=dtype, generator=None)
    bias = torch.zeros(size, device=device, dtype=dtype)
    x = torch.randn(batch, size, device=device, dtype=dtype)
    timings = {}
    for fmt in formats:
        try:
            layer = CompactLinear(weight, mask, fmt, bias)
            timings[fmt] = measure_ms(lambda layer=layer: layer(x))
        except (RuntimeError, ValueError) as error:
            print(f"  {fmt} {size}² d={density} b={batch}: {str(error).splitlines()[0][:80]}",
                  file=sys.stderr)
    sparse = {name: ms for name, ms in timings.items() if name != "dense"}
    best = min(sparse, key=sparse.__getitem__) if sparse else "dense"
    return {"size": size, "density": density, "batch": batch, "threads": torch.get_num_threads(),
            "device": device, **{f"{name}_ms": ms for name, ms in timings.items()},
            "best": best, "speedup": timings["dense"] / sparse[best] if sparse else 1.0}


def layer_table(sizes, densities, batches, threads_list) -> list[dict]:
    rows = []
    print("\n## Layer table (float32, CPU; ms per forward; speedup = dense / best sparse)\n")
    print("| threads | shape | batch | density | dense ms | csr ms | condensed ms | best | speedup |")
    print("|---:|---|---:|---:|---:|---:|---:|---|---:|")
    for threads in threads_list:
        torch.set_num_threads(threads)
        for size in sizes:
            for batch in batches:
                for density in densities:
                    row = layer_row(size, density, batch)
                    rows.append(row)
                    print(f"| {threads} | {size}² | {batch} | {density:g} | {row['dense_ms']:.3f} | "
                          f"{row.get('csr_ms', math.nan):.3f} | {row.get('condensed_ms', math.nan):.3f} "
                          f"| {row['best']} | {row['speedup']:.2f}× |", flush=True)
    print("\n## Crossover: highest density at which a sparse format still beats dense\n")
    print("| threads | shape | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("|---:|---|" + "---:|" * len(batches))
    for threads in threads_list:
        for size in sizes:
            cells = []
            for batch in batches:
                wins = [row["density"] for row in rows if row["threads"] == threads and
                        row["size"] == size and row["batch"] == batch and row["speedup"] > 1]
                cells.append(f"{max(wins):g}" if wins else "never")
            print(f"| {threads} | {size}² | " + " | ".join(cells) + " |")
    return rows


def plot(rows: list[dict], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"(matplotlib not installed: no plot at {path})")
        return
    batches = sorted({row["batch"] for row in rows})
    threads = min(row["threads"] for row in rows)
    figure, axes = plt.subplots(1, len(batches), figsize=(4.2 * len(batches), 3.6), sharey=True)
    axes = [axes] if len(batches) == 1 else axes
    for axis, batch in zip(axes, batches, strict=True):
        for size in sorted({row["size"] for row in rows}):
            line = sorted((row["density"], row["speedup"]) for row in rows if row["batch"] == batch
                          and row["size"] == size and row["threads"] == threads)
            axis.plot([d for d, _ in line], [s for _, s in line], marker="o", label=f"{size}²")
        axis.axhline(1.0, color="grey", linewidth=1, linestyle="--")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_title(f"batch {batch}, {threads} thread{'s' if threads > 1 else ''}")
        axis.set_xlabel("density")
    axes[0].set_ylabel("best sparse format vs dense (×)")
    axes[-1].legend(title="Linear")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    print(f"\n(plot: {path})")


# ---- end-to-end models ----------------------------------------------------------------------------
class Bottleneck(nn.Module):
    """ResNet-50's bottleneck block (He et al. 2016): 1×1, 3×3 (stride), 1×1 ×4."""

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = None if stride == 1 and inplanes == planes * 4 else nn.Sequential(
            nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def resnet50_shaped(num_classes: int = 1000) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                               nn.MaxPool2d(3, 2, 1)]
    inplanes = 64
    for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for index in range(blocks):
            layers.append(Bottleneck(inplanes, planes, stride if index == 0 else 1))
            inplanes = planes * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, num_classes)]
    return nn.Sequential(*layers).eval()


def saved_bytes(obj) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.tell()


def end_to_end(name: str, model: nn.Module, make_input, batches, driver_options: dict) -> list[dict]:
    torch.manual_seed(0)
    driver = SparseDriver(model, torch.optim.SGD(model.parameters(), lr=0.1), method="rigl",
                          density=0.05, total_steps=100, **driver_options)
    driver.remove_hooks()
    model.eval()
    rows = []
    for batch in batches:
        x = make_input(batch)
        started = time.perf_counter()
        compacted = compact(model, driver, batch_size=batch, example_input=make_input(1))
        compact_s = time.perf_counter() - started
        with torch.inference_mode():
            want = model(x)
            got = compacted(x)
        want = getattr(want, "logits", want)
        got = getattr(got, "logits", got)
        error = float((got - want).abs().max() / want.abs().max())
        dense_ms = compact_ms = math.inf
        for _ in range(ROUNDS):  # interleaved: both see the same share of the machine's noise
            dense_ms = min(dense_ms, measure_ms(lambda x=x: model(x), repeats=1))
            compact_ms = min(compact_ms, measure_ms(lambda x=x, compacted=compacted: compacted(x),
                                                    repeats=1))
        layers = compact_layers(compacted)
        chosen = {}
        for layer in layers:
            chosen[layer["format"]] = chosen.get(layer["format"], 0) + 1
        dense_bytes, compact_bytes = saved_bytes(model.state_dict()), saved_bytes(compacted)
        row = {"model": name, "batch": batch, "dense_ms": dense_ms, "compact_ms": compact_ms,
               "speedup": dense_ms / compact_ms, "dense_bytes": dense_bytes,
               "compact_bytes": compact_bytes, "bytes_ratio": compact_bytes / dense_bytes,
               "max_relative_error": error, "formats": chosen, "compact_s": compact_s,
               "density": driver.global_density()}
        rows.append(row)
        print(f"| {name} | {batch} | {dense_ms:.3f} | {compact_ms:.3f} | {row['speedup']:.2f}× | "
              f"{dense_bytes / 1e6:.2f} | {compact_bytes / 1e6:.2f} ({row['bytes_ratio']:.3f}) | "
              f"{error:.1e} | {', '.join(f'{k} {v}' for k, v in sorted(chosen.items()))} | "
              f"{compact_s:.1f} |", flush=True)
    return rows


def models_table(batches, quick: bool, resnet_size: int) -> list[dict]:
    torch.set_num_threads(1)
    print("\n## End to end (1 thread, float32, RigL masks at global density 0.05)\n")
    print("| model | batch | masked dense ms | compact ms | speedup | dense state MB | compact file MB "
          "(ratio) | max rel. error | formats chosen | compact() s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    rows = []
    mnist_shape = (1, 28, 28)
    for hidden in ([64, 64], [1024, 1024], [4096, 4096]):
        model = build_model("mlp", mnist_shape, hidden, 10)
        rows += end_to_end(f"MNIST MLP {'·'.join(map(str, hidden))}", model,
                           lambda b: torch.rand(b, *mnist_shape), batches, {})
    if not quick:
        size = resnet_size
        rows += end_to_end(f"ResNet-50-shaped {size}²", resnet50_shaped(),
                           lambda b: torch.randn(b, 3, size, size), batches[:1], {})
        from transformers import GPT2Config, GPT2LMHeadModel

        gpt2 = GPT2LMHeadModel(GPT2Config()).eval()
        rows += end_to_end("GPT-2 small, 128 tokens", gpt2,
                           lambda b: torch.randint(0, 50257, (b, 128)), batches[:1],
                           {"distribution": "uniform"})
    return rows


def gpu_rows() -> list[dict]:
    if not torch.cuda.is_available():
        print("\n## GPU\n\nNo CUDA device on this machine: no GPU rows.")
        return []
    print(f"\n## GPU ({torch.cuda.get_device_name()}, float16)\n")
    print("| shape | batch | density | dense ms | csr ms | condensed ms | semi_structured ms | best |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    rows = []
    for size in (4096,):
        for batch in (1, 16, 64):
            for density in (0.05, 0.5):
                row = layer_row(size, density, batch, "cuda", torch.float16,
                                ("dense", "csr", "condensed") + (("semi_structured",)
                                                                 if density == 0.5 else ()))
                rows.append(row)
                print(f"| {size}² | {batch} | {density:g} | " + " | ".join(
                    f"{row.get(f'{name}_ms', math.nan):.3f}"
                    for name in ("dense", "csr", "condensed", "semi_structured"))
                    + f" | {row['best']} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few cells, MLPs only")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--plot", help="write the crossover plot (PNG) here")
    parser.add_argument("--json", help="write every row as JSON here")
    parser.add_argument("--skip-layers", action="store_true")
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--resnet-size", type=int, default=224, help="ResNet input side (pixels)")
    args = parser.parse_args()
    sizes, densities, batches = ((SHAPES[::3], [0.01, 0.05, 0.2, 0.5], [1, 16]) if args.quick
                                 else (SHAPES, DENSITIES, BATCHES))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads available by default")
    result: dict = {}
    if not args.skip_layers:
        result["layers"] = layer_table(sizes, densities, batches, args.threads)
        if args.plot:
            plot(result["layers"], args.plot)
    if not args.skip_models:
        result["models"] = models_table([1, 16], args.quick, args.resnet_size)
    result["gpu"] = gpu_rows()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
