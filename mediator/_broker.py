"""What the EventEmitter needs from a message broker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from mediator._message import Message

__all__ = ["BatchMessageBroker", "MessageBroker"]


@runtime_checkable
class MessageBroker(Protocol):
    """Publishes envelopes. diator's brokers have this shape already.

    A broker may also offer ``async def send_messages(messages)`` to publish
    a batch in one round trip; the emitter uses it when present.
    """

    async def send_message(self, message: Message) -> None:
        """Publish one envelope to its logical channel."""
        ...


@runtime_checkable
class BatchMessageBroker(MessageBroker, Protocol):
    """A broker that can publish several envelopes in one round trip."""

    async def send_messages(self, messages: Sequence[Message]) -> None:
        """Publish `messages` in order, as one batch where the transport allows."""
        ...
