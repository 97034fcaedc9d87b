"""A Mermaid flowchart of what a Service routes: requests to handlers, the
events they raise to local handlers or broker channels, channels to consumers."""

from __future__ import annotations

from typing import Any

from mediator._event_map import EventBinding
from mediator._events import Event, event_name, message_type_of
from mediator._operations.raised_events import events_raised_by, requests_sent_by
from mediator._operations.service import Service
from mediator._patterns import GlobPattern

__all__ = ["mermaid_diagram"]


class _Chart:
    def __init__(self) -> None:
        self.ids: dict[tuple[str, Any], str] = {}
        self.nodes: list[str] = []
        self.edges: list[str] = []
        self._seen_edges: set[str] = set()

    def node(self, kind: str, key: Any, label: str, shape: str) -> str:
        found = self.ids.get((kind, key))
        if found is None:
            found = self.ids[(kind, key)] = f"{kind}{len(self.ids) + 1}"
            opening, closing = shape.split("|")
            text = label.replace('"', "#quot;")
            self.nodes.append(f'    {found}{opening}"{text}"{closing}')
        return found

    def edge(self, source: str, target: str, label: str | None = None) -> None:
        arrow = f" -- {label} --> " if label else " --> "
        line = f"    {source}{arrow}{target}"
        if line not in self._seen_edges:
            self._seen_edges.add(line)
            self.edges.append(line)


def _short(handler: object) -> str:
    name = getattr(handler, "__qualname__", None) or type(handler).__qualname__
    return str(name).rsplit(".<locals>.", 1)[-1]


def mermaid_diagram(service: Service) -> str:
    """A Mermaid ``flowchart LR`` of `service`'s routing, without the fence:
    requests to handlers, the events they raise to local handlers or logical
    channels, channels to the subscriptions that match them (docs/diagrams.md)."""
    chart = _Chart()
    broker = service.broker
    prefix = broker.channel_prefix if broker is not None else "{prefix}"
    pending: list[type[Event]] = []

    def event_node(event_type: type[Event]) -> str:
        if ("event", event_type) not in chart.ids:
            pending.append(event_type)
        return chart.node("event", event_type, event_name(event_type), "([|])")

    def handler_edge(source: str, binding_or_handler: object, label: str | None = None) -> None:
        handler = getattr(binding_or_handler, "handler", binding_or_handler)
        node = chart.node("handler", handler, _short(handler), "[|]")
        chart.edge(source, node, label)
        for raised in events_raised_by(handler):
            chart.edge(node, event_node(raised), "raises")
        for sent in requests_sent_by(handler):
            chart.edge(node, chart.node("request", sent, _short(sent), "[/|/]"), "sends")

    for request_type, handler_type in service.request_map.items():
        request = chart.node("request", request_type, _short(request_type), "[/|/]")
        handler_edge(request, handler_type)
    for declared in service.published_events():
        event_node(declared)
    for binding in service.event_map.bindings:
        # Events only a local handler reacts to (lifecycle events among them).
        if isinstance(binding.target, type) and message_type_of(binding.target) is None:
            event_node(binding.target)

    subscriptions = [(spec, GlobPattern(spec.pattern)) for spec in service.subscriptions]
    received = {
        event_type
        for spec, _ in subscriptions
        for event_type in spec.event_map.event_classes().values()
    }
    for event_type in sorted(received, key=event_name):
        event_node(event_type)

    index = 0
    while index < len(pending):
        event_type = pending[index]
        index += 1
        node = chart.ids[("event", event_type)]
        kind = message_type_of(event_type)
        if kind is None:
            for binding in service.event_map.handlers_for(event_type):
                handler_edge(node, binding)
            continue
        logical = f"{prefix}:{kind}:{event_name(event_type)}"
        channel = chart.node("channel", logical, logical, "[(|)]")
        chart.edge(node, channel, "outbox, relay" if service.outbox is not None else None)
        for spec, glob in subscriptions:
            if not glob.matches(logical):
                continue
            label = spec.pattern + (f" group {spec.group}" if spec.group else "")
            label += " inbox" if spec.inbox else ""
            subscription = chart.node("subscription", (spec.pattern, spec.group), label, "{{|}}")
            chart.edge(channel, subscription)
            bindings: tuple[EventBinding, ...] = spec.event_map.handlers_for(event_type)
            for binding in bindings:
                handler_edge(subscription, binding, event_name(event_type))
    return "\n".join(["flowchart LR", *chart.nodes, *chart.edges]) + "\n"
