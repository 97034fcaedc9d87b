"""What is being handled right now: the consumed message and the correlation id."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from mediator._codec import Received
from mediator._message import Message

__all__ = ["correlation_scope", "current_correlation_id", "current_message"]

_message: ContextVar[Message | Received | None] = ContextVar(
    "mediator_current_message", default=None
)
"""The consumed message being handled; a consumer may set the `Received`
form, whose `Message` is built only if someone asks for it."""
_correlation: ContextVar[str | None] = ContextVar("mediator_correlation_id", default=None)


def current_message() -> Message | None:
    """The envelope whose event is being handled in this task, or None.

    Consumer-side handlers read headers through it:
    ``tenant = current_message().headers["tenant"]``.
    """
    current = _message.get()
    if isinstance(current, Received):
        return current.message()
    return current


def current_correlation_id() -> str | None:
    """The correlation id in force: set by `correlation_scope`, or carried by
    the consumed message being handled; None outside both."""
    explicit = _correlation.get()
    if explicit is not None:
        return explicit
    message = _message.get()
    return message.headers.get("correlation_id") if message is not None else None


@contextmanager
def correlation_scope(correlation_id: str | None = None) -> Iterator[str]:
    """Give every message published inside the block this correlation id
    (a new one when None), e.g. the id of the HTTP request being served."""
    value = correlation_id or new_correlation_id()
    token = _correlation.set(value)
    try:
        yield value
    finally:
        _correlation.reset(token)


def new_correlation_id() -> str:
    """A random 128-bit id as 32 hex digits (cheaper than formatting a UUID)."""
    return os.urandom(16).hex()


def outgoing_headers() -> dict[str, str]:
    """Headers for a batch published now: the correlation id in force (or a
    new one) and, inside a consumer, the causation id of the parent message."""
    parent = _message.get()
    correlation = current_correlation_id() or new_correlation_id()
    if parent is None:
        return {"correlation_id": correlation}
    return {"correlation_id": correlation, "causation_id": str(parent.message_id)}
