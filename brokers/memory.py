"""The in-memory broker: the embedded default, and a test double for users.

Delivery guarantee: at-most-once, inside one process.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from mediator._message import Message

__all__ = ["DEFAULT_HISTORY", "InMemoryMessageBroker"]

DEFAULT_HISTORY = 10_000
"""How many published messages `InMemoryMessageBroker.messages` keeps."""


class InMemoryMessageBroker:
    """Keeps what is published in memory.

    ```python
    broker = InMemoryMessageBroker()
    emitter = EventEmitter(event_map=events, message_broker=broker)
    ...
    assert broker.messages[-1].message_name == "UserJoined"
    ```

    `messages` holds the most recent envelopes, newest last, bounded by
    `history` (oldest dropped first) so a long-running process never grows.
    """

    def __init__(self, *, channel_prefix: str = "mediator", history: int = DEFAULT_HISTORY) -> None:
        if history < 1:
            raise ValueError(f"history must be at least 1, got {history}")
        self.channel_prefix = channel_prefix
        self.messages: deque[Message] = deque(maxlen=history)

    async def send_message(self, message: Message) -> None:
        """Publish one envelope."""
        self.messages.append(message)

    async def send_messages(self, messages: Sequence[Message]) -> None:
        """Publish a batch, in order."""
        self.messages.extend(messages)

    def clear(self) -> None:
        """Forget every kept message."""
        self.messages.clear()
