"""No import circle in faml_jax/: the graph of its modules' imports (every import, also those
inside functions and under TYPE_CHECKING, read with ``ast``) has no cycle (docs/development.md:
a module imports only modules below it)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "faml_jax"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Each module of the package ``root`` and the package's modules it imports."""
    paths = {module_name(p, root): p for p in root.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                for alias in node.names:  # ``from pkg import module`` imports the module
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base)
        graph[name] = {m for m in found if m in paths and m != name}
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (its modules, the first repeated at the end), or None."""
    done, path, on_path = set(), [], set()

    def visit(node):
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph[node]):
            if nxt in on_path:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in done:
                circle = visit(nxt)
                if circle:
                    return circle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            circle = visit(start)
            if circle:
                return circle
    return None


def test_faml_jax_has_no_import_circle():
    graph = import_graph(PACKAGE)
    assert {"faml_jax.trainer", "faml_jax.loop", "faml_jax.data.prepared"} <= set(graph)  # read it all
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_finder_names_a_circle(tmp_path):
    """The check itself: a package whose modules import each other (one through a lazy import in
    a function, one through ``from . import``) is found, and one without a circle is not."""
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "a.py").write_text("from pkg import b\n")
    (root / "b.py").write_text("def f():\n    from pkg.sub import c\n")
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "c.py").write_text("from .. import a\n")
    assert find_circle(import_graph(root)) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]
    (root / "sub" / "c.py").write_text("import os\n")
    assert find_circle(import_graph(root)) is None
