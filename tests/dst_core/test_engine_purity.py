"""The engine stays pure: `import dst_core` loads no pydantic, no SQLite, no HTTP client.

Checked in a fresh interpreter (this test process has long since imported everything).
torch itself imports urllib (torch.hub), so urllib is judged against what torch and numpy
load on their own: dst_core must add none of it.
"""

from __future__ import annotations

import ast
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
                 if name.startswith(("dst_core.recording", "dst_core.config"))]
    assert recording == [], f"import dst_core loaded {recording}"


def test_lazy_public_names_still_import():
    code = ("import sys, dst_core; from dst_core import RunConfig, Recorder, RunStore; "
            "print({'ok': RunConfig.__name__ + Recorder.__name__ + RunStore.__name__, "
            "'pydantic': 'pydantic' in sys.modules})")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert "RunConfigRecorderRunStore" in result.stdout and "True" in result.stdout
    assert "RunConfig" in dir(__import__("dst_core"))


def test_unknown_attribute_is_an_attribute_error():
    import dst_core

    try:
        dst_core.NoSuchThing  # noqa: B018
    except AttributeError as error:
        assert "NoSuchThing" in str(error)
    else:
        raise AssertionError("expected AttributeError")


def test_engine_modules_import_nothing_from_the_store_or_the_web():
    """events.py and analytics must not import recording.codec (or any store / web code)."""
    engine = ["events.py", "analytics.py", "driver.py", "rewire.py", "selection.py",
              "density.py", "schedules.py"]
    for name in engine:
        tree = ast.parse((ROOT / "dst_core" / name).read_text())
        for node in ast.walk(tree):
            modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for module in modules:
                assert not module.startswith(("dst_core.recording", "dst_core.config",
                                              "backend", "pydantic", "sqlite3", "fastapi")), \
                    f"{name} imports {module}"
