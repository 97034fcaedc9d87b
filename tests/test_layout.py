"""The tree keeps the shape the contributor page draws (docs/contributing.md):
no import circles, brokers on the public transport surface only, the core
free of brokers and of the operations layer, and modules of a readable size."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent

LARGE_MODULES = {
    # Module: why it is over 500 lines.
    "mediator._operations.service": "the Service class is one object whose declarations, "
    "readiness, stats and start/stop share the same private state; a cut would be mixins",
}
"""The modules allowed over `MAX_LINES`, each with its reason."""

MAX_LINES = 500

PUBLIC = {"mediator", "mediator.transport"}
"""What a broker may import from `mediator`."""

OPERATIONS = ("mediator._operations", "mediator.outbox")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    sys.path.insert(0, str(ROOT))
    return grimp.build_graph(
        "mediator", "brokers", exclude_type_checking_imports=True, cache_dir=None
    )


def _imports(graph: grimp.ImportGraph) -> list[tuple[str, str]]:
    return sorted(
        (module, imported)
        for module in graph.modules
        for imported in graph.find_modules_directly_imported_by(module)
    )


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_back_in_a_circle(graph: grimp.ImportGraph) -> None:
    assert _cycles(graph) == []


def test_brokers_import_only_the_public_modules_of_mediator(graph: grimp.ImportGraph) -> None:
    private = [
        (module, imported)
        for module, imported in _imports(graph)
        if module.startswith("brokers") and imported.startswith("mediator")
        if imported not in PUBLIC
    ]
    assert private == []


def test_the_core_imports_no_broker_and_nothing_of_the_operations_layer(
    graph: grimp.ImportGraph,
) -> None:
    def core(module: str) -> bool:
        return module.startswith("mediator.") and not module.startswith(
            (*OPERATIONS, "mediator.__main__")
        )

    upward = [
        (module, imported)
        for module, imported in _imports(graph)
        if core(module) and imported.startswith(("brokers", *OPERATIONS))
    ]
    assert upward == []


def test_modules_stay_readable_in_size() -> None:
    sizes = {}
    for package in ("mediator", "brokers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            sizes[name.removesuffix(".__init__")] = len(path.read_text().splitlines())
    over = {name: lines for name, lines in sizes.items() if lines > MAX_LINES}
    assert set(over) <= set(LARGE_MODULES), (
        f"over {MAX_LINES} lines without a stated reason (tests/test_layout.py): "
        + ", ".join(f"{name} {lines}" for name, lines in sorted(over.items()))
    )
    assert set(LARGE_MODULES) <= set(sizes), "a reason names a module that is gone"


def test_the_drawn_import_graph_is_the_current_one() -> None:
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts/import_graph.py")
    assert spec is not None
    assert spec.loader is not None
    drawing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(drawing)
    graph = drawing.build()
    nodes = {drawing.node_of(module) for module in graph.modules}
    committed = (ROOT / "docs" / "images" / "import-graph.dot").read_text()
    assert drawing.dot(nodes, drawing.edges(graph)) == committed, (
        "docs/images/import-graph.dot is stale: run python scripts/import_graph.py "
        "(it needs graphviz-pure) and commit the .dot and the .png"
    )
