"""Layer-wise densities (uniform / ER / ERK) and drop-fraction schedules."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dst_core import layer_densities
from dst_core.schedules import RewireSchedule

SHAPES = [(300, 784), (100, 300), (10, 100)]
CONV = [(16, 1, 3, 3), (32, 16, 3, 3), (128, 512), (10, 128)]


@settings(max_examples=80, deadline=None)
@given(shapes=st.sampled_from([SHAPES, CONV, [(5, 3)], [(1000, 1000), (10, 1000), (3, 10)]]),
       density=st.floats(0.01, 1.0), distribution=st.sampled_from(["uniform", "er", "erk"]))
def test_total_matches_within_one_connection_per_layer(shapes, density, distribution):
    densities = layer_densities(shapes, density, distribution)
    sizes = [math.prod(shape) for shape in shapes]
    assert all(0.0 < d <= 1.0 for d in densities)
    active = sum(round(d * n) for d, n in zip(densities, sizes, strict=True))
    assert abs(active - density * sum(sizes)) <= len(shapes)


def test_uniform_is_uniform():
    assert layer_densities(SHAPES, 0.1, "uniform") == [0.1, 0.1, 0.1]


def test_erk_gives_small_layers_more_and_follows_the_formula():
    densities = layer_densities(SHAPES, 0.05, "erk")
    assert densities[0] < densities[1] < densities[2] < 1.0
    # d_l ∝ Σshape / Πshape with one shared ε
    ratios = [d / (sum(s) / math.prod(s)) for d, s in zip(densities, SHAPES, strict=True)]
    assert max(ratios) == pytest.approx(min(ratios))


def test_er_uses_fan_in_and_fan_out_only():
    shapes = [(32, 16, 3, 3), (64, 32, 5, 5)]
    densities = layer_densities(shapes, 0.05, "er")
    assert max(densities) < 1.0
    ratios = [d / ((s[0] + s[1]) / (s[0] * s[1])) for d, s in zip(densities, shapes, strict=True)]
    assert ratios[0] == pytest.approx(ratios[1])


def test_overflowing_layer_becomes_dense_and_the_rest_is_resolved():
    shapes = [(1000, 1000), (10, 1000), (3, 10)]
    densities = layer_densities(shapes, 0.5, "erk")
    assert densities[2] == 1.0
    sizes = [math.prod(shape) for shape in shapes]
    assert sum(d * n for d, n in zip(densities, sizes, strict=True)) == pytest.approx(0.5 * sum(sizes))


@pytest.mark.parametrize("kwargs, field", [
    ({"distribution": "bad"}, "distribution"),
    ({"density": 0.0}, "density"),
    ({"density": 1.5}, "density"),
    ({"shapes": [(0, 3)]}, "shapes"),
])
def test_bad_arguments(kwargs, field):
    call = {"shapes": SHAPES, "density": 0.1, "distribution": "erk", **kwargs}
    with pytest.raises(ValueError, match=field):
        layer_densities(**call)


def test_cosine_schedule_anneals_to_zero_at_end_fraction():
    schedule = RewireSchedule(drop_fraction=0.3, kind="cosine", interval_steps=100,
                              end_fraction=0.75, total_steps=1000)
    assert schedule.fraction_at(0) == pytest.approx(0.3)
    assert schedule.fraction_at(375) == pytest.approx(0.15)
    assert schedule.fraction_at(750) == pytest.approx(0.0)
    assert [s for s in range(1, 1001) if schedule.is_due(s)] == [100, 200, 300, 400, 500, 600, 700]


def test_constant_schedule():
    schedule = RewireSchedule(drop_fraction=0.3, kind="constant", interval_steps=50,
                              end_fraction=1.0, total_steps=200)
    assert schedule.fraction_at(10) == schedule.fraction_at(190) == 0.3
    assert [s for s in range(1, 201) if schedule.is_due(s)] == [50, 100, 150]
