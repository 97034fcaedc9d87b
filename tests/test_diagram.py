"""The Mermaid diagram of the example shop: requests to handlers, the events
they raise, channels, the subscriptions that read them and their handlers."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

import brokers
from mediator import DomainEvent, EventMap, Request, RequestHandler, RequestMap, Service
from mediator._operations.cli import main
from mediator._operations.diagram import mermaid_diagram

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NODE = re.compile(r'^    (\w+)(\[/|\(\[|\[\(|\{\{|\[)"(.*)"(/\]|\]\)|\)\]|\}\}|\])$')
EDGE = re.compile(r"^    (\w+) (?:-- (.+) )?--> (\w+)$")


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Service:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.delenv(brokers.BROKER_URL_VARIABLE, raising=False)
    for name in ("service", "shop"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import service

    app: Service = service.app
    return app


def parse(chart: str) -> tuple[dict[str, tuple[str, str]], set[tuple[str, str | None, str]]]:
    """Nodes by id as (shape, label), and edges as (source label, edge label, target label)."""
    lines = chart.splitlines()
    assert lines[0] == "flowchart LR"
    nodes: dict[str, tuple[str, str]] = {}
    raw_edges: list[tuple[str, str | None, str]] = []
    for line in lines[1:]:
        node, edge = NODE.match(line), EDGE.match(line)
        assert node or edge, f"not a node or an edge: {line!r}"
        if node:
            nodes[node[1]] = (node[2], node[3])
        elif edge:
            raw_edges.append((edge[1], edge[2], edge[3]))
    edges = {(nodes[a][1], label, nodes[b][1]) for a, label, b in raw_edges}
    return nodes, edges


def test_the_shop_diagram_draws_every_route(app: Service) -> None:
    nodes, edges = parse(mermaid_diagram(app))
    shapes = {label: shape for shape, label in nodes.values()}
    assert shapes["PlaceOrder"] == "[/"  # a request
    assert shapes["PlaceOrderHandler"] == "["  # a handler
    assert shapes["OrderPlaced"] == "(["  # an event
    assert shapes["shop:notification_event:OrderPlaced"] == "[("  # a channel
    assert shapes["shop:notification_event:Order* group billing"] == "{{"  # a subscription
    subscription = "shop:notification_event:Order* group billing"
    assert edges >= {
        ("PlaceOrder", None, "PlaceOrderHandler"),
        ("PlaceOrderHandler", "raises", "OrderPlaced"),
        ("PlaceOrderHandler", "raises", "NewsletterSigned"),
        ("CancelOrder", None, "CancelOrderHandler"),
        ("CancelOrderHandler", "raises", "OrderCancelled"),
        ("OrderPlaced", None, "shop:notification_event:OrderPlaced"),
        ("OrderCancelled", None, "shop:notification_event:OrderCancelled"),
        ("NewsletterSigned", None, "shop:notification_event:NewsletterSigned"),
        ("shop:notification_event:OrderPlaced", None, subscription),
        ("shop:notification_event:OrderCancelled", None, subscription),
        (subscription, "OrderPlaced", "bill"),
        (subscription, "OrderCancelled", "refund"),
        ("ServiceStarted", None, "warm_up"),
        ("ServiceStopping", None, "flush"),
    }
    # The newsletter's channel has no subscriber in this service.
    assert not any(a == "shop:notification_event:NewsletterSigned" for a, _, _ in edges)
    # Every event bound in the service's map is on the diagram.
    for name in app.event_map.event_classes():
        assert name in shapes


def test_domain_events_go_to_their_local_handlers_with_follow_ups() -> None:
    class Opened(DomainEvent):
        pass

    class Audited(DomainEvent):
        pass

    class Open(Request[None]):
        pass

    class OpenHandler(RequestHandler[Open, None]):
        async def handle(self, request: Open) -> None:
            self.events.append(Opened())

    events = EventMap()

    @events.bind(Opened)
    async def audit(event: Opened) -> list[Audited]:
        return [Audited()]

    @events.bind(Audited)
    async def store(event: Audited) -> None:
        return None

    requests = RequestMap()
    requests.bind(Open, OpenHandler)
    _, edges = parse(mermaid_diagram(Service(request_map=requests, event_map=events)))
    assert edges == {
        ("Open", None, "OpenHandler"),
        ("OpenHandler", "raises", "Opened"),
        ("Opened", None, "audit"),
        ("audit", "raises", "Audited"),
        ("Audited", None, "store"),
    }


def test_labels_cannot_break_the_chart() -> None:
    class Quoted(Request[None]):
        pass

    requests = RequestMap()

    class QuotedHandler:
        async def handle(self, request: Any) -> None:
            return None

    QuotedHandler.__qualname__ = 'Say "hi"'
    requests.bind(Quoted, QuotedHandler)
    chart = mermaid_diagram(Service(request_map=requests))
    assert '"Say #quot;hi#quot;"' in chart


def test_the_command_prints_the_diagram(
    app: Service, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(EXAMPLES)
    assert main(["diagram", "service:app"]) == 0
    assert capsys.readouterr().out == mermaid_diagram(app)


def test_the_docs_show_the_diagram_the_command_prints_today(app: Service) -> None:
    page = (EXAMPLES.parent / "docs" / "diagrams.md").read_text()
    shown = page.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert shown == mermaid_diagram(app)
