"""Which of a model's weights a sparse run sparsifies, and why the others stay dense.

Users bring transformers as often as CNNs, and each hides its weights differently: Hugging
Face's GPT-2 uses its own `Conv1D` (weight stored `(in, out)`, the transpose of `nn.Linear`),
torch's `nn.MultiheadAttention` packs q, k and v into one `in_proj_weight` parameter, and a
language model's output layer is often the token embedding itself (tied). Searching for
`nn.Linear` alone sparsified GPT-2's *embedding* (through its tied `lm_head`) and left every
attention and MLP weight dense, silently. So the search knows these layouts, never touches an
embedding or a weight tied to one unless asked by name, and reports what it left dense and
why (`PrunablePlan.left_dense`), so a wrong choice is visible at construction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torch import nn

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# The packed and the separate projections of nn.MultiheadAttention, in q, k, v order.
MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")

Patterns = str | re.Pattern | Iterable[str | re.Pattern] | Mapping[str, int | None] | None


@dataclass(frozen=True)
class PrunableWeight:
    """One weight to sparsify and how its axes read."""

    name: str  # the parameter's name in the model
    weight: nn.Parameter
    kind: str  # "linear", "conv", "hf_conv1d", "attention_in_proj", "custom"
    output_axis: int = 0  # the axis indexing output units (1 for HF Conv1D: (in, out))
    module: str = ""  # the owning module's name

    @property
    def input_axis(self) -> int:
        """The axis of a 2-D weight's inputs (N:M groups run along it)."""
        return 1 - self.output_axis if self.weight.dim() == 2 else self.weight.dim() - 1


@dataclass(frozen=True)
class LeftDense:
    """A ≥ 2-D weight the driver does not sparsify, and why (said, never silent)."""

    name: str
    shape: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class PrunablePlan:
    layers: list[PrunableWeight]
    left_dense: list[LeftDense]
    one_dimensional: int = 0  # biases and norm scales: never sparsified, counted not listed


def is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face's `Conv1D` (GPT-2, GPT-J's ancestors), recognised without importing
    `transformers`: a 2-D weight of shape (in, out) with `nf` = out."""
    weight = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(weight, nn.Parameter)
            and weight.dim() == 2 and getattr(module, "nf", None) == weight.shape[1])


def _as_patterns(value: Patterns, argument: str) -> dict[str, int | None]:
    """Patterns (substring or regular expression) → the output axis each names (None:
    inferred). A Mapping gives axes; anything else names patterns only."""
    if value is None:
        return {}
    if isinstance(value, (str, re.Pattern)):
        value = [value]
    items = value.items() if isinstance(value, Mapping) else ((item, None) for item in value)
    patterns: dict[str, int | None] = {}
    for pattern, axis in items:
        text = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
        if not isinstance(text, str) or not text:
            raise ValueError(f"{argument}: patterns are non-empty strings or compiled regular "
                             f"expressions, got {pattern!r}")
        if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int)):
            raise ValueError(f"{argument}: the output axis of {text!r} must be an int, got {axis!r}")
        patterns[text] = axis
    return patterns


def matches(name: str, pattern: str) -> bool:
    """A pattern matches a name it is a substring of, or that it matches as a regular
    expression (`re.search`): "fc2.weight" and r"h\\.\\d+\\.attn" both work."""
    if pattern in name:
        return True
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return False


def _known_weights(model: nn.Module) -> tuple[list[PrunableWeight], dict[int, str]]:
    """Every weight of a known layer type, each parameter once, in module order; and the
    embeddings' weights (id → embedding name)."""
    found: list[PrunableWeight] = []
    embeddings: dict[int, str] = {}
    for module_name, module in model.named_modules():  # a shared weight: its first module
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            embeddings.setdefault(id(module.weight), f"{prefix}weight")
        elif isinstance(module, nn.MultiheadAttention):
            for attribute in MHA_WEIGHTS:
                weight = getattr(module, attribute, None)
                if isinstance(weight, nn.Parameter):
                    found.append(PrunableWeight(f"{prefix}{attribute}", weight,
                                                "attention_in_proj", 0, module_name))
        elif isinstance(module, nn.Linear):
            found.append(PrunableWeight(f"{prefix}weight", module.weight, "linear", 0, module_name))
        elif isinstance(module, CONV_TYPES):
            found.append(PrunableWeight(f"{prefix}weight", module.weight, "conv", 0, module_name))
        elif is_hf_conv1d(module):
            found.append(PrunableWeight(f"{prefix}weight", module.weight, "hf_conv1d", 1,
                                        module_name))
    unique: dict[int, PrunableWeight] = {}
    for entry in found:
        unique.setdefault(id(entry.weight), entry)
    return list(unique.values()), embeddings


def plan_prunable(model: nn.Module, include: Patterns = None, exclude: Patterns = None,
                  dense_first_last: bool = False) -> PrunablePlan:
    """What a driver of `model` sparsifies, in module order, and every ≥ 2-D weight it
    leaves dense with the reason.

    By default: every `nn.Linear`, `nn.Conv1d/2d/3d`, HF `Conv1D` and `nn.MultiheadAttention`
    projection weight, except a weight that is (or is tied to) an embedding. `include` keeps
    only weights matching one of its patterns (substring or regular expression) and may name
    any other ≥ 2-D parameter, an embedding or a tied weight included, to sparsify it; as a
    mapping `{pattern: output_axis}` it also says which axis of such a parameter indexes its
    outputs (default 0, as torch stores weights). `exclude` drops matching weights.
    `dense_first_last` leaves the first and the last weight of the default search dense.
    Raises ValueError naming `include` when one of its patterns matches no parameter.
    """
    includes = _as_patterns(include, "include")
    excludes = _as_patterns(exclude, "exclude")
    known, embeddings = _known_weights(model)
    by_id = {id(entry.weight): entry for entry in known}
    layers: list[PrunableWeight] = []
    left: list[LeftDense] = []
    vectors = 0
    seen: set[int] = set()
    named = list(model.named_parameters(remove_duplicate=False))
    names_of: dict[int, list[str]] = {}
    for name, parameter in named:
        names_of.setdefault(id(parameter), []).append(name)
    matched: set[str] = set()
    # The first and the last weight a default search finds (before include/exclude).
    candidates = [entry for entry in known if id(entry.weight) not in embeddings]
    edges = ({id(candidates[0].weight), id(candidates[-1].weight)}
             if dense_first_last and len(candidates) >= 2 else set())

    def included(names: list[str]) -> tuple[bool, int | None]:
        hits = [pattern for pattern in includes for name in names if matches(name, pattern)]
        matched.update(hits)
        axes = [includes[pattern] for pattern in hits if includes[pattern] is not None]
        return bool(hits), (axes[0] if axes else None)

    for name, parameter in named:
        if id(parameter) in seen:
            continue  # a shared (tied) weight is decided once, under its first name
        seen.add(id(parameter))
        names = names_of[id(parameter)]
        entry = by_id.get(id(parameter))
        if isinstance(parameter, nn.parameter.UninitializedParameter):
            if entry is not None:  # a lazy layer: the driver asks for a forward pass first
                layers.append(entry)
            continue
        shape = tuple(parameter.shape)
        named_by_include, axis = included(names) if includes else (False, None)
        if parameter.dim() < 2:
            vectors += 1  # biases, norms: never sparsified, not worth a line each
            continue
        if id(parameter) in edges:
            left.append(LeftDense(name, shape, "first or last layer (dense_first_last=True)"))
            continue
        if includes and not named_by_include:
            if entry is not None:
                left.append(LeftDense(name, shape, "not named by include="))
            continue
        if excludes and any(matches(n, pattern) for n in names for pattern in excludes):
            left.append(LeftDense(name, shape, "excluded by exclude="))
            continue
        tied_to = embeddings.get(id(parameter))
        if entry is None:
            if named_by_include:
                output_axis = axis if axis is not None else 0
                if not -parameter.dim() <= output_axis < parameter.dim():
                    raise ValueError(f"include: output axis {output_axis} of {name!r} is out of "
                                     f"range for its shape {list(shape)}")
                kind = "embedding" if tied_to else "custom"
                layers.append(PrunableWeight(name, parameter, kind, output_axis % parameter.dim()))
            elif tied_to:
                left.append(LeftDense(name, shape, "embedding, never sparsified by default"))
            else:
                left.append(LeftDense(name, shape, "not a known layer type (sparsify it with "
                                                   f"include=[{name!r}])"))
            continue
        if tied_to and not named_by_include:
            shown = ", ".join(n for n in names if n != tied_to) or name
            left.append(LeftDense(shown, shape, f"tied to the embedding {tied_to}, never "
                                                "sparsified by default"))
            continue
        if axis is not None:  # named under its layer's name (a tied head: lm_head.weight)
            entry = PrunableWeight(entry.name, entry.weight, entry.kind, axis, entry.module)
        layers.append(entry)
    missing = [pattern for pattern in includes if pattern not in matched]
    if missing:
        raise ValueError(f"include: {', '.join(repr(p) for p in missing)} matched no parameter "
                         f"of {type(model).__name__}")
    return PrunablePlan(layers, left, vectors)


def find_prunable(model: nn.Module, include: Patterns = None, exclude: Patterns = None,
                  dense_first_last: bool = False) -> list[tuple[str, nn.Parameter]]:
    """(name, weight) of every weight a driver would sparsify (`plan_prunable`)."""
    return [(entry.name, entry.weight)
            for entry in plan_prunable(model, include, exclude, dense_first_last).layers]
