"""Which events a handler raises, found by reading its source: what the
AsyncAPI document and the routing diagram of a service show (docs/diagrams.md,
"How events are found"); and the process managers bound in event maps, with
what each of their handlers consumes, sends, raises and asks a timeout for."""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Iterable
from typing import Any

import attrs

from mediator._event_map import EventMap
from mediator._events import Event
from mediator._requests import Request

__all__ = [
    "ProcessHandler",
    "events_raised_by",
    "process_handlers",
    "requests_sent_by",
    "timeouts_requested_by",
]

PROCESS_HANDLER = "__mediator_process_handler__"
"""Set by `ProcessManager.bind` on the handlers it binds (mediator.sagas)."""


def events_raised_by(handler: object) -> tuple[type[Event], ...]:
    """The event classes a handler (class or function) constructs in its code,
    in the order they appear; blind to events built elsewhere (declare those
    with `Service.publishes`). An event built as the argument of a process's
    ``request_timeout(...)`` is not raised: it comes back to the process."""
    return tuple(_built_by(handler, Event))


def timeouts_requested_by(handler: object) -> tuple[type[Event], ...]:
    """The event classes a process manager's handler builds as the argument
    of ``process.request_timeout(...)``: its timeouts."""
    return tuple(_built_by(handler, Event, timeouts=True))


def requests_sent_by(handler: object) -> tuple[type[Request[Any]], ...]:
    """The request classes a handler constructs in its code (the commands a
    process manager's handler sends), in the order they appear."""
    return tuple(_built_by(handler, Request))


def _built_by(handler: object, base: type[Any], *, timeouts: bool = False) -> list[Any]:
    function = getattr(handler, "handle", handler)
    function = inspect.unwrap(function)  # type: ignore[arg-type]
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        names = inspect.getclosurevars(function)
    except (OSError, TypeError, SyntaxError):
        return []
    scope = {**names.builtins, **names.globals, **names.nonlocals}
    delayed = {
        id(argument)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "request_timeout"
        for argument in (*node.args, *(keyword.value for keyword in node.keywords))
    }
    found: dict[type[Any], None] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or (id(node) in delayed) is not timeouts:
            continue
        target = _resolve(node.func, scope)
        if isinstance(target, type) and issubclass(target, base):
            found[target] = None
    return list(found)


def _resolve(node: ast.expr, scope: dict[str, Any]) -> Any:
    # `OrderPlaced(...)` or `events.OrderPlaced(...)`; anything else is not followed.
    if isinstance(node, ast.Name):
        return scope.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, scope)
        return getattr(owner, node.attr, None) if inspect.ismodule(owner) else None
    return None


@attrs.frozen(kw_only=True)
class ProcessHandler:
    """One handler of a process manager, as bound in an event map."""

    manager: Any
    """The `ProcessManager`."""
    event: type[Event]
    """The event it handles."""
    key: str | None
    """The event's field that is the key (None: a function of the event)."""
    starts: bool
    handler: str
    """The method's name."""
    event_map: EventMap
    sends: tuple[type[Request[Any]], ...]
    raises: tuple[type[Event], ...]
    timeouts: tuple[type[Event], ...]


def process_handlers(event_maps: Iterable[EventMap]) -> list[ProcessHandler]:
    """The handlers of process managers bound in `event_maps`, in bind order."""
    found = []
    for event_map in event_maps:
        for binding in event_map.bindings:
            bound = getattr(binding.handler, PROCESS_HANDLER, None)
            if bound is None:
                continue
            manager, marked = bound
            found.append(
                ProcessHandler(
                    manager=manager,
                    event=marked.event,
                    key=marked.key_field,
                    starts=marked.starts,
                    handler=inspect.unwrap(binding.handler).__name__,
                    event_map=event_map,
                    sends=requests_sent_by(binding.handler),
                    raises=events_raised_by(binding.handler),
                    timeouts=timeouts_requested_by(binding.handler),
                )
            )
    return found
