"""Run under the project's environment.

nnabla 1.39.0 needs CPython 3.8-3.10, which `make venv` provides in <repo>/.venv.
A driver started by another Python (e.g. the machine's python3.11, which lacks
nnabla) re-executes itself with <repo>/.venv/bin/python when that exists, and
otherwise stops with one line saying how to create it. Imports nothing heavy:
the drivers call it before anything imports nnabla.
"""
from __future__ import annotations

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository (sgd_influence/base/..)
VENV = os.path.join(ROOT, ".venv")
_GUARD = "SGD_INFLUENCE_REEXEC"  # set on re-execution: never loop


def ensure_project_python() -> None:
    if importlib.util.find_spec("nnabla") is not None:
        return
    python = os.path.join(VENV, "bin", "python")
    inside = os.path.realpath(sys.prefix) == os.path.realpath(VENV)
    if os.path.exists(python) and not inside and not os.environ.get(_GUARD):
        os.environ[_GUARD] = "1"
        argv = getattr(sys, "orig_argv", None) or [sys.executable] + sys.argv
        os.execv(python, [python] + argv[1:])
    print(f"error: nnabla is not installed for {sys.executable} (Python {sys.version_info[0]}.{sys.version_info[1]}; "
          f"nnabla 1.39.0 needs 3.8-3.10): run `make venv` in {ROOT} once, then run this command again "
          f"(or with {python})", file=sys.stderr)
    sys.exit(2)
