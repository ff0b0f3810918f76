"""Issue 30, item 7: every setting is parsed in one place (backend.settings.parsed_settings); a
bad one stops every command with exit 2 and one line naming it, never a traceback and never
a default in its place."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from backend.settings import SettingsError, parsed_settings
from tests.conftest import REPO


def run_module(args: list[str], env: dict[str, str], timeout_s: float = 60):
    full = {key: value for key, value in os.environ.items()
            if not key.startswith("SPARSESCOPE_")}
    return subprocess.run([sys.executable, *args], cwd=REPO, env={**full, **env},
                          capture_output=True, text=True, timeout=timeout_s)


@pytest.mark.parametrize(("variable", "value"), [("SPARSESCOPE_PORT", "abc"),
                                                 ("SPARSESCOPE_TOPOLOGY_CACHE_MB", "abc"),
                                                 ("SPARSESCOPE_CORS_ORIGINS", "not json")])
def test_a_bad_variable_stops_the_server_with_one_line_naming_it(tmp_path, variable, value):
    result = run_module(["-m", "backend", "--data-dir", str(tmp_path / "data")],
                        {variable: value})
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"sparsescope: {variable}: "), result.stderr
    assert "Traceback" not in result.stderr and "dashboard:" not in result.stdout  # not served


def test_every_command_refuses_a_bad_environment_instead_of_using_defaults(tmp_path):
    """With a default in place of a bad value, `runs list` read the default folder (all of
    the environment fell back, SPARSESCOPE_DATA_DIR included)."""
    result = run_module(["-m", "backend.cli", "runs", "list"],
                        {"SPARSESCOPE_DATA_DIR": str(tmp_path), "SPARSESCOPE_MAX_PARAMETERS": "x"})
    assert result.returncode == 2 and "SPARSESCOPE_MAX_PARAMETERS" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_bad_flag_is_named_as_the_flag(tmp_path):
    result = run_module(["-m", "backend", "--port", "0", "--data-dir", str(tmp_path)], {})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sparsescope: --port: Input should be greater than or equal to 1 (got 0)"]


def test_parsed_settings_names_the_variable_or_the_flag(monkeypatch):
    monkeypatch.setenv("SPARSESCOPE_STOP_GRACE_S", "soon")
    with pytest.raises(SettingsError, match=r"^SPARSESCOPE_STOP_GRACE_S: .*\(got 'soon'\)$"):
        parsed_settings()
    monkeypatch.delenv("SPARSESCOPE_STOP_GRACE_S")
    with pytest.raises(SettingsError, match="^--port: "):
        parsed_settings({"port": 70000}, flags={"port": "--port"})
    assert parsed_settings({"port": 9001}).port == 9001
