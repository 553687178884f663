"""Layers that point one way: kronk/ never imports Ray, only kronk/cli reaches deployments/ (and only its
launch), no import cycle between the project's modules, and the routing ingress does not load llama.cpp.

Every import statement counts, at module level and inside functions alike (an import inside a function is
only a deferred one), read with ``ast`` from the source: nothing is imported to check it.
"""

from __future__ import annotations

import ast
import functools
import itertools
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("kronk", "deployments")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    line: int
    target: str  # the absolute module imported (for `from a import b`: a.b when that is a project module, else a)
    text: str  # as written, for messages

    def where(self) -> str:
        return f"{self.module.replace('.', '/')}.py:{self.line}: {self.text}"


def module_files() -> dict[str, Path]:
    """Every project module (dotted name -> file)."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = module_files()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _resolve_relative(module: str, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` written in ``module``."""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([name] if name else [])])


def imports_of(module: str) -> list[Import]:
    """Every import in ``module``'s source, wherever it stands (module level, functions, classes, try blocks)."""
    source = MODULES[module].read_text()
    tree = ast.parse(source, filename=str(MODULES[module]))
    lines = source.splitlines()
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        text = " ".join(" ".join(lines[node.lineno - 1 : node.end_lineno]).split())
        text = text if len(text) <= 100 else text[:97] + "..."
        if isinstance(node, ast.Import):
            out += [Import(module, node.lineno, alias.name, text) for alias in node.names]
        else:
            base = _resolve_relative(module, node.level, node.module) if node.level else (node.module or "")
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append(Import(module, node.lineno, sub if sub in MODULES else base, text))
    return sorted(set(out), key=lambda i: (i.line, i.target))


@functools.cache
def all_imports() -> dict[str, list[Import]]:
    return {m: imports_of(m) for m in MODULES}


def _is(target: str, package: str) -> bool:
    return target == package or target.startswith(package + ".")


def test_the_resolver_reads_relative_and_submodule_imports():
    # kronk/cli/server.py: `from kronk.cli import procs` is an edge to the module kronk.cli.procs
    assert any(i.target == "kronk.cli.procs" for i in all_imports()["kronk.cli.server"])
    assert _resolve_relative("kronk.cli.server", 1, "procs") == "kronk.cli.procs"
    assert _resolve_relative("kronk.cli", 1, "main") == "kronk.cli.main"
    assert _resolve_relative("kronk.cli.server", 2, "settings") == "kronk.settings"


def test_nothing_in_kronk_imports_ray():
    bad = [i.where() for m, imps in all_imports().items() if _is(m, "kronk") for i in imps if _is(i.target, "ray")]
    assert not bad, "kronk/ must not import Ray (it belongs in deployments/):\n" + "\n".join(bad)


def test_only_the_cli_reaches_deployments_and_only_through_launch():
    bad = []
    for m, imps in all_imports().items():
        if not _is(m, "kronk"):
            continue
        for i in imps:
            if not _is(i.target, "deployments"):
                continue
            if not _is(m, "kronk.cli"):
                bad.append(f"{i.where()}  (only kronk/cli may import deployments)")
            elif i.target != "deployments.launch":
                bad.append(f"{i.where()}  (kronk/cli may import only deployments.launch)")
    assert not bad, "\n".join(bad)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    out.append(sorted(comp))
    return out


def a_cycle(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """One cycle through the component's first module, staying inside the component (shortest, by BFS)."""
    inside, start = set(comp), comp[0]
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & inside):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [*reversed(path), start]
                if nxt not in prev:
                    prev[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    return comp


def test_strongly_connected_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    comps = strongly_connected(graph)
    assert sorted(comps) == [["a", "b", "c"], ["d"], ["e"]]
    assert a_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_no_import_cycles_between_project_modules():
    graph = {m: {i.target for i in imps if i.target in MODULES} for m, imps in all_imports().items()}
    lines = {(i.module, i.target): i.where() for imps in all_imports().values() for i in imps}
    cycles = []
    for comp in strongly_connected(graph):
        if len(comp) == 1 and comp[0] not in graph[comp[0]]:
            continue
        cycle = a_cycle(graph, comp)
        edges = "\n".join(f"    {lines[(a, b)]}" for a, b in itertools.pairwise(cycle))
        cycles.append(f"{' -> '.join(cycle)} (component: {', '.join(comp)})\n{edges}")
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_routing_ingress_does_not_load_llama_cpp():
    probe = textwrap.dedent("""
        import sys, traceback

        class Watch:
            stack = None

            def find_spec(self, name, path=None, target=None):
                if name == "llama_cpp" and Watch.stack is None:
                    Watch.stack = "".join(traceback.format_stack())
                return None

        sys.meta_path.insert(0, Watch())
        import deployments.ingress
        print("LOADED" if "llama_cpp" in sys.modules else "CLEAN")
        print(Watch.stack or "")
    """)
    p = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    first, _, stack = p.stdout.partition("\n")
    frames = stack.split("  File ")  # traceback.format_stack: '  File "path", line N, in f\n    code\n'
    ours = "".join(f for f in frames if f.startswith(f'"{ROOT}/') and not f.startswith(f'"{ROOT}/.venv/'))
    assert first == "CLEAN", f"importing deployments.ingress loads llama_cpp, by way of:\n{ours}"
