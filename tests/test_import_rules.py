"""Import rules as a test: the layers, the planner stays pure, and no module of app/ is in an import cycle.

The studio (app.ui) and the HTTP server (app.server) are clients of the runtime: they import only
its protocol and client side; the runtime and the kernels import neither them nor the CLI.

Imports inside functions count (a lazy import still ties two modules together); imports under
``if TYPE_CHECKING:`` do not. A literal ``importlib.import_module("app...")`` would dodge the rule,
so it is refused outright.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"
# What a client of the runtime may import from it: the protocol, the client, and (for the studio,
# which starts the worker) the process client and the launcher's command line.
CLIENT_SIDE = {
    "app.ui": {"app.runtime.protocol", "app.runtime.client", "app.runtime.process_client", "app.runtime.launcher"},
    "app.server": {"app.runtime.protocol", "app.runtime.client"},
}
PLANNER_MUST_NOT_IMPORT = ("app.runtime.backends", "app.runtime.kv", "app.runtime.quantize", "app.runtime.bench",
                           "app.runtime.bench_suites", "app.runtime.calibrate", "app.runtime.services")


def _modules() -> dict[str, Path]:
    found = {}
    for path in APP.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _typing_only(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    return skip


def _imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The app modules ``module`` imports (``from a.b import c`` is a.b.c when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _typing_only(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    targets = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            targets.add(name)
    return targets


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {m: _imported(m, p, known) for m, p in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected groups of two or more modules (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(group)
    return groups


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert _package_face({"app.x", "app.x.y"}) and not _package_face({"app.x.y", "app.z"})


def _package_face(group: set[str]) -> bool:
    """A package whose __init__ re-exports its own submodules, which import siblings through it:
    the usual face of a package, not a tangle between modules."""
    top = min(group)
    return all(m == top or m.startswith(top + ".") for m in group)


def test_no_import_cycle_in_app() -> None:
    tangles = [sorted(group) for group in _cycles(_graph()) if not _package_face(group)]
    assert tangles == []


def test_the_studio_and_the_server_import_only_the_client_side_of_the_runtime() -> None:
    graph = _graph()
    bad = sorted((m, t) for layer, allowed in CLIENT_SIDE.items() for m, targets in graph.items()
                 if m == layer or m.startswith(layer + ".") for t in targets
                 if t.startswith(("app.runtime", "app.kernels")) and t not in allowed)
    assert bad == []
    assert any(m.startswith("app.server.") for m in graph), "app/server moved? update CLIENT_SIDE"


def test_the_runtime_imports_no_client_of_it() -> None:
    graph = _graph()
    bad = sorted((m, t) for m, targets in graph.items() if m.startswith(("app.runtime", "app.kernels"))
                 for t in targets if t.startswith(("app.ui", "app.server", "app.cli")) or t == "app.__main__")
    assert bad == []


def test_the_planner_imports_no_backend_kv_policy_quantizer_or_bench() -> None:
    graph = _graph()
    bad = sorted((m, t) for m, targets in graph.items() if m.startswith("app.runtime.planner")
                 for t in targets if t.startswith(PLANNER_MUST_NOT_IMPORT))
    assert bad == []


def test_no_import_module_with_a_literal_name() -> None:
    bad = []
    for path in APP.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert bad == []
