"""Draw the import graph of `mediator` and `brokers` for the contributor page.

    python scripts/import_graph.py          # writes docs/images/import-graph.{dot,png}
    python scripts/import_graph.py --check  # exits 1 when the committed .dot is stale

The graph is read by grimp (runtime imports only: those under
``if TYPE_CHECKING:`` are left out) and drawn by the ``dot`` of
``graphviz-pure`` (``pip install graphviz-pure``), or Graphviz's own ``dot``.
A node is a module of the core, or a package as a whole where the tree groups
modules (``mediator.outbox``, ``mediator._operations``, each broker package).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "images" / "import-graph"

GROUPS = ("mediator.outbox", "mediator._operations")
"""Packages drawn as one node; every `brokers.<transport>` package is one too."""

CLUSTERS = {
    "mediator (core)": "#eef4ff",
    "mediator: operations and outbox": "#fff4e0",
    "brokers": "#eaf7ea",
}


def build() -> grimp.ImportGraph:
    sys.path.insert(0, str(ROOT))
    return grimp.build_graph(
        "mediator", "brokers", exclude_type_checking_imports=True, cache_dir=None
    )


def node_of(module: str) -> str:
    """The node `module` is drawn in."""
    for group in GROUPS:
        if module == group or module.startswith(group + "."):
            return group
    parts = module.split(".")
    if parts[0] == "brokers" and len(parts) > 2:
        return ".".join(parts[:2])
    return module


def cluster_of(node: str) -> str:
    if node.startswith("brokers"):
        return "brokers"
    if node in GROUPS or node.startswith("mediator._operations"):
        return "mediator: operations and outbox"
    return "mediator (core)"


def edges(graph: grimp.ImportGraph) -> set[tuple[str, str]]:
    """Node-to-node arrows, without a node's arrows to itself."""
    drawn: set[tuple[str, str]] = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            a, b = node_of(module), node_of(imported)
            if a != b:
                drawn.add((a, b))
    return drawn


def dot(nodes: Iterable[str], arrows: Iterable[tuple[str, str]]) -> str:
    lines = [
        "digraph imports {",
        "  rankdir=LR;",
        '  graph [fontname="Helvetica", fontsize=11, nodesep=0.15, ranksep=0.9];',
        '  node [shape=box, style="rounded,filled", fillcolor=white, fontname="Helvetica", '
        "fontsize=10];",
        '  edge [color="#00000055", arrowsize=0.5];',
    ]
    by_cluster: dict[str, list[str]] = {name: [] for name in CLUSTERS}
    for node in sorted(nodes):
        by_cluster[cluster_of(node)].append(node)
    for index, (name, colour) in enumerate(CLUSTERS.items()):
        lines.append(f"  subgraph cluster_{index} {{")
        lines.append(f'    label="{name}"; style=filled; color="{colour}";')
        lines += [f'    "{node}";' for node in by_cluster[name]]
        lines.append("  }")
    lines += [f'  "{a}" -> "{b}";' for a, b in sorted(arrows)]
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(source: str) -> None:
    here = Path(sys.executable).parent  # the virtualenv's bin, when not on PATH
    program = (
        shutil.which("graphviz-pure", path=str(here))
        or shutil.which("graphviz-pure")
        or shutil.which("dot")
    )
    if program is None:
        sys.exit("no dot program: pip install graphviz-pure (or install Graphviz)")
    subprocess.run(
        [program, "-Tpng", "-Gdpi=110", "-o", str(OUT.with_suffix(".png"))],
        input=source.encode(),
        check=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the .dot file")
    args = parser.parse_args()
    graph = build()
    nodes = {node_of(module) for module in graph.modules}
    source = dot(nodes, edges(graph))
    path = OUT.with_suffix(".dot")
    if args.check:
        if not path.exists() or path.read_text() != source:
            sys.exit(f"{path.relative_to(ROOT)} is stale: run python scripts/import_graph.py")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    render(source)
    print(f"wrote {path.relative_to(ROOT)} and its .png: {len(nodes)} nodes")


if __name__ == "__main__":
    main()
