"""The drivers under a Python without nnabla: re-executed with <repo>/.venv/bin/python when it
exists, else one error line saying how to create it (exit 2)."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_without_nnabla():
    for name in ("python3.11", "python3.12", "python3", "/usr/bin/python3"):
        p = shutil.which(name)
        if p and subprocess.run([p, "-c", "import importlib.util, sys; "
                                          "sys.exit(importlib.util.find_spec('nnabla') is not None)"]).returncode == 0:
            return p
    return None


@pytest.fixture
def fake_repo(tmp_path):
    """A repository copy holding only the bootstrap and a driver that prints where it runs."""
    (tmp_path / "sgd_influence" / "base").mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "sgd_influence", "base", "environment.py"), tmp_path / "sgd_influence" / "base")
    (tmp_path / "sgd_influence" / "__init__.py").write_text("")
    (tmp_path / "sgd_influence" / "base" / "__init__.py").write_text("")
    (tmp_path / "driver.py").write_text(
        "import sys\nfrom sgd_influence.base.environment import ensure_project_python\nensure_project_python()\n"
        "print('ran', sys.argv[1:])\n")
    return tmp_path


def test_no_venv_is_one_error_line(fake_repo):
    py = python_without_nnabla()
    if py is None:
        pytest.skip("every Python here has nnabla")
    r = subprocess.run([py, "driver.py", "-o", "x"], cwd=fake_repo, capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: nnabla is not installed") and "make venv" in lines[0]


def test_reexecuted_with_the_venv_python(fake_repo):
    py = python_without_nnabla()
    if py is None:
        pytest.skip("every Python here has nnabla")
    venv_bin = fake_repo / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    # A stand-in for the venv's interpreter: reports how it was called.
    (venv_bin / "python").write_text(f"#!/bin/sh\necho \"venv python $*\"\n")
    (venv_bin / "python").chmod(0o755)
    r = subprocess.run([py, "driver.py", "-o", "x y"], cwd=fake_repo, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "venv python driver.py -o x y"
