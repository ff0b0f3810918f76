"""Settings come from SPARSESCOPE_* variables; CORS, body limits and log lines follow them."""

from __future__ import annotations

import logging
import re
import shlex

import pytest

from backend.logfmt import format_event
from backend.middleware import RedactTokens
from backend.settings import IMPORT_PATH, Settings
from tests.conftest import REPO


def test_safe_defaults():
    settings = Settings()
    assert settings.host == "127.0.0.1" and settings.port == 8000 and settings.token is None
    assert settings.max_concurrent_runs == 1 and settings.worker_threads == 1
    assert settings.cors_origins == []
    assert settings.max_epochs >= 1000 and settings.max_width >= 4096
    assert settings.max_layers >= 8 and settings.max_queued_runs >= 64
    assert settings.max_import_bytes > settings.max_body_bytes


def test_environment_overrides(monkeypatch, tmp_path):
    values = {"HOST": "0.0.0.0", "PORT": "9001", "DATA_DIR": str(tmp_path), "TOKEN": "t0k",
              "MAX_CONCURRENT_RUNS": "3", "WORKER_THREADS": "2", "MAX_EPOCHS": "7",
              "MAX_WIDTH": "99", "MAX_LAYERS": "2", "MAX_PARAMETERS": "12345",
              "MAX_QUEUED_RUNS": "4", "MAX_BODY_BYTES": "4096", "MAX_IMPORT_BYTES": "8192",
              "CORS_ORIGINS": '["https://lab.example"]', "STOP_GRACE_S": "1.5",
              "LOG_LEVEL": "warning"}
    for key, value in values.items():
        monkeypatch.setenv(f"SPARSESCOPE_{key}", value)
    settings = Settings()
    assert settings.host == "0.0.0.0" and settings.port == 9001 and settings.token == "t0k"
    assert settings.data_dir == tmp_path and settings.max_concurrent_runs == 3
    assert (settings.max_epochs, settings.max_width, settings.max_layers) == (7, 99, 2)
    assert settings.max_parameters == 12345 and settings.max_queued_runs == 4
    assert settings.body_limits()[IMPORT_PATH] == 8192 and settings.max_body_bytes == 4096
    assert settings.cors_origins == ["https://lab.example"] and settings.stop_grace_s == 1.5
    settings.check()  # a token is set: off loopback is allowed


@pytest.mark.parametrize(("key", "value"), [("PORT", "0"), ("PORT", "http"),
                                            ("MAX_CONCURRENT_RUNS", "0"), ("LOG_LEVEL", "loud")])
def test_bad_environment_is_refused(monkeypatch, key, value):
    monkeypatch.setenv(f"SPARSESCOPE_{key}", value)
    with pytest.raises(ValueError, match=key.lower()):
        Settings()


def test_environment_limits_reach_the_api(monkeypatch, tmp_path, make_client):
    monkeypatch.setenv("SPARSESCOPE_MAX_EPOCHS", "3")
    client = make_client()
    response = client.post("/api/runs", json={"epochs": 4})
    assert response.status_code == 422 and "SPARSESCOPE_MAX_EPOCHS" in response.text


def test_cors_is_off_by_default(make_client):
    client = make_client()
    response = client.get("/api/runs", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers
    preflight = client.options("/api/runs", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_allows_only_the_named_origins(make_client):
    client = make_client(cors_origins=["https://lab.example"])
    allowed = client.get("/api/runs", headers={"Origin": "https://lab.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://lab.example"
    other = client.get("/api/runs", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_body_limit_is_chosen_by_path(make_client):
    client = make_client(max_body_bytes=2048, max_import_bytes=64 * 1024)
    medium = b"x" * 10_000
    assert client.post("/api/runs", content=medium).status_code == 413
    # The import route (the store's) gets its own, larger limit: the body passes the limit
    # and reaches the route (which may still reject the bytes as a bad file).
    assert client.post(IMPORT_PATH, content=medium).status_code != 413
    too_big = client.post(IMPORT_PATH, content=b"x" * 100_000)
    assert too_big.status_code == 413 and IMPORT_PATH in too_big.json()["detail"]


LOGFMT = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def parse_logfmt(line: str) -> dict[str, str]:
    return {key: shlex.split(value)[0] if value.startswith('"') else value
            for key, value in LOGFMT.findall(line)}


def test_log_lines_are_structured(make_client, caplog):
    caplog.set_level(logging.INFO, logger="sparsescope")
    client = make_client()
    run = client.post("/api/runs", json={"epochs": 1, "hidden": [8]}).json()
    client.post(f"/api/runs/{run['id']}/stop")
    client.post("/api/runs", json={"bogus": 1})
    events = [parse_logfmt(record.getMessage()) for record in caplog.records
              if record.name.startswith("sparsescope")]
    assert all("event" in event for event in events)
    by_name = {event["event"]: event for event in events}
    assert by_name["run_queued"]["run"] == run["id"]
    requests = [event for event in events if event["event"] == "request"]
    assert any(event["method"] == "POST" and event["path"] == "/api/runs"
               and event["status"] == "201" and float(event["ms"]) >= 0 for event in requests)
    assert by_name["invalid_request"]["fields"] == "bogus"


def test_logfmt_quotes_what_needs_quoting():
    line = format_event("x", plain="a", spaced="a b", quoted='say "hi"', empty="", none=None)
    assert parse_logfmt(line) == {"event": "x", "plain": "a", "spaced": "a b",
                                  "quoted": 'say "hi"', "empty": ""}


def test_tokens_are_redacted_from_server_logs():
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1,
                               '%s - "WebSocket %s" [accepted]',
                               ("127.0.0.1:5", "/ws/runs/abc?from_seq=0&token=s3cret"), None)
    RedactTokens().filter(record)
    assert "s3cret" not in record.getMessage() and "token=***" in record.getMessage()


def test_every_setting_is_documented():
    page = (REPO / "docs" / "operations.md").read_text()
    table = page[page.index("## Settings"):]
    table = table[:table.index("\n## ", 1)]
    for name in Settings.model_fields:
        assert f"`SPARSESCOPE_{name.upper()}`" in table, name


def test_unusable_data_dir_is_a_clear_refusal(tmp_path):
    from backend.app import create_app

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="data_dir"):
        create_app(Settings(data_dir=blocker / "data"))
