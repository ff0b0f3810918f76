"""Rewiring algorithms: each registers itself in `dst_core.rewire.REGISTRY` on import."""

from dst_core.algorithms import baselines, deep_r, gradient, set_rewirer, srigl  # noqa: F401
