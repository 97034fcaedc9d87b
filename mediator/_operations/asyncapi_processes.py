"""What the AsyncAPI document says of process managers (docs/asyncapi.md,
"Process managers"): the receive operations that reach one carry
``x-process-managers``, and the document's ``x-process-managers`` describes
each, with the events it consumes and the commands it sends. Commands go
through the mediator, in the process, not on a channel: they are named, not
given channels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mediator._event_map import EventMap
from mediator._events import Event, event_name
from mediator._operations.raised_events import ProcessHandler

__all__ = ["annotate_operation", "describe_process_managers"]


def annotate_operation(
    operation: dict[str, Any],
    handlers: Sequence[ProcessHandler],
    event_type: type[Event],
    event_map: EventMap,
) -> bool:
    """Name in `operation` (a receive operation of `event_type` into
    `event_map`) the process managers it reaches; whether there is one."""
    reached = [h for h in handlers if h.event is event_type and h.event_map is event_map]
    if not reached:
        return False
    operation["x-process-managers"] = list(dict.fromkeys(h.manager.name for h in reached))
    sentences = []
    for handler in reached:
        correlated = f"an instance per `{handler.key}`" if handler.key else "an instance per key"
        sentence = (
            f"Process manager `{handler.manager.name}` handles it ({correlated}"
            f"{'; starts one' if handler.starts else ''})"
        )
        if handler.sends:
            sentence += ", and sends " + ", ".join(r.__name__ for r in handler.sends)
        sentences.append(sentence + ".")
    operation["description"] = " ".join([operation.get("description", ""), *sentences]).strip()
    return True


def describe_process_managers(
    handlers: Sequence[ProcessHandler],
    operations: Mapping[tuple[int, type[Event]], list[str]],
    channel_ids: Mapping[type[Event], str],
) -> dict[str, Any]:
    """The document's ``x-process-managers``: per process manager, its state
    type, the events it consumes (each with its key, whether it starts an
    instance, the receive operations that bring it, and what its handler
    sends, raises and asks a timeout for) and every command it sends.
    `operations` are the receive operation ids per (event map id, event)."""
    described: dict[str, Any] = {}
    for handler in handlers:
        manager = handler.manager
        entry = described.get(manager.name)
        if entry is None:
            entry = described[manager.name] = {}
            doc = (type(manager).__doc__ or "").strip()
            if doc:
                entry["summary"] = doc.splitlines()[0]
            state = getattr(type(manager), "state_type", None)
            entry["state"] = None if state is None else state.__qualname__
            entry["consumes"] = []
            entry["sends"] = []
        cid = channel_ids.get(handler.event)
        entry["consumes"].append(
            {
                "event": event_name(handler.event),
                "message": None if cid is None else {"$ref": f"#/components/messages/{cid}"},
                "handler": handler.handler,
                "key": handler.key,
                "starts": handler.starts,
                "operations": [
                    {"$ref": f"#/operations/{operation}"}
                    for operation in operations.get((id(handler.event_map), handler.event), ())
                ],
                "sends": [r.__name__ for r in handler.sends],
                "raises": [event_name(e) for e in handler.raises],
                "timeouts": [event_name(e) for e in handler.timeouts],
            }
        )
        entry["sends"] = list(dict.fromkeys([*entry["sends"], *entry["consumes"][-1]["sends"]]))
    return described
