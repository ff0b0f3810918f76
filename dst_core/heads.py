"""Attention heads of a sparsified projection: which rows (or columns) belong to which head.

A researcher asks of a sparse transformer whether whole heads die. The answer needs each
projection's head layout, which no weight shape tells: GPT-2's `c_attn` is q, k and v of
`n_head` heads fused along its outputs, LLaMA's `k_proj` has `num_key_value_heads` heads of
`head_dim`, an output projection (`o_proj`, `c_proj`, `out_proj`) splits its *inputs* by head.
The layout is read from the attention module that owns the weight (`num_heads` /
`num_attention_heads` / `n_head` and `head_dim` / `attention_head_size`, as torch's
`nn.MultiheadAttention` and Hugging Face's GPT-2, LLaMA/Mistral, ViT and BERT name them) and
can be declared for any other layer (`Recorder.attach(driver, heads=...)`).

A layout is plain data, stored with the run's layers:
`{"axis": "out" | "in", "parts": ["q", "k", "v"] | null, "count": heads per part, "size": head_dim}`
in the layer's matrix orientation ([outputs, inputs]); `parts` is null for a projection that is
not fused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import nn

from dst_core.prunable import PrunableWeight, matches

FUSED = re.compile(r"(^|\.)(c_attn|in_proj_weight|qkv|qkv_proj|Wqkv|query_key_value)(\.weight)?$")
SEPARATE = re.compile(r"(^|\.)(q_proj|k_proj|v_proj|query|key|value|q|k|v|q_proj_weight|"
                      r"k_proj_weight|v_proj_weight)(\.weight)?$")
OUTPUT = re.compile(r"(^|\.)(o_proj|out_proj|c_proj|dense|proj|wo)(\.weight)?$")
ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)
HEAD_COUNT = ("num_heads", "num_attention_heads", "n_head", "n_heads")
HEAD_SIZE = ("head_dim", "attention_head_size")


def _head_shape(module: nn.Module) -> tuple[int, int] | None:
    """(heads, head_dim) that an attention module declares, or None."""
    config = getattr(module, "config", None)
    count = next((getattr(module, name) for name in HEAD_COUNT
                  if isinstance(getattr(module, name, None), int)), None)
    if count is None and config is not None:
        count = next((getattr(config, name) for name in HEAD_COUNT
                      if isinstance(getattr(config, name, None), int)), None)
    size = next((getattr(module, name) for name in HEAD_SIZE
                 if isinstance(getattr(module, name, None), int)), None)
    if count and not size:
        embed = getattr(module, "embed_dim", None)
        size = embed // count if isinstance(embed, int) and embed % count == 0 else None
    return (count, size) if count and size else None


def _attention_owner(model: nn.Module, module_name: str) -> tuple[int, int] | None:
    """The head shape of the attention module a weight sits in: the weight's own module or an
    ancestor whose name says attention, or a sibling of such an ancestor (BERT keeps the heads
    in `attention.self` and the output projection in `attention.output`)."""
    modules = dict(model.named_modules())
    parts = module_name.split(".") if module_name else []
    for depth in range(len(parts), -1, -1):
        name = ".".join(parts[:depth])
        module = modules.get(name)
        if module is None:
            continue
        found = _head_shape(module)
        if found:
            return found
        if depth < len(parts) and ATTENTION.search(parts[depth - 1] if depth else ""):
            for child in module.children():
                found = _head_shape(child)
                if found:
                    return found
        if depth and not ATTENTION.search(parts[depth - 1]) and depth < len(parts) - 1:
            return None  # walked out of the attention block: an MLP weight has no heads
    return None


def _matrix(entry: PrunableWeight) -> tuple[int, int] | None:
    shape = tuple(entry.weight.shape)
    if len(shape) != 2:
        return None
    return (shape[entry.output_axis], shape[1 - entry.output_axis])


def detect_heads(model: nn.Module, entry: PrunableWeight) -> dict | None:
    """The head layout of one sparsified weight, or None (not an attention projection, or
    one whose shape does not split into the heads its module declares)."""
    matrix = _matrix(entry)
    if matrix is None or not (ATTENTION.search(entry.name) or entry.kind == "attention_in_proj"):
        return None
    outputs, inputs = matrix
    if entry.kind == "attention_in_proj":
        module_name = entry.module
    else:
        module_name = entry.module or entry.name.rpartition(".")[0]
    found = _attention_owner(model, module_name)
    if found is None:
        return None
    count, size = found
    leaf = entry.name
    if FUSED.search(leaf) and outputs == 3 * count * size:
        return {"axis": "out", "parts": ["q", "k", "v"], "count": count, "size": size}
    if SEPARATE.search(leaf) and outputs % size == 0:
        return {"axis": "out", "parts": None, "count": outputs // size, "size": size}
    if OUTPUT.search(leaf) and inputs == count * size and not FUSED.search(leaf):
        return {"axis": "in", "parts": None, "count": count, "size": size}
    return None


def check_layout(layout: Mapping, matrix: tuple[int, int], argument: str = "heads") -> dict:
    """A declared layout, validated against the layer's [outputs, inputs]: ValueError naming
    `argument` when it does not tile the axis it names."""
    if not isinstance(layout, Mapping):
        raise ValueError(f"{argument}: a layout is a dict with axis, count, size (and parts)")
    axis = layout.get("axis", "out")
    parts = layout.get("parts")
    count, size = layout.get("count"), layout.get("size")
    if axis not in ("out", "in"):
        raise ValueError(f"{argument}: axis must be 'out' or 'in', got {axis!r}")
    if parts is not None and (not isinstance(parts, (list, tuple)) or
                              not all(isinstance(part, str) and part for part in parts)):
        raise ValueError(f"{argument}: parts must be a list of names (e.g. ['q', 'k', 'v']) or None")
    for name, value in (("count", count), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{argument}: {name} must be a positive int, got {value!r}")
    length = matrix[0] if axis == "out" else matrix[1]
    tiles = len(parts or [None]) * count * size
    if tiles != length:
        raise ValueError(f"{argument}: {len(parts or [None])} part(s) × {count} heads × {size} = "
                         f"{tiles} does not match the layer's {length} {axis}puts")
    return {"axis": axis, "parts": list(parts) if parts else None, "count": count, "size": size}


def head_layouts(model: nn.Module, entries: list[PrunableWeight],
                 declared: Mapping[str, Mapping] | None = None) -> dict[str, dict]:
    """Layer name → head layout for every sparsified weight that has one: declared ones
    (`{name or pattern: layout}`) first, then those detected from the modules."""
    layouts: dict[str, dict] = {}
    used: set[str] = set()
    for entry in entries:
        matrix = _matrix(entry)
        for pattern, layout in (declared or {}).items():
            if matrix is not None and matches(entry.name, pattern):
                layouts[entry.name] = check_layout(layout, matrix, f"heads[{pattern!r}]")
                used.add(pattern)
                break
        else:
            detected = detect_heads(model, entry)
            if detected is not None:
                layouts[entry.name] = detected
    unused = [pattern for pattern in (declared or {}) if pattern not in used]
    if unused:
        raise ValueError(f"heads: {', '.join(map(repr, unused))} named no sparsified 2-D layer")
    return layouts


def head_counts(mask, layout: Mapping) -> list[dict]:
    """Per head of a layer's [outputs, inputs] mask (numpy or torch, bool): `{"part", "head",
    "active", "density"}`, the `active` summing to the layer's. `layout` must have passed
    `check_layout` for this matrix."""
    out_axis = layout["axis"] == "out"
    per_unit = mask.sum(1 if out_axis else 0)  # (outputs,) or (inputs,)
    parts = layout.get("parts") or [None]
    count, size = int(layout["count"]), int(layout["size"])
    per_head = per_unit.reshape(len(parts), count, size).sum(-1)  # (parts, heads)
    span = size * int(mask.shape[1 if out_axis else 0])  # connections one head can have
    return [{"part": part, "head": head, "active": int(per_head[p, head]),
             "density": float(per_head[p, head]) / span}
            for p, part in enumerate(parts) for head in range(count)]
