"""The shape of memvir/: no import circle among its modules (function-level imports included), no function over 80
lines, no file of the results layer over 400 lines. Read with ast from the source; nothing is imported."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "memvir"
RESULTS_LAYER = [PACKAGE / "profile.py", PACKAGE / "pipeline.py", *sorted((PACKAGE / "report").glob("*.py"))]


def import_graph(package):
    """{module: {memvir modules it imports anywhere in its source}} of a package folder."""
    def name_of(path):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name_of(p): p for p in package.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else (node.module or "")
                for alias in node.names:  # `from . import pml` imports a module; `from .x import f` imports x
                    deps.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def cycles(graph):
    """Every import circle found by a depth-first search, each as [a, b, ..., a]."""
    found, done = [], set()

    def visit(node, stack):
        for dep in sorted(graph[node]):
            if dep in stack:
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in done:
                visit(dep, stack + [dep])
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            visit(node, [node])
    return found


def test_no_import_circle():
    circles = cycles(import_graph(PACKAGE))
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_the_graph_finds_a_circle_and_a_function_level_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from .sub.c import g\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from .. import a\n")
    graph = import_graph(pkg)
    assert graph["pkg.b"] == {"pkg.sub.c"} and graph["pkg.sub.c"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]


def long_functions(path, limit=80):
    return [f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= limit]


def test_no_function_over_80_lines():
    long = [f"{p.parent.name}/{f}" for p in sorted(PACKAGE.rglob("*.py")) for f in long_functions(p)]
    assert not long, "\n".join(long)


def test_long_functions_are_found(tmp_path):
    path = tmp_path / "long.py"
    path.write_text("def f():\n" + "    x = 1\n" * 79 + "\n\ndef g():\n" + "    x = 1\n" * 80)
    assert long_functions(path) == ["long.py:83 g (81 lines)"]  # f has 80 lines: allowed


@pytest.mark.parametrize("path", RESULTS_LAYER, ids=lambda p: p.name)
def test_results_layer_files_stay_short(path):
    assert len(path.read_text().splitlines()) <= 400, f"{path.name}: one job per file (split it)"


# ---- floors: the algorithm and the flag list stand on the ground, the results layer beside the training stack ----

LOWER_FLOORS = ["memvir.config", "memvir.files", "memvir.losses", "memvir.memory", "memvir.metrics"]
TRAINING = {"memvir.train", "memvir.experiment", "memvir.data.samplers"}


def above_first_floor(graph, modules):
    """{module: the memvir modules it imports that are not on the ground floor} for each of `modules` standing
    higher than one floor above the ground (the ground floor: modules that import no memvir module)."""
    ground = {m for m, deps in graph.items() if not deps}
    return {m: sorted(graph[m] - ground) for m in modules if graph[m] - ground}


def reachable(graph, start):
    """Every module `start` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_the_lower_floors_stand_on_the_ground():
    high = above_first_floor(import_graph(PACKAGE), LOWER_FLOORS)
    assert not high, f"higher than one floor above the ground: {high}"


def test_the_results_layer_imports_no_training_code():
    graph = import_graph(PACKAGE)
    found = {m: sorted(reachable(graph, m) & TRAINING) for m in graph if m.startswith("memvir.report")}
    assert not {m: t for m, t in found.items() if t}, found


def test_floors_and_reach_are_found(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "ground.py").write_text("import os\n")
    (pkg / "first.py").write_text("from . import ground\n")
    (pkg / "second.py").write_text("def f():\n    from .first import g\n")  # a function-level import counts
    graph = import_graph(pkg)
    assert above_first_floor(graph, ["pkg.ground", "pkg.first", "pkg.second"]) == {"pkg.second": ["pkg.first"]}
    assert reachable(graph, "pkg.second") == {"pkg.first", "pkg.ground"}
