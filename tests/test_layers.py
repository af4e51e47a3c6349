"""The server's modules import each other in one direction: the runtime's state at the bottom,
the flows, media links and the Unblu side above it, the start-up wiring (``lifecycle``) and
the application on top; the command line above everything. An import circle among them is a
test failure, not a lazy import."""

from __future__ import annotations

import ast
from pathlib import Path

import extmsg

PACKAGE = Path(extmsg.__file__).parent

#: The server's layers; an import circle that touches one of them fails the test.
LAYERS = (
    "extmsg.runtime",
    "extmsg.lifecycle",
    "extmsg.app",
    "extmsg.media",
    "extmsg.messenger",
    "extmsg.plugins",
    "extmsg.hookspecs",
    "extmsg.models",
    "extmsg.flows",
    "extmsg.unblu",
    "extmsg.engine",
    "extmsg.store",
    "extmsg.cli",
    "extmsg.cli_options",
    "extmsg.forget",
)


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["extmsg", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Every extmsg module ``module`` imports at run time (function-level imports included,
    ``if TYPE_CHECKING:`` blocks not), with the packages an import runs on the way."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for child in node.orelse:
                    self.visit(child)
            else:
                self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            source = ".".join([*base, node.module or ""]) if node.level else node.module or ""
            source = source.rstrip(".")
            for alias in node.names:
                names.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source)

        def visit_Import(self, node: ast.Import) -> None:
            names.update(alias.name for alias in node.names)

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8")))
    out = set()
    for name in names:
        parts = name.split(".")
        for i in range(2, len(parts) + 1):
            step = ".".join(parts[:i])
            # A module's own packages are already running when it is imported.
            if step in known and not (module == step or module.startswith(step + ".")):
                out.add(step)
    return out


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in graph[node]:
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return circles


def test_the_server_layers_have_no_import_circle() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    assert "extmsg.flows.accept" in graph["extmsg.lifecycle"]  # the graph sees real imports
    touching = [
        group
        for group in _circles(graph)
        if any(m == layer or m.startswith(layer + ".") for m in group for layer in LAYERS)
    ]
    assert touching == []
