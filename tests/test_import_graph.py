"""The design rules of the package layout (tools/import_graph.py): no import circles, and each
layer of sgd_influence (a subpackage) imports only the layers below it."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "import_graph.py")


def graph(root=ROOT):
    return subprocess.run([sys.executable, TOOL, root], capture_output=True, text=True)


def test_no_import_circles_and_no_upward_imports():
    r = graph()
    assert r.returncode == 0 and "circles: none" in r.stdout and "upward imports: none" in r.stdout, \
        r.stdout + r.stderr
    floors = dict(line.split(": ", 1) for line in r.stdout.splitlines() if line.startswith("floor"))
    bottom = floors["floor 0"].split()
    assert "sgd_influence.base.methods" in bottom and "sgd_influence.base.errors" in bottom  # data, errors
    layers = [line.split()[1].rstrip(":") for line in r.stdout.splitlines() if line.startswith("layer ")]
    assert layers == ["base", "core", "config", "analysis", "pipeline", "checks"]
    tops = [n[:-3] for n in os.listdir(os.path.join(ROOT, "sgd_influence")) if n.endswith(".py")]
    assert sorted(tops) == ["__init__", "analyze", "cluster", "rounding"]  # the package's top: only the commands


def test_the_tool_finds_an_upward_import(tmp_path):
    """A copy of the layout where a base module imports a core one: reported, exit 1."""
    for pkg in ("sgd_influence", "influence_functions", "datasets", "models"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    for lay in ("base", "core"):
        (tmp_path / "sgd_influence" / lay).mkdir()
        (tmp_path / "sgd_influence" / lay / "__init__.py").write_text("")
    (tmp_path / "sgd_influence" / "core" / "graphs.py").write_text("from ..base import errors\n")
    (tmp_path / "sgd_influence" / "base" / "errors.py").write_text("")
    assert graph(str(tmp_path)).returncode == 0
    (tmp_path / "sgd_influence" / "base" / "layout.py").write_text("def f():\n    from ..core.graphs import x\n")
    r = graph(str(tmp_path))
    assert r.returncode == 1 and "sgd_influence.base.layout -> sgd_influence.core.graphs" in r.stdout, r.stdout
