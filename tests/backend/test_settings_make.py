"""The Makefile trusts its install stamps only while the venv works (dry runs: nothing installs)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def dry_run(venv: Path, target: str = "install") -> str:
    result = subprocess.run(["make", "-n", target, f"VENV={venv}"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
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
    assert "pip install -q -e ." in output
    assert not venv.exists()


def test_a_venv_without_pip_is_rebuilt(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    stamped(venv)
    output = dry_run(venv)
    assert "recreating" in output and "pip install -q -e ." in output


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
    assert "pip install -q -e ." in output and 'pip install -q -e ".[test]"' in output
    assert not (venv / ".installed").exists()


def test_a_working_venv_is_left_alone():
    venv = REPO / ".venv"
    if not (venv / ".installed-test").exists():
        pytest.skip("no installed .venv in this checkout")
    output = dry_run(venv, "install-test")
    assert "pip install" not in output and "-m venv" not in output


def test_make_bench_runs_every_bench_script():
    output = dry_run(REPO / ".venv", "bench")
    for script in sorted((REPO / "bench").glob("*.py")):
        assert f"bench/{script.name}" in output
