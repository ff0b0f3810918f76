"""Server settings, read from the environment (prefix SPARSESCOPE_) and the command line.

Every knob of the server lives here, limits included: a deployment tightens them with
environment variables (`SPARSESCOPE_MAX_EPOCHS=200`), never by editing code.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as UnparsedSetting

from dst_core.store import DEFAULT_DATA_DIR
from dst_core.store.config import RunConfig
from dst_core.store.run_store import MAX_METRIC_NAMES, METRIC_NAMES_LIMIT_RANGE

MIB = 1024 * 1024
IMPORT_PATH = "/api/runs/import"
INGEST_PREFIX = "/api/ingest/"


class Settings(BaseSettings):
    """Host, port, data folder, token, worker pool and the limits that protect the machine."""

    model_config = SettingsConfigDict(env_prefix="SPARSESCOPE_", extra="ignore")

    # ---- where and who --------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address to bind; off loopback a token is required")
    port: int = Field(8000, ge=1, le=65535, description="TCP port")
    data_dir: Path = Field(Path(DEFAULT_DATA_DIR), description="Run store folder")
    token: str | None = Field(None, description="Bearer token (REST) / ?token= (websockets); "
                              "required off loopback")
    cors_origins: list[str] = Field(
        [], description='Origins allowed cross-site (JSON list, e.g. \'["https://a.example"]\'); '
        "empty: CORS off")
    allowed_hosts: list[str] = Field(
        [], description="Host names accepted besides loopback names and the bound host when "
        "bound to loopback (JSON list; e.g. a reverse proxy's name). Others get 421: DNS "
        "rebinding")
    frame_ancestors: str = Field(
        "'self'", description="CSP frame-ancestors: who may embed the dashboard in a frame "
        "(e.g. \"'self' http://localhost:8888\" for Jupyter); 'none' forbids every frame")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Level of the server's own log lines")

    # ---- workers ----------------------------------------------------------------------------
    max_concurrent_runs: int = Field(1, ge=1, le=64, description="Worker processes at once")
    worker_threads: int = Field(1, ge=1, le=256, description="torch threads per worker")
    warm_workers: int = Field(1, ge=0, le=64,
                              description="Idle workers kept with torch imported, so a started "
                                          "run trains at once (0: each run starts its own)")
    stop_grace_s: float = Field(3.0, ge=0.0, le=60.0,
                                description="Cooperative stop, then the worker is killed")

    # ---- limits -----------------------------------------------------------------------------
    # The defaults admit 8 hidden layers of 4096 units on MNIST (~120 M parameters).
    max_epochs: int = Field(10_000, ge=1, description="Most epochs one run may ask for")
    max_width: int = Field(4096, ge=1, description="Widest hidden layer")
    max_layers: int = Field(8, ge=0, description="Most hidden layers")
    max_parameters: int = Field(150_000_000, ge=1,
                                description="Most dense parameters (weights + biases) of a model")
    max_queued_runs: int = Field(64, ge=0, description="Runs waiting for a worker at once")
    max_body_bytes: int = Field(1 * MIB, ge=1024, description="Largest request body")
    max_header_bytes: int = Field(64 * 1024, ge=4096, le=16 * MIB,
                                  description="Largest request head (request line + headers); "
                                              "larger: 431")
    max_import_bytes: int = Field(512 * MIB, ge=1024,
                                  description=f"Largest request body of {IMPORT_PATH}")

    max_ingest_bytes: int = Field(64 * MIB, ge=1024,
                                  description=f"Largest request body under {INGEST_PREFIX}"
                                              " (remote writers' event batches)")
    max_metric_names: int = Field(MAX_METRIC_NAMES, ge=METRIC_NAMES_LIMIT_RANGE[0],
                                  le=METRIC_NAMES_LIMIT_RANGE[1],
                                  description="Distinct metrics/eval field names one run may "
                                              "have; a batch past it is refused (422). Stored "
                                              "in the data folder: its workers and scripts "
                                              "writing it directly refuse at the same count")
    topology_cache_mb: int = Field(1024, ge=1, description="Topology index the server keeps in "
                                   "memory (per-layer cohort segments), least recently used first")
    # ---- remote and CLI writers --------------------------------------------------------------
    stale_after_s: float = Field(
        60.0, gt=0.0, description="A running run whose writer sent no heartbeat this long fails")

    @property
    def is_loopback(self) -> bool:
        if self.host in ("localhost",):
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def check(self) -> None:
        """Refuse to serve off loopback without a token (anyone on the network could train)."""
        if not self.is_loopback and not (self.token or "").strip():
            raise ValueError(
                f"token: binding to {self.host} exposes the server; set SPARSESCOPE_TOKEN")

    def host_names(self) -> list[str] | None:
        """Names a request's Host may carry when bound to loopback; None off loopback (a
        token guards the server there, and its public names are the deployment's)."""
        if not self.is_loopback:
            return None
        return ["localhost", "127.0.0.1", "::1", self.host, *self.allowed_hosts]

    def body_limits(self) -> dict[str, int]:
        """Per-path request body limits; every other path gets `max_body_bytes`."""
        return {IMPORT_PATH: self.max_import_bytes, INGEST_PREFIX: self.max_ingest_bytes}

    def run_limit_errors(self, config: RunConfig) -> list[tuple[str, str]]:
        """(field, message) for every limit `config` exceeds; empty when it fits."""
        errors: list[tuple[str, str]] = []
        if config.resolved_epochs > self.max_epochs:
            errors.append(("epochs", f"at most {self.max_epochs} epochs on this server "
                                     "(SPARSESCOPE_MAX_EPOCHS)"))
        if len(config.hidden) > self.max_layers:
            errors.append(("hidden", f"at most {self.max_layers} hidden layers on this server "
                                     "(SPARSESCOPE_MAX_LAYERS)"))
        widest = max(config.hidden, default=0)
        if widest > self.max_width:
            errors.append(("hidden", f"width {widest} exceeds {self.max_width} on this server "
                                     "(SPARSESCOPE_MAX_WIDTH)"))
        if not errors:
            parameters = config.parameter_count()
            if parameters > self.max_parameters:
                errors.append(("hidden", f"the model would have {parameters:,} parameters; at "
                                         f"most {self.max_parameters:,} on this server "
                                         "(SPARSESCOPE_MAX_PARAMETERS)"))
        return errors


class SettingsError(ValueError):
    """A setting that does not parse or is out of range: one line naming where it came from
    (the SPARSESCOPE_ variable, or the flag that set it) and what is wrong."""


def parsed_settings(overrides: dict | None = None, flags: dict[str, str] | None = None) -> Settings:
    """Settings from the environment and `overrides` (field -> value, e.g. from flags), the
    one place any command or the server reads them. A bad value is a SettingsError naming the
    variable, or `flags[field]` when an override set that field; never a fallback to a
    default (SPARSESCOPE_PORT=abc must not serve on 8000)."""
    overrides = overrides or {}

    def source(field: str) -> str:
        if field in overrides and field in (flags or {}):
            return flags[field]
        return f"SPARSESCOPE_{field.upper()}"

    try:
        return Settings(**overrides)
    except ValidationError as error:
        item = error.errors(include_url=False)[0]
        field = str(item["loc"][0]) if item.get("loc") else "settings"
        raise SettingsError(f"{source(field)}: {item.get('msg', 'invalid')} "
                            f"(got {item.get('input')!r})") from None
    except UnparsedSetting as error:  # a list setting whose value is not JSON
        found = re.search(r'field "(\w+)"', str(error))
        field = found.group(1) if found else "settings"
        raise SettingsError(f"{source(field)}: not a JSON list (e.g. '[\"https://a.example\"]')"
                            ) from None
