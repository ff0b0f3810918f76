"""The built-in models; the driver sparsifies any nn.Module, these are just ready to use."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

MODELS = ("mlp", "cnn")


def mlp(input_shape: Sequence[int], hidden: Sequence[int], num_classes: int) -> nn.Module:
    """Fully connected ReLU network; image inputs are flattened."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for out in hidden:
        layers += [nn.Linear(width, out), nn.ReLU()]
        width = out
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class LeNet(nn.Module):
    """Small LeNet-style CNN: two 3×3 conv blocks with pooling, then an MLP head."""

    def __init__(self, input_shape: Sequence[int], hidden: Sequence[int], num_classes: int):
        super().__init__()
        channels, height, width = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = mlp((32, height // 4, width // 4), hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def he_init(model: nn.Module) -> nn.Module:
    """Kaiming-normal weights for ReLU (He et al. 2015), zero biases, in place.

    PyTorch's default Linear/Conv init (kaiming_uniform, a=√5) has variance 1/(3·fan_in), a
    sixth of what keeps a ReLU signal's scale: through LeNet's five layers the logits start
    ~100× too small and the dense CNN sat near chance for 3 epochs on digits (measured:
    bench/defaults_sweep.py). Sparse layers shrink the signal further; the driver's sparse
    init (`SparseDriver(sparse_init=True)`) compensates for that part.
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def build_model(
    name: str, input_shape: Sequence[int], hidden: Sequence[int], num_classes: int,
    he: bool = True,
) -> nn.Module:
    """A built-in model, He-initialised (see `he_init`) unless `he=False` (PyTorch's init)."""
    initialise = he_init if he else (lambda model: model)
    if name == "mlp":
        return initialise(mlp(input_shape, hidden, num_classes))
    if name == "cnn":
        if len(input_shape) != 3 or min(input_shape[-2:]) < 4:
            raise ValueError("model: 'cnn' needs an image task (digits or mnist)")
        return initialise(LeNet(input_shape, hidden, num_classes))
    raise ValueError(f"model: unknown {name!r}; known: {', '.join(MODELS)}")
