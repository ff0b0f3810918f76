"""Built-in tasks: shipped data, fixed split, labels not leaking into the inputs."""

import numpy as np
import pytest
import torch

from dst_core.models import build_model
from dst_core.tasks import load_task


def test_mnist_is_the_5k_subset_scaled_with_label_from_the_last_column():
    task = load_task("mnist")
    assert len(task.x_train) + len(task.x_test) == 5000
    assert task.input_shape == (1, 28, 28) and task.num_classes == 10
    assert task.x_train.min() >= 0 and task.x_train.max() <= 1.0
    labels = torch.cat([task.y_train, task.y_test])
    assert torch.equal(torch.bincount(labels), torch.full((10,), 500))
    # No pixel carries the label: a model that scores ~100% would be reading it.
    pixels = task.x_train.reshape(len(task.x_train), -1).numpy()
    target = task.y_train.numpy().astype(np.float64)
    varying = pixels.std(0) > 0
    corr = np.corrcoef(np.c_[pixels[:, varying], target].T)[-1, :-1]
    assert np.nanmax(np.abs(corr)) < 0.7


def test_digits_scaled_and_split_fixed():
    first, second = load_task("digits"), load_task("digits")
    assert torch.equal(first.x_test, second.x_test) and torch.equal(first.y_test, second.y_test)
    assert len(first.x_train) + len(first.x_test) == 1797
    assert first.x_train.max() <= 1.0 and first.image_shape == (8, 8)
    # train and test are disjoint images
    train_rows = {tuple(row) for row in first.x_train.reshape(len(first.x_train), -1).tolist()}
    overlap = sum(tuple(row) in train_rows for row in first.x_test.reshape(len(first.x_test), -1).tolist())
    assert overlap < 0.05 * len(first.x_test)  # a few digits are exact duplicates in the data set


def test_synthetic_label_rule():
    task = load_task("synthetic")
    assert torch.equal(task.y_train, (task.x_train[:, 0] + task.x_train[:, 1] > 0).long())


@pytest.mark.parametrize("name, task_name", [("mlp", "digits"), ("cnn", "mnist"), ("cnn", "digits")])
def test_models_build_and_run(name, task_name):
    task = load_task(task_name)
    model = build_model(name, task.input_shape, [32], task.num_classes)
    assert model(task.x_test[:4]).shape == (4, task.num_classes)


def test_bad_names():
    with pytest.raises(ValueError, match="task"):
        load_task("imagenet")
    with pytest.raises(ValueError, match="model"):
        build_model("cnn", (20,), [8], 2)
