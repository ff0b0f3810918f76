"""The two baselines every DST result is measured against."""

from __future__ import annotations

from dst_core.method_options import with_defaults
from dst_core.rewire import Algorithm, register_rewirer


class DenseBaseline(Algorithm):
    """Every connection active; the driver still reports densities (all 1) and ITOP."""

    trains_dense = True
    defaults = with_defaults(distribution="uniform")


class StaticBaseline(Algorithm):
    """A fixed random mask at the target density, never rewired (the "static sparse" line)."""

    defaults = with_defaults(distribution="erk")
    supports_structure = True  # an N:M mask that never changes


register_rewirer("dense", DenseBaseline)
register_rewirer("static", StaticBaseline)
