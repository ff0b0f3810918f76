"""The Makefile trusts its install stamps only while the venv works (dry runs: nothing installs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def dry_run(venv: Path, target: str = "install") -> str:
    # Under `make test` this runs inside make: without its flags in the environment (and with
    # --no-print-directory) the dry run prints the same as when a person types it.
    env = {key: value for key, value in os.environ.items()
           if key not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")}
    result = subprocess.run(["make", "--no-print-directory", "-n", target, f"VENV={venv}"],
                            cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def stamped(venv: Path) -> None:
    for stamp in (".installed", ".installed-test"):
        (venv / stamp).touch()


def test_a_venv_whose_interpreter_is_gone_is_rebuilt(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(tmp_path / "no-such-python")
    stamped(venv)
    output = dry_run(venv)
    assert "broken or partial: recreating" in output and "-m venv" in output
    assert "pip install -q --no-compile -e ." in output
    assert not venv.exists()


def test_a_venv_without_pip_is_rebuilt(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    stamped(venv)
    output = dry_run(venv)
    assert "recreating" in output and "pip install -q --no-compile -e ." in output


def test_missing_packages_are_reinstalled_despite_the_stamps(tmp_path):
    venv = tmp_path / "venv"
    # pip comes from the base interpreter; torch, fastapi and this package do not.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(venv)], check=True)
    if subprocess.run([venv / "bin" / "python", "-m", "pip", "--version"],
                      capture_output=True).returncode != 0:
        pytest.skip("the base interpreter has no pip to lend the venv")
    stamped(venv)
    output = dry_run(venv, "install-test")
    assert "recreating" not in output
    # The package with its test extras in one install (not `-e .` first: a second build)...
    assert 'pip install -q --no-compile -e ".[test]"' in output
    assert not any(line.endswith("-e .") for line in output.splitlines())
    # ...then compiled once, on every core (pip's own pass compiles one file at a time).
    assert output.count("compileall.compile_dir") == 1
    assert output.index('-e ".[test]"') < output.index("compileall.compile_dir")
    assert not (venv / ".installed").exists()
    # What `make run` needs is then there too: its stamp is set with the test one.
    assert "touch" in output and f"{venv}/.installed {venv}/.installed-test" in output
    # The run install alone: the package, compiled.
    output = dry_run(venv, "install")
    assert "pip install -q --no-compile -e ." in output and ".[test]" not in output
    assert output.count("compileall.compile_dir") == 1


def test_a_working_venv_is_left_alone():
    venv = REPO / ".venv"
    if not (venv / ".installed-test").exists():
        pytest.skip("no installed .venv in this checkout")
    output = dry_run(venv, "install-test")
    # Its stamps are trusted (a pyproject.toml edited since may still ask for `pip install`).
    assert "-m venv" not in output and "recreating" not in output
    assert (venv / ".installed").exists() and (venv / ".installed-test").exists()


def test_make_bench_runs_every_bench_script_but_the_gpu_one():
    output = dry_run(REPO / ".venv", "bench")
    for script in sorted((REPO / "bench").glob("*.py")):
        if script.name != "gpu.py":  # needs CUDA: run when asked for (BENCH=bench/gpu.py)
            assert f"bench/{script.name}" in output
    assert "bench/gpu.py" not in output


def test_make_test_is_lint_then_compose_then_pytest_and_ci_runs_only_it():
    output = dry_run(REPO / ".venv", "test")
    steps = ["ruff check .", "docker-compose -f docker-compose.yml config -q", "-m pytest"]
    positions = [output.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), output
    # Each step is its own recipe line, so make stops at the first that fails; pytest's own
    # exit status (5 when it collects nothing) is make's. It lists its 15 slowest tests.
    assert output.strip().splitlines()[-1].endswith(
        "-m pytest -n 2 --dist loadfile --durations=15")
    ci = (REPO / ".ci" / "run").read_text()
    assert [line for line in ci.splitlines() if line and not line.startswith(("#", "set ", "cd "))] \
        == ["make test"]
