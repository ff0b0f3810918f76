"""Rewiring algorithms: each registers itself in `dst_core.rewire.REGISTRY` on import."""

from dst_core.algorithms import set_rewirer  # noqa: F401  (registers "set")
