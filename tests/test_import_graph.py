"""The design rule of the package layout: no import circles (tools/import_graph.py)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_import_circles():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "import_graph.py")], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "circles: none" in r.stdout, r.stdout + r.stderr
    floors = dict(line.split(": ", 1) for line in r.stdout.splitlines() if line.startswith("floor"))
    bottom = floors["floor 0"].split()
    assert "sgd_influence.methods" in bottom and "sgd_influence.errors" in bottom  # pure data and errors at the bottom
