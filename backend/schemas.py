"""Response schemas of the REST API (the run config itself is dst_core.config.RunConfig)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from dst_core.config import RunConfig

RunStatus = Literal["queued", "running", "completed", "stopped", "failed"]


class RunSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    steps: int = 0
    final_loss: float | None = None
    final_test_accuracy: float | None = None
    best_test_accuracy: float | None = None
    density: dict[str, float] = {}
    itop_rate: float | None = None


class RunOut(BaseModel):
    id: str
    name: str
    config: RunConfig
    status: RunStatus
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    summary: RunSummary


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
