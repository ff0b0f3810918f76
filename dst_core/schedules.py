"""When to rewire and how much: the drop-fraction schedules of the DST papers."""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class RewireSchedule:
    """Rewire every `interval_steps` until `end_fraction` of `total_steps`.

    `cosine` anneals the drop fraction to 0 at the end step (RigL, SNFS); `constant` keeps it
    (SET's ζ).
    """

    drop_fraction: float = 0.3  # fraction of each layer's active connections replaced per rewire
    kind: str = "constant"  # "constant" or "cosine"
    interval_steps: int = 100  # optimizer steps between rewires
    end_fraction: float = 1.0  # no rewiring after this share of training
    total_steps: int = 1  # optimizer steps in the whole run

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule: unknown {self.kind!r}; known: {', '.join(SCHEDULES)}")
        if not 0.0 <= self.drop_fraction <= 1.0:
            raise ValueError(f"drop_fraction: must lie in [0, 1], got {self.drop_fraction}")
        if self.interval_steps < 1:
            raise ValueError(f"interval_steps: must be >= 1, got {self.interval_steps}")
        if not 0.0 <= self.end_fraction <= 1.0:
            raise ValueError(f"end_fraction: must lie in [0, 1], got {self.end_fraction}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps: must be >= 1, got {self.total_steps}")

    @property
    def end_step(self) -> int:
        return int(self.end_fraction * self.total_steps)

    def is_due(self, step: int) -> bool:
        """`step` counts completed optimizer steps (1-based)."""
        return step % self.interval_steps == 0 and step < self.end_step

    def fraction_at(self, step: int) -> float:
        if self.kind == "constant":
            return self.drop_fraction
        progress = min(1.0, step / max(1, self.end_step))
        return self.drop_fraction / 2 * (1 + math.cos(math.pi * progress))
