"""One job per module: no module in lab/ over 400 lines, and no import cycle in lab/ (function-level imports too).

The import graph is read from the source (ast), so the test sees the lazy imports inside functions that an
import at run time would hide.
"""
from __future__ import annotations

import ast
from pathlib import Path

LAB = Path(__file__).resolve().parents[1] / "lab"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    out = {}
    for f in LAB.rglob("*.py"):
        parts = f.relative_to(LAB.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(name: str, f: Path, mods: dict[str, Path]) -> set[str]:
    """Modules of lab/ that `name` imports anywhere in its source (module or function level), except under
    `if TYPE_CHECKING:` (annotations only: never run)."""
    package = name if f.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    tree = ast.parse(f.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"
                   for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                target = a.name
                while target and target not in mods:  # `import lab.x.y` runs lab.x.y
                    target = target.rpartition(".")[0]
                out.add(target)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                head = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(head + ([base] if base else []))
            if base not in mods:
                continue  # not lab/ (or a module that does not exist: the import itself fails elsewhere)
            subs = {f"{base}.{a.name}" for a in node.names} & set(mods)
            out |= subs if len(subs) == len(node.names) else subs | {base}
    out.discard("")
    out.discard(name)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, found, counter = {}, {}, set(), [], [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_module_in_lab_is_over_400_lines():
    sizes = {str(f.relative_to(LAB.parent)): len(f.read_text().splitlines()) for f in LAB.rglob("*.py")}
    assert {f: n for f, n in sizes.items() if n > MAX_LINES} == {}


def test_lab_has_no_import_cycle():
    mods = modules()
    graph = {n: imports(n, f, mods) for n, f in mods.items()}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
