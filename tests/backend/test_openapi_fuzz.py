"""Issue 12: a bounded property-based fuzz of the whole OpenAPI surface, generated from the
server's own `/openapi.json`: every operation, with path ids that exist and ids that do not,
parameters and bodies drawn from their schemas and from arbitrary JSON or bytes. Whatever it
sends, the server never answers 5xx, and the runs list stays readable.

Bounded (a fixed number of derandomised examples, ~20 s here) so it runs in every `make test`.
"""

from __future__ import annotations

import json
import sqlite3
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.backend.test_stream import record_run

EXAMPLES = 400
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
ANY_JSON = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def from_schema(schema: dict, spec: dict, depth: int = 0) -> st.SearchStrategy:
    """Values of a JSON schema (the OpenAPI subset FastAPI writes), mixed with arbitrary JSON
    at every level so that invalid inputs come as often as valid ones."""
    if depth > 5:
        return ANY_JSON
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return from_schema(spec["components"]["schemas"][name], spec, depth + 1)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([from_schema(option, spec, depth + 1) for option in schema[key]])
    if "allOf" in schema:
        return from_schema(schema["allOf"][0], spec, depth + 1)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        properties = {name: from_schema(sub, spec, depth + 1) | ANY_JSON
                      for name, sub in schema.get("properties", {}).items()}
        required = {name: properties.pop(name) for name in schema.get("required", [])
                    if name in properties}
        return st.fixed_dictionaries(required, optional=properties)
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), spec, depth + 1), max_size=4)
    if kind == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        return st.integers(min_value=low, max_value=high) | st.integers()
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False) | st.integers()
    if kind == "string":
        return st.text(max_size=24)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return ANY_JSON


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """One server for every example (fast), seeded with a recorded run, a remote run and a
    damaged legacy row; no run can start a worker (the queue holds none)."""
    from backend.app import create_app
    from backend.settings import Settings
    from tests.conftest import LoopbackClient

    data_dir = tmp_path_factory.mktemp("fuzz") / "data"
    with LoopbackClient(create_app(Settings(data_dir=data_dir, max_queued_runs=0))) as client:
        store = client.app.state.store
        recorded = record_run(store, rewires=6)
        remote = client.post("/api/ingest/runs", json={}).json()["id"]
        damaged = store.create_run({}, "damaged", status="completed")["id"]
        raw = sqlite3.connect(store.path)
        raw.execute("UPDATE runs SET summary = '{\"steps\": \"x\"}' WHERE id = ?", (damaged,))
        raw.commit()
        raw.close()
        yield client, [recorded, remote, damaged]


def test_no_request_from_the_openapi_surface_gets_a_5xx(fuzzed):
    client, seeded = fuzzed
    spec = client.get("/openapi.json").json()
    operations = [(method.upper(), path, operation) for path, methods in spec["paths"].items()
                  for method, operation in methods.items()]
    run_ids = st.sampled_from(seeded) | st.text(alphabet="0123456789abcdef", min_size=16,
                                                max_size=16) | st.text(max_size=20)
    failures: list[str] = []

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def exchange(data) -> None:
        method, path, operation = data.draw(st.sampled_from(operations))
        url, query = path, {}
        for parameter in operation.get("parameters", []):
            name, where = parameter["name"], parameter["in"]
            if where == "path":
                if name == "run_id":
                    # Deleting a seeded run would leave later examples only 404s to meet.
                    value = data.draw(run_ids.filter(lambda v: v not in seeded)
                                      if method == "DELETE" else run_ids)
                else:
                    value = data.draw(st.just("model.pt") | st.text(max_size=12))
                url = url.replace("{" + name + "}", quote(value, safe="") or "x")
            elif data.draw(st.booleans()) or parameter.get("required"):
                value = data.draw(from_schema(parameter.get("schema", {}), spec) | ANY_JSON)
                query[name] = value if isinstance(value, str) else json.dumps(value)
        content = (operation.get("requestBody") or {}).get("content", {})
        if "application/json" in content:
            body = data.draw(from_schema(content["application/json"]["schema"], spec) | ANY_JSON)
            payload = json.dumps(body).encode()
        else:
            payload = data.draw(st.binary(max_size=64))
        response = client.request(method, url, params=query, content=payload,
                                  headers={"content-type": "application/json"})
        if response.status_code >= 500:
            failures.append(f"{method} {url} {query} {payload[:200]!r} → "
                            f"{response.status_code} {response.text[:200]}")

    exchange()
    assert failures == [], "\n".join(failures[:10])
    assert client.get("/api/runs").status_code == 200
