"""When to rewire and how much: the drop-fraction schedules of the DST papers."""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class RewireSchedule:
    """Rewire every `interval_steps` from `begin_step` until `end_fraction` of `total_steps`.

    `cosine` anneals the drop fraction from `begin_step` to `min_drop_fraction` at the end
    step (RigL: to 0; SNFS: CosineAnnealingLR's eta_min 0.005); `constant` keeps it (SET's ζ).
    """

    drop_fraction: float = 0.3  # fraction of each layer's active connections replaced per rewire
    kind: str = "constant"  # "constant" or "cosine"
    interval_steps: int = 100  # optimizer steps between rewires
    end_fraction: float = 1.0  # no rewiring after this share of training
    total_steps: int = 1  # optimizer steps in the whole run
    begin_step: int = 0  # no rewiring before this step (rigl's begin_step)
    min_drop_fraction: float = 0.0  # where the cosine ends

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
        if self.begin_step < 0:
            raise ValueError(f"begin_step: must be >= 0, got {self.begin_step}")
        if not 0.0 <= self.min_drop_fraction <= 1.0:
            raise ValueError(f"min_drop_fraction: must lie in [0, 1], got "
                             f"{self.min_drop_fraction}")

    @property
    def end_step(self) -> int:
        return int(self.end_fraction * self.total_steps)

    def is_due(self, step: int) -> bool:
        """`step` counts completed optimizer steps (1-based)."""
        return (step > self.begin_step and (step - self.begin_step) % self.interval_steps == 0
                and step < self.end_step)

    def fraction_at(self, step: int) -> float:
        if self.kind == "constant":
            return self.drop_fraction
        span = max(1, self.end_step - self.begin_step)
        progress = min(1.0, max(0.0, (step - self.begin_step) / span))
        low = min(self.min_drop_fraction, self.drop_fraction)
        return low + (self.drop_fraction - low) / 2 * (1 + math.cos(math.pi * progress))
