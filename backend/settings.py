"""Server settings, read from the environment (prefix SPARSESCOPE_) and the command line."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the server; limits live here, not buried in code."""

    model_config = SettingsConfigDict(env_prefix="SPARSESCOPE_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to bind; off loopback a token is required")
    port: int = Field(8000, ge=1, le=65535, description="TCP port")
    data_dir: Path = Field(Path("./sparsescope-data"), description="Run store folder")
    token: str | None = Field(None, description="Bearer token required off loopback")
    max_concurrent_runs: int = Field(1, ge=1, le=64, description="Worker processes at once")
    worker_threads: int = Field(1, ge=1, le=256, description="torch threads per worker")
    stop_grace_s: float = Field(3.0, ge=0.0, le=60.0, description="Cooperative stop, then kill")

    # ---- run store, import and remote writers (added by the store helper, issue 5) ----
    import_max_bytes: int = Field(
        2 * 1024**3, ge=1024, description="Largest accepted POST /api/runs/import body (bytes)")
    ingest_max_bytes: int = Field(
        64 * 1024**2, ge=1024, description="Largest accepted remote-writer request body (bytes)")
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
        if not self.is_loopback and not self.token:
            raise ValueError(
                f"token: binding to {self.host} exposes the server; set SPARSESCOPE_TOKEN")
