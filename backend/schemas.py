"""Response schemas of the REST API (the run config itself is dst_core.config.RunConfig)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dst_core.config import RunConfig

RunStatus = Literal["queued", "running", "completed", "stopped", "failed"]


class RunSummary(BaseModel):
    """What a run has reached so far, kept current by its writer (the Recorder)."""

    model_config = ConfigDict(extra="allow")

    steps: int = Field(0, description="Last training step recorded")
    final_loss: float | None = Field(None, description="Latest training loss")
    final_test_accuracy: float | None = Field(None, description="Latest held-out accuracy")
    best_test_accuracy: float | None = Field(None, description="Best held-out accuracy so far")
    density: dict[str, float | None] = Field({}, description="Per-layer density, latest")
    itop_rate: float | None = Field(None, description="Share of connections ever active")


class RunOut(BaseModel):
    """One run as REST returns it (the same row in the list and by id)."""

    id: str = Field(description="16 hex digits")
    name: str
    # A run recorded by a user's own script carries whatever config that script passed, so a
    # stored config that is not a RunConfig is returned as it is rather than failing the list.
    config: RunConfig | dict[str, Any] = Field(union_mode="left_to_right")
    status: RunStatus
    created_at: float = Field(description="Unix time")
    started_at: float | None = Field(None, description="Unix time the worker began training")
    ended_at: float | None = Field(None, description="Unix time of the final status")
    error: str | None = Field(None, description="Why the run failed (failed runs)")
    summary: RunSummary
    info: dict[str, Any] = Field(
        default_factory=dict,
        description="Who wrote the run and with what: writer (worker, cli, script, remote), "
                    "torch and sparsescope versions, git commit when known, seed, and the "
                    "script's own config when it was not a RunConfig (user_config)")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str


class ErrorOut(BaseModel):
    """Every 4xx other than 422: one human-readable reason."""

    detail: str


class FieldError(BaseModel):
    loc: list[str | int] = Field(description='Where, e.g. ["body", "hidden", 0]')
    msg: str = Field(description="What is wrong, starting with the field's name")
    type: str


class ValidationErrorOut(BaseModel):
    """422: one entry per bad field."""

    detail: list[FieldError]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or wrong bearer token"},
    404: {"model": ErrorOut, "description": "No such run (or a malformed run id)"},
}
# Routes that read a request body: one that cannot be decoded, or is over its limit.
BODY_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "A body that cannot be read (not UTF-8 JSON, not "
                                            "a run file)"},
    413: {"model": ErrorOut, "description": "Body over the server's limit for this path"},
}
WRITER_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorOut, "description": "The run has ended, or another process writes it"},
}
