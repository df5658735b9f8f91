"""The project's import graph: who imports whom, its floors (levels), and any circles; and the
layers of `sgd_influence`, each a subpackage that imports only the ones below it.

Usage: python tools/import_graph.py [ROOT]   (default: this checkout)

Counts imports at the top of a module and inside functions alike (a circle hidden in a
function is still a circle). Prints each module's level (0: imports no project module; else
1 + the highest level it imports), the strongly connected components with more than one
module (import circles), each subpackage's floor in the graph of subpackages, and every import
that goes from a layer to one above it in LAYERS (exit 1 if any, or any circle). Pure standard
library: runs with any Python 3.
"""
import ast
import os
import sys

PACKAGES = ("sgd_influence", "influence_functions", "datasets", "models")
# sgd_influence's layers, bottom first: a module of a layer imports only its own layer and those
# before it. The package's top-level modules are the commands (`python -m sgd_influence.analyze`,
# `... .cluster`, `... .rounding`): above every layer.
LAYERS = ("base", "core", "config", "analysis", "pipeline", "checks")


def modules(root):
    """{dotted name: path} of every module of PACKAGES, subpackages included."""
    found = {}
    for pkg in PACKAGES:
        for d, dirs, files in os.walk(os.path.join(root, pkg)):
            dirs[:] = sorted(x for x in dirs if not x.startswith((".", "__")))
            dotted = os.path.relpath(d, root).replace(os.sep, ".")
            for f in sorted(files):
                if f.endswith(".py"):
                    found[dotted if f == "__init__.py" else f"{dotted}.{f[:-3]}"] = os.path.join(d, f)
    return found


def imports(name, path, known):
    tree = ast.parse(open(path).read())
    pkg = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[:len(pkg.split(".")) - node.level + 1]) + ("." + base if base else "")
            for a in node.names:
                full = f"{base}.{a.name}"
                out.add(full if full in known else base)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in known and m != name}


def sccs(graph):
    index, low, stack, on, result, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            result.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return result


def main(root):
    known = modules(root)
    graph = {m: imports(m, p, known) for m, p in known.items()}
    comps = sccs(graph)
    where = {m: i for i, c in enumerate(comps) for m in c}
    level = {}
    for c in comps:  # Tarjan yields components in reverse topological order: dependencies first
        lv = max((level[w] + 1 for m in c for w in graph[m] if where[w] != where[m]), default=0)
        for m in c:
            level[m] = lv
    for lv in sorted(set(level.values())):
        print(f"floor {lv}: " + " ".join(sorted(m for m in level if level[m] == lv)))
    circles = [c for c in comps if len(c) > 1]
    print("circles: " + ("; ".join(" <-> ".join(c) for c in circles) if circles else "none"))
    upward = layer_report(graph)
    return 1 if circles or upward else 0


def layer_of(module):
    """The sgd_influence layer a module belongs to (None: another package or a command)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "sgd_influence" and len(parts) > 2 and parts[1] in LAYERS else None


def layer_report(graph):
    """Print each layer's floor among the layers and the imports that go upwards; return those."""
    uses = {lay: set() for lay in LAYERS}
    upward = []
    for m, deps in graph.items():
        lm = layer_of(m)
        for w in deps:
            lw = layer_of(w)
            if lm and lw and lw != lm:
                uses[lm].add(lw)
                if LAYERS.index(lw) > LAYERS.index(lm):
                    upward.append(f"{m} -> {w}")
    floor = {}
    for lay in LAYERS:  # bottom first, so every layer a layer may use already has its floor
        floor[lay] = max((floor.get(w, 0) + 1 for w in uses[lay]), default=0)
    for lay in LAYERS:
        print(f"layer {lay}: floor {floor[lay]}, uses {' '.join(sorted(uses[lay], key=LAYERS.index)) or '-'}")
    print("upward imports: " + ("; ".join(sorted(upward)) if upward else "none"))
    return upward


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
