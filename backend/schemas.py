"""Response schemas of the REST API (the run config itself is dst_core.config.RunConfig)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
    # Returned exactly as stored: a run config of the dashboard or the CLI (every field), or a
    # script's own dict. Never completed with RunConfig's defaults, which would name settings
    # (a method, a model) the run did not use.
    config: dict[str, Any] = Field(
        description="What the run was started with: the RunConfig of a dashboard or CLI run "
                    "(every field), or the config dict a script passed to its Recorder ({} "
                    "when none)")
    settings: dict[str, Any] | None = Field(
        None, description="The settings the run actually used, every method default resolved: "
                          "method, density, distribution, drop_fraction, schedule, "
                          "interval_steps, end_fraction, total_steps, temperature, l1, model "
                          "(e.g. 'mlp [64, 64]', 'custom: Net (12.3 k params)'), task, layers "
                          "[{name, shape, density}]; null until the writer stored them (and for "
                          "runs recorded before settings were)")
    has_model: bool = Field(False, description="Whether a trained model is stored "
                                               "(GET /api/runs/{id}/model)")
    warnings: list[str] = Field(
        default_factory=list,
        description="Why these settings may show nothing (no rewire, a drop fraction that "
                    "moves no connection); answered by POST /api/runs, empty elsewhere")
    status: RunStatus
    created_at: float = Field(description="Unix time")
    started_at: float | None = Field(None, description="Unix time the worker began training")
    ended_at: float | None = Field(None, description="Unix time of the final status")
    error: str | None = Field(None, description="Why the run failed (failed runs)")
    summary: RunSummary
    info: dict[str, Any] = Field(
        default_factory=dict,
        description="Who wrote the run and with what: writer (worker, cli, script, remote), "
                    "torch and sparsescope versions, git commit when known, seed; an imported "
                    "copy adds imported_at and imported_from (the original's id)")


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
