"""The project's import graph: who imports whom, its floors (levels), and any circles.

Usage: python tools/import_graph.py [ROOT]   (default: this checkout)

Counts imports at the top of a module and inside functions alike (a circle hidden in a
function is still a circle). Prints each module's level (0: imports no project module; else
1 + the highest level it imports) and the strongly connected components with more than one
module (import circles). Pure standard library: runs with any Python 3.
"""
import ast
import os
import sys

PACKAGES = ("sgd_influence", "influence_functions", "datasets", "models")


def modules(root):
    found = {}
    for pkg in PACKAGES:
        for f in sorted(os.listdir(os.path.join(root, pkg))):
            if f.endswith(".py"):
                name = pkg if f == "__init__.py" else f"{pkg}.{f[:-3]}"
                found[name] = os.path.join(root, pkg, f)
    return found


def imports(name, path, known):
    tree = ast.parse(open(path).read())
    pkg = name if name in PACKAGES else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = pkg + ("." + base if base else "")
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
    return 1 if circles else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
