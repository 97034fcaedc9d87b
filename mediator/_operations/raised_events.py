"""Which events a handler raises, found by reading its source: what the
AsyncAPI document and the routing diagram of a service show (docs/diagrams.md,
"How events are found")."""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any

from mediator._events import Event
from mediator._requests import Request

__all__ = ["events_raised_by", "requests_sent_by"]


def events_raised_by(handler: object) -> tuple[type[Event], ...]:
    """The event classes a handler (class or function) constructs in its code,
    in the order they appear; blind to events built elsewhere (declare those
    with `Service.publishes`)."""
    return tuple(_built_by(handler, Event))


def requests_sent_by(handler: object) -> tuple[type[Request[Any]], ...]:
    """The request classes a handler constructs in its code (the commands a
    process manager's handler sends), in the order they appear."""
    return tuple(_built_by(handler, Request))


def _built_by(handler: object, base: type[Any]) -> list[Any]:
    function = getattr(handler, "handle", handler)
    function = inspect.unwrap(function)  # type: ignore[arg-type]
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        names = inspect.getclosurevars(function)
    except (OSError, TypeError, SyntaxError):
        return []
    scope = {**names.builtins, **names.globals, **names.nonlocals}
    found: dict[type[Any], None] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
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
