"""Sparsity into speed: a trained sparse model as a smaller, faster inference module.

`compact(model, driver)` copies the model and gives every sparsified layer the fastest of the
formats that can hold its mask on this device, chosen by timing each candidate on the layer's
own shape and mask at the batch it will serve (a masked dense matrix is most of the time the
fastest below ~30% sparsity, a sparse one above; where the crossover lies depends on the
shape, the batch, the threads and the machine, so it is measured, not assumed):

- `dense`: the masked weight and the usual dense kernel (always a candidate: the fallback).
- `csr`: `torch.sparse_csr` with 32-bit indices (MKL's sparse × dense product on the CPU).
- `condensed`: the constant fan-in form (SRigL, N:M, any mask with the same number of active
  inputs per output): per output unit `k` input indices and `k` values, applied as one
  `embedding_bag` over the transposed input (Lasby et al. 2023, "Dynamic Sparse Training
  with Structured Sparsity").
- `semi_structured`: PyTorch's 2:4 semi-structured kernels (CUDA, masks that are 2:4).

Every candidate's output is checked against the masked dense one on the timing input before
it may be chosen, and a sparse format is chosen only when it beats dense by `margin`: a
layer is never made slower. Timings are cached per kind, shape, density, batch, dtype,
device and thread count.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dst_core.prunable import plan_prunable

FORMATS = ("dense", "csr", "condensed", "semi_structured")
ROUNDS = 5  # timing rounds per candidate format, interleaved
MARGIN = 0.95  # a sparse format must take ≤ 95% of dense's time: timing noise never costs speed
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9}  # relative; 1e-2 for 16-bit types
INFERENCE_ONLY = ("compacted modules are inference-only: train the sparse model with its "
                  "driver, then compact it again")

_TIMINGS: dict[tuple, dict[str, float]] = {}  # cache key → {format: ms}


@dataclass
class LayerChoice:
    """What `compact` chose for one sparsified weight, and the timings it chose by."""

    layer: str  # the weight's parameter name
    kind: str  # linear, hf_conv1d, conv, attention_in_proj, custom
    shape: tuple[int, ...]  # the weight's shape as stored
    density: float
    format: str
    timings_ms: dict[str, float] = field(default_factory=dict)  # per candidate, at `rows`
    rows: int = 0  # input rows (batch × positions) the timings were taken at
    reason: str = ""  # why a format was left out or the layer kept as it was

    @property
    def speedup(self) -> float:
        dense = self.timings_ms.get("dense")
        chosen = self.timings_ms.get(self.format)
        return dense / chosen if dense and chosen else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape), "speedup": self.speedup}


# ---- the formats ------------------------------------------------------------------------------
def equal_fan_in(rows_mask: torch.Tensor) -> int | None:
    """The number of active inputs every output has, when it is the same for all (else None)."""
    counts = rows_mask.sum(1)
    first = int(counts[0]) if counts.numel() else 0
    return first if first > 0 and bool((counts == first).all()) else None


def is_two_four(rows_mask: torch.Tensor) -> bool:
    """At most 2 active in every group of 4 consecutive inputs (what 2:4 kernels take)."""
    out, fan_in = rows_mask.shape
    return fan_in % 4 == 0 and bool((rows_mask.reshape(out, -1, 4).sum(-1) <= 2).all())


class _SparseRows(nn.Module):
    """A masked (out, fan_in) matrix held in one format, applied to (fan_in, M) columns."""

    def __init__(self, rows: torch.Tensor, mask: torch.Tensor, fmt: str,
                 bias: torch.Tensor | None, weight_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if fmt not in FORMATS:
            raise ValueError(f"format: unknown {fmt!r}; known: {', '.join(FORMATS)}")
        self.format = fmt
        self.out_features, self.fan_in = rows.shape
        self.weight_shape = tuple(weight_shape or rows.shape)  # the dense weight's layout
        rows = rows.detach() * mask.to(rows.dtype)
        # Where the dense kernel is fastest the weight is still *saved* sparse when that is
        # smaller (CSR takes 8 bytes a weight + 4 a row: below density ~0.5), and rebuilt
        # when the file is loaded: the file shrinks whichever kernel runs.
        computes_dense = fmt in ("dense", "semi_structured")
        self.packed = fmt == "csr" or (computes_dense and 8 * int(mask.sum()) + 4 * (
            self.out_features + 1) < rows.element_size() * rows.numel())
        if self.packed:  # the CSR arrays, built from the mask (a kept exact 0 stays stored)
            active = mask.nonzero()  # (nnz, 2), row-major
            crow = torch.zeros(self.out_features + 1, dtype=torch.int32, device=rows.device)
            crow[1:] = torch.cumsum(mask.sum(1), 0)
            self.register_buffer("crow_indices", crow)
            self.register_buffer("col_indices", active[:, 1].to(torch.int32).contiguous())
            self.register_buffer("values", rows[mask].contiguous())
        if computes_dense:
            self.register_buffer("weight", rows.reshape(self.weight_shape).contiguous(),
                                 persistent=not self.packed)
        elif fmt == "condensed":
            fan_in_active = equal_fan_in(mask)
            if fan_in_active is None:
                raise ValueError("format: condensed needs the same fan-in for every output")
            # nonzero() is row-major: each row's active columns, ascending. (out, k)
            columns = mask.nonzero()[:, 1].reshape(self.out_features, fan_in_active)
            self.register_buffer("indices", columns.to(torch.int32).contiguous())
            self.register_buffer("values", rows.gather(1, columns).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._kernel: tuple[int, Any] | None = None  # built on first use, never saved

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_kernel"] = None  # a CSR / 2:4 tensor is rebuilt from the buffers
        buffers = dict(self._buffers)
        if self.packed and "weight" in buffers:  # saved as CSR, rebuilt when loaded
            buffers["weight"] = None
        if self.fan_in <= 2**15:  # input indices fit 16 bits in the file: 6 bytes a weight, not 8
            for name in ("col_indices", "indices"):
                if buffers.get(name) is not None:
                    buffers[name] = buffers[name].to(torch.int16)
        state["_buffers"] = buffers
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for name in ("col_indices", "indices"):  # the kernels take 32-bit indices
            if self._buffers.get(name) is not None:
                self._buffers[name] = self._buffers[name].to(torch.int32)
        if self.format in ("dense", "semi_structured") and self._buffers.get("weight") is None:
            self.weight = self._unpacked()  # code around a layer may read .weight: never None

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name != "weight" or "values" not in self.__dict__.get("_buffers", {}) or \
                    self.__dict__.get("format") not in ("csr", "condensed"):
                raise
        # csr / condensed hold no dense weight; code that reads `.weight` (a parent's checks,
        # nn.TransformerEncoderLayer's fast path) gets the masked weight, made for the call.
        return self._unpacked()

    def _unpacked(self) -> torch.Tensor:
        """The masked weight in its dense layout, from the stored sparse arrays."""
        if self.format == "condensed":
            dense = torch.zeros(self.out_features, self.fan_in, dtype=self.values.dtype,
                                device=self.values.device)
            dense.scatter_(1, self.indices.long(), self.values)
            return dense.reshape(self.weight_shape)
        counts = (self.crow_indices[1:] - self.crow_indices[:-1]).long()
        rows = torch.repeat_interleave(torch.arange(self.out_features, device=counts.device),
                                       counts)
        dense = torch.zeros(self.out_features, self.fan_in, dtype=self.values.dtype,
                            device=self.values.device)
        dense[rows, self.col_indices.long()] = self.values
        return dense.reshape(self.weight_shape)

    def dense_weight(self) -> torch.Tensor:
        """The masked weight in its dense layout, for the dense and 2:4 kernels."""
        return self.weight

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(INFERENCE_ONLY)
        return super().train(False)

    def _cached(self, source: torch.Tensor, build: Callable[[], Any]) -> Any:
        key = source.data_ptr()  # moved (.to(device)) or reloaded buffers: rebuild
        if self._kernel is None or self._kernel[0] != key:
            self._kernel = (key, build())
        return self._kernel[1]

    def csr(self) -> torch.Tensor:
        def build() -> torch.Tensor:
            with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
                warnings.simplefilter("ignore", UserWarning)
                return torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values,
                                               (self.out_features, self.fan_in),
                                               check_invariants=False)
        return self._cached(self.values, build)

    def semi_structured(self):
        def build():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return torch.sparse.to_sparse_semi_structured(self.dense_weight())
        return self._cached(self.dense_weight(), build)

    def times(self, columns: torch.Tensor) -> torch.Tensor:
        """(out, M) = rows @ columns (+ bias), columns (fan_in, M)."""
        bias = None if self.bias is None else self.bias.unsqueeze(1)
        if self.format == "csr":
            matrix = self.csr()
            return torch.mm(matrix, columns) if bias is None else torch.addmm(bias, matrix, columns)
        if self.format == "condensed":
            out = F.embedding_bag(self.indices, columns.contiguous(),
                                  per_sample_weights=self.values, mode="sum")  # (out, M)
            return out if bias is None else out + bias
        out = self.dense_weight() @ columns
        return out if bias is None else out + bias

    def _describe(self) -> str:
        return f"format={self.format}"


class CompactLinear(_SparseRows):
    """An `nn.Linear` (or HF `Conv1D`, whose weight is stored transposed) in a chosen format."""

    def __init__(self, rows: torch.Tensor, mask: torch.Tensor, fmt: str,
                 bias: torch.Tensor | None, choice: LayerChoice | None = None) -> None:
        super().__init__(rows, mask, fmt, bias)
        self.in_features = self.fan_in
        self.nf = self.out_features  # what HF code reads off a Conv1D
        self.choice = choice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.format == "dense":
            return F.linear(x, self.dense_weight(), self.bias)
        if self.format == "semi_structured":
            flat = x.reshape(-1, self.in_features)
            return F.linear(flat, self.semi_structured(), self.bias).reshape(
                *x.shape[:-1], self.out_features)
        flat = x.reshape(-1, self.in_features)  # (M, in)
        out = self.times(flat.t())  # (out, M)
        return out.t().reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {_choice_repr(self.format, self.choice)}")


class CompactConv(_SparseRows):
    """An `nn.Conv1d/2d/3d` in a chosen format: dense through `F.convNd`, 2-D sparse formats
    as the sparse weight times the unfolded input (im2col)."""

    def __init__(self, conv: nn.Module, mask: torch.Tensor, fmt: str,
                 choice: LayerChoice | None = None) -> None:
        weight = conv.weight.detach()
        rows_mask = mask.to(weight.device).reshape(weight.shape[0], -1)
        super().__init__(weight.reshape(weight.shape[0], -1), rows_mask, fmt, conv.bias,
                         tuple(weight.shape))
        self.dims = weight.dim() - 2
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = tuple(conv.kernel_size), tuple(conv.stride)
        self.padding, self.dilation = conv.padding, tuple(conv.dilation)
        self.groups = conv.groups
        self.choice = choice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.format == "dense":
            convolve = (F.conv1d, F.conv2d, F.conv3d)[self.dims - 1]
            return convolve(x, self.dense_weight(), self.bias, self.stride, self.padding,
                            self.dilation, self.groups)
        unbatched = x.dim() == 3
        batch = x.unsqueeze(0) if unbatched else x  # (N, C, H, W)
        count, _, height, width = batch.shape
        columns = F.unfold(batch, self.kernel_size, self.dilation, self.padding, self.stride)
        positions = columns.shape[-1]  # (N, C·kh·kw, L)
        columns = columns.transpose(0, 1).reshape(self.fan_in, count * positions)
        out = self.times(columns).reshape(self.out_channels, count, positions)
        out_height, out_width = (
            (size + 2 * pad - dil * (kernel - 1) - 1) // step + 1
            for size, pad, dil, kernel, step in zip(
                (height, width), self.padding, self.dilation, self.kernel_size, self.stride,
                strict=True))
        out = out.transpose(0, 1).reshape(count, self.out_channels, out_height, out_width)
        return out[0] if unbatched else out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, "
                f"{_choice_repr(self.format, self.choice)}")


def _choice_repr(fmt: str, choice: LayerChoice | None) -> str:
    if choice is None:
        return f"format={fmt}"
    timed = ", ".join(f"{name} {ms:.3f} ms" for name, ms in choice.timings_ms.items())
    return (f"format={fmt}, density={choice.density:.3f}, speedup={choice.speedup:.2f}x "
            f"({timed} at {choice.rows} rows)")


# ---- timing and choosing -----------------------------------------------------------------------
def measure_ms(run: Callable[[], Any], *, repeats: int = 5, min_time_s: float = 0.005) -> float:
    """Milliseconds per call: the best of `repeats` rounds of enough calls to last
    `min_time_s` (the minimum: on a shared machine, noise only ever adds time)."""
    synchronize = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    with torch.inference_mode():
        run()
        synchronize()
        started = time.perf_counter()
        run()
        synchronize()
        once = max(time.perf_counter() - started, 1e-7)
        calls = max(1, min(1000, int(min_time_s / once)))
        best = math.inf
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(calls):
                run()
            synchronize()
            best = min(best, (time.perf_counter() - started) / calls)
    return best * 1e3


def measure_format_ms(fmt: str, run: Callable[[], Any]) -> float:
    """One round of timing one candidate format (tests replace it to force timings)."""
    return measure_ms(run, repeats=1)


def choose_format(timings_ms: dict[str, float], margin: float = MARGIN) -> str:
    """The fastest format, but dense unless another takes at most `margin` of its time."""
    dense = timings_ms.get("dense", math.inf)
    sparse = {name: ms for name, ms in timings_ms.items() if name != "dense"}
    if not sparse:
        return "dense"
    best = min(sparse, key=sparse.__getitem__)
    return best if sparse[best] <= margin * dense else "dense"


def candidate_formats(rows_mask: torch.Tensor, device: torch.device, dtype: torch.dtype,
                      formats: Iterable[str] | None = None) -> tuple[list[str], list[str]]:
    """The formats that can hold this (out, fan_in) mask here, and why others cannot."""
    wanted = list(FORMATS if formats is None else formats)
    unknown = [name for name in wanted if name not in FORMATS]
    if unknown:
        raise ValueError(f"formats: unknown {', '.join(map(repr, unknown))}; known: "
                         f"{', '.join(FORMATS)}")
    usable, reasons = ["dense"], []
    for name in wanted:
        if name == "csr":
            usable.append(name)
        elif name == "condensed":
            if equal_fan_in(rows_mask) is not None:
                usable.append(name)
            elif formats is not None:
                reasons.append("condensed: fan-in differs between outputs")
        elif name == "semi_structured":
            if device.type != "cuda":
                if formats is not None:
                    reasons.append("semi_structured: CUDA only")
            elif dtype not in (torch.float16, torch.bfloat16):
                reasons.append("semi_structured: float16/bfloat16 only")
            elif not is_two_four(rows_mask):
                reasons.append("semi_structured: the mask is not 2:4")
            else:
                usable.append(name)
    return usable, reasons


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = float(want.abs().max()) or 1.0
    return float((got.float() - want.float()).abs().max()) / scale


def time_layer(build: Callable[[str], nn.Module], sample: torch.Tensor, candidates: list[str],
               key: tuple | None = None) -> tuple[dict[str, float], list[str]]:
    """{format: ms} for each candidate that gives the dense output on `sample`, and why the
    others were dropped. `build(format)` makes the layer; timings are cached under `key`."""
    if key is not None and key in _TIMINGS:
        cached = _TIMINGS[key]
        return {name: ms for name, ms in cached.items() if name in candidates}, []
    tolerance = TOLERANCE.get(sample.dtype, 1e-2)
    timings: dict[str, float] = {}
    reasons: list[str] = []
    with torch.inference_mode():
        reference = build("dense")(sample)
    runs: dict[str, Callable[[], Any]] = {}
    for name in candidates:
        try:
            layer = build(name)
            with torch.inference_mode():
                error = _relative_error(layer(sample), reference)
            if not error <= tolerance:
                reasons.append(f"{name}: output off by {error:.1e} (relative)")
                continue
            runs[name] = lambda layer=layer: layer(sample)
        except (RuntimeError, NotImplementedError, ValueError, TypeError) as failure:
            reasons.append(f"{name}: {str(failure).splitlines()[0][:120]}")
    # Rounds interleave the candidates and each keeps its best: a burst of load on a shared
    # machine then slows every candidate's round alike instead of one candidate's all.
    for _ in range(ROUNDS):
        for name, run in runs.items():
            timings[name] = min(timings.get(name, math.inf), measure_format_ms(name, run))
    if key is not None:
        _TIMINGS[key] = timings
    return timings, reasons


def clear_timing_cache() -> None:
    _TIMINGS.clear()


# ---- the model ----------------------------------------------------------------------------------
@dataclass
class _Target:
    name: str  # parameter name
    kind: str
    module_name: str
    mask: torch.Tensor  # bool, the weight's shape


def _targets(model: nn.Module, driver) -> list[_Target]:
    if driver is not None:
        found = []
        for layer in driver.layers:
            module_name = layer.name.rpartition(".")[0]
            found.append(_Target(layer.name, layer.kind, module_name,
                                 layer.mask.detach().bool().cpu()))
        return found
    parameters = dict(model.named_parameters())
    found = []
    for entry in plan_prunable(model).layers:
        mask = parameters[entry.name].detach() != 0
        if not bool(mask.all()):  # a layer with no zero is not sparse: leave it as it is
            found.append(_Target(entry.name, entry.kind, entry.module, mask.cpu()))
    return found


def _input_shapes(model: nn.Module, modules: dict[str, nn.Module],
                  example_input) -> tuple[dict[str, tuple[int, ...]], int]:
    """Each module's input shape on one forward pass of `example_input`, and its batch."""
    shapes: dict[str, tuple[int, ...]] = {}

    def recorder(name: str):
        def record(_module, args) -> None:  # returns None: the arguments pass unchanged
            if args and torch.is_tensor(args[0]):
                shapes.setdefault(name, tuple(args[0].shape))
        return record
    hooks = [module.register_forward_pre_hook(recorder(name)) for name, module in modules.items()]
    arguments = example_input if isinstance(example_input, tuple) else (example_input,)
    try:
        with torch.inference_mode():
            model(*arguments)
    finally:
        for hook in hooks:
            hook.remove()
    first = arguments[0]
    return shapes, int(first.shape[0]) if torch.is_tensor(first) and first.dim() else 1


def _convertible_conv(module: nn.Module) -> bool:
    padding = module.padding
    return (isinstance(module, nn.Conv2d) and module.groups == 1 and not isinstance(padding, str)
            and module.padding_mode == "zeros")


def compact(model: nn.Module, driver=None, *, batch_size: int = 1,
            formats: Sequence[str] | None = None, example_input=None,
            margin: float = MARGIN) -> nn.Module:
    """A new inference-only module in which every sparsified layer runs in the fastest format
    measured for it here (see the module docstring); `model` is left untouched.

    Masks come from `driver` (a `SparseDriver`) when given, else from the weights' zeros.
    `batch_size`: the batch the layers are timed at. `formats`: the candidates to time
    (default all; dense is always one). `example_input`: one input of the model (a tensor or
    a tuple of arguments); with it the layers are timed on their real input sizes (positions
    × batch for a transformer, the image size for a conv), without it a Linear sees
    `batch_size` rows and a conv stays dense (its cost depends on the image size).

    `nn.Linear`, HF `Conv1D` (GPT-2's attention and MLP projections) and `nn.Conv2d`
    (groups 1) get every format; other convs are dense `CompactConv`s; a weight of another
    kind (`nn.MultiheadAttention`'s packed projections, a custom parameter) keeps its module,
    with the masked weight. What was chosen per layer is in `compact_layers(module)` and
    `print(module)`. The module saves with `torch.save(module, path)` and loads with
    `torch.load(path, weights_only=False)`.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be an int >= 1, got {batch_size!r}")
    copied = copy.deepcopy(model)
    for parameter in copied.parameters():
        parameter.requires_grad_(False)
    copied.eval()
    targets = _targets(copied, driver)
    parameters = dict(copied.named_parameters(remove_duplicate=False))
    modules = dict(copied.named_modules(remove_duplicate=False))
    with torch.no_grad():
        for target in targets:
            if target.name not in parameters:
                raise ValueError(f"driver: layer {target.name!r} is not a parameter of "
                                 f"{type(model).__name__}")
            weight = parameters[target.name]
            if tuple(target.mask.shape) != tuple(weight.shape):
                raise ValueError(f"driver: mask of {target.name!r} has shape "
                                 f"{tuple(target.mask.shape)}, the weight {tuple(weight.shape)}")
            weight.mul_(target.mask.to(weight.device, weight.dtype))
    shapes, example_batch = ({}, 1) if example_input is None else _input_shapes(
        copied, {t.module_name: modules[t.module_name] for t in targets
                 if t.module_name in modules}, example_input)
    threads = torch.get_num_threads()
    replaced: dict[int, nn.Module] = {}
    choices: list[LayerChoice] = []
    for target in targets:
        module = modules.get(target.module_name)
        density = float(target.mask.float().mean())
        choice = LayerChoice(target.name, target.kind, tuple(target.mask.shape), density, "dense")
        choices.append(choice)
        if module is None or target.kind not in ("linear", "hf_conv1d", "conv") or \
                id(module) in replaced or getattr(module, "padding_mode", "zeros") != "zeros":
            choice.reason = "kept its module, with the masked weight"
            continue
        weight = module.weight.detach()
        device, dtype = weight.device, weight.dtype
        if target.kind == "conv":
            rows_mask = target.mask.reshape(weight.shape[0], -1)
            seen = shapes.get(target.module_name)
            sparse_ok = _convertible_conv(module) and seen is not None
            usable, reasons = candidate_formats(rows_mask, device, dtype,
                                                formats) if sparse_ok else (["dense"], [])
            usable = [name for name in usable if name != "semi_structured"]
            if not _convertible_conv(module):
                reasons.append("sparse formats: Conv2d with groups=1 and numeric padding only")
            elif seen is None:
                reasons.append("sparse formats: timed only with example_input (image size)")
            if seen is not None:
                sample_shape = (batch_size, *seen[1:]) if len(seen) == 4 else seen
                sample = torch.randn(sample_shape, device=device, dtype=dtype)
                key = ("conv", tuple(weight.shape), sample_shape, module.stride, module.padding,
                       module.dilation, round(density, 3), tuple(usable), str(dtype),
                       device.type, threads)
                timings, dropped = time_layer(
                    lambda fmt, module=module, mask=target.mask: CompactConv(module, mask, fmt),
                    sample, usable, key)
                choice.timings_ms, choice.rows = timings, batch_size
                reasons += dropped
                choice.format = choose_format(timings, margin)
            replacement = CompactConv(module, target.mask, choice.format, choice)
        else:
            mask_rows = (target.mask.t() if target.kind == "hf_conv1d" else target.mask).to(device)
            rows = weight.t() if target.kind == "hf_conv1d" else weight
            bias = module.bias
            usable, reasons = candidate_formats(mask_rows, device, dtype, formats)
            seen = shapes.get(target.module_name)
            rows_count = (max(1, math.prod(seen[:-1]) * batch_size // max(1, example_batch))
                          if seen else batch_size)
            sample = torch.randn(rows_count, rows.shape[1], device=device, dtype=dtype)
            key = ("linear", tuple(rows.shape), rows_count, round(density, 3), tuple(usable),
                   bool(bias is not None), str(dtype), device.type, threads)
            timings, dropped = time_layer(
                lambda fmt, rows=rows, mask=mask_rows, bias=bias: CompactLinear(
                    rows, mask, fmt, bias), sample, usable, key)
            reasons += dropped
            choice.timings_ms, choice.rows = timings, rows_count
            choice.format = choose_format(timings, margin)
            replacement = CompactLinear(rows, mask_rows, choice.format, bias, choice)
        choice.reason = "; ".join(reasons)
        replaced[id(module)] = replacement.eval()
    for parent in list(copied.modules()):
        for child_name, child in list(parent.named_children()):
            if id(child) in replaced:
                setattr(parent, child_name, replaced[id(child)])
    copied.compact_layers = [choice.as_dict() for choice in choices]
    return copied


def compact_layers(module: nn.Module) -> list[dict[str, Any]]:
    """Per sparsified weight of a `compact`ed module: layer, kind, shape, density, format,
    timings_ms, rows, speedup, reason."""
    layers = getattr(module, "compact_layers", None)
    if layers is None:
        raise ValueError("module: not made by dst_core.compact")
    return list(layers)
