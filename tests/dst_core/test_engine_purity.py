"""The engine stays pure: `import dst_core` loads no pydantic, no SQLite, no HTTP client.

(Which modules import which, function-level imports included, is tests/test_layers.py.)

Checked in a fresh interpreter (this test process has long since imported everything).
torch itself imports urllib (torch.hub), so urllib is judged against what torch and numpy
load on their own: dst_core must add none of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_ROOTS = ("pydantic", "pydantic_core", "sqlite3", "_sqlite3", "urllib", "http",
                   "fastapi", "starlette", "backend")

PROBE = """
import json, sys
import numpy, torch
before = set(sys.modules)
import dst_core
added = sorted(set(sys.modules) - before)
print(json.dumps({"added": added, "all": sorted(sys.modules)}))
"""


def run_probe(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_dst_core_loads_no_store_schema_or_web_code():
    loaded = run_probe(PROBE)
    added = [name for name in loaded["added"] if name.split(".")[0] in FORBIDDEN_ROOTS]
    assert added == [], f"import dst_core loaded {added}"
    assert not {"pydantic", "sqlite3", "_sqlite3"} & set(loaded["all"])
    recording = [name for name in loaded["added"]
                 if name.startswith(("dst_core.recording", "dst_core.store"))]
    assert recording == [], f"import dst_core loaded {recording}"


def test_names_that_moved_out_of_the_engine_say_where():
    """`dst_core.RunConfig` / `.Recorder` / `.RunStore` live in the layers above now; asking
    the engine for them names the import that works (and that import does work)."""
    import dst_core
    from dst_core.recording import Recorder
    from dst_core.store import RunConfig, RunStore

    for name, home, value in (("RunConfig", "dst_core.store", RunConfig),
                              ("Recorder", "dst_core.recording", Recorder),
                              ("RunStore", "dst_core.store", RunStore)):
        try:
            getattr(dst_core, name)
        except AttributeError as error:
            assert f"from {home} import {name}" in str(error)
        else:
            raise AssertionError(f"dst_core.{name} should say where it moved")
        assert getattr(__import__(home, fromlist=[name]), name) is value


def test_unknown_attribute_is_an_attribute_error():
    import dst_core

    try:
        dst_core.NoSuchThing  # noqa: B018
    except AttributeError as error:
        assert "NoSuchThing" in str(error)
    else:
        raise AssertionError("expected AttributeError")
