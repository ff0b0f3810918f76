"""`/api/health` is a readiness check: 200 without a token while the app's run store can be
read, 503 with the reason while it cannot."""

from __future__ import annotations

import sqlite3

import pytest

from dst_core import __version__
from dst_core.store import SCHEMA_VERSION

TOKEN = "correct-horse-battery-staple"


class UnreadableStore:
    """A store whose disk refuses every read, as sqlite reports it."""

    path = "/nowhere/runs.sqlite3"

    def stored_schema_version(self):
        raise sqlite3.OperationalError("disk I/O error")


@pytest.fixture
def guarded(make_client):
    """Off loopback, so every other route needs the token."""
    return make_client(host="0.0.0.0", token=TOKEN)


def test_ready_is_200_without_a_token(guarded):
    assert guarded.get("/api/runs").status_code == 401  # the token is really required
    response = guarded.get("/api/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": __version__}


def test_a_store_that_cannot_be_read_is_503_with_the_reason_and_recovers(guarded):
    store = guarded.app.state.store
    guarded.app.state.store = UnreadableStore()  # what the routes get; the manager keeps its own
    try:
        response = guarded.get("/api/health")
    finally:
        guarded.app.state.store = store
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert "not ready" in detail and "disk I/O error" in detail
    assert "/nowhere" not in detail  # no path to a caller without a token
    assert guarded.get("/api/health").status_code == 200


def test_a_damaged_store_is_503(guarded):
    store = guarded.app.state.store
    store.db.execute("DROP TABLE meta")  # what a damaged or foreign file looks like
    response = guarded.get("/api/health")
    assert response.status_code == 503
    assert "no such table: meta" in response.json()["detail"]


def test_a_store_of_a_newer_layout_is_503(guarded):
    store = guarded.app.state.store
    store.db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                     (str(SCHEMA_VERSION + 1),))
    response = guarded.get("/api/health")
    assert response.status_code == 503
    assert f"schema version '{SCHEMA_VERSION + 1}'" in response.json()["detail"]
    store.db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                     (str(SCHEMA_VERSION),))
    assert guarded.get("/api/health").status_code == 200


def test_the_openapi_schema_documents_the_503(guarded):
    responses = guarded.get("/openapi.json").json()["paths"]["/api/health"]["get"]["responses"]
    assert "not ready" in responses["503"]["description"].lower()
