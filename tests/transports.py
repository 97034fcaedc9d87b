"""One adapter per transport, so consumer tests run one body against each."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Protocol

from brokers.memory import InMemoryMessageBroker
from mediator import SubscribingBroker


class Transport(Protocol):
    """What a consumer test needs from a transport besides the broker itself."""

    name: str
    broker: SubscribingBroker

    def new_broker(self) -> SubscribingBroker:
        """Another broker on the same transport (a second service)."""
        ...

    async def publish_raw(self, channel: str, data: bytes) -> None:
        """Put bytes on a channel as they are, bypassing the envelope codec."""
        ...

    async def dead_letter_reasons(self) -> list[str]:
        """The reasons of what was dead-lettered, oldest first."""
        ...


class MemoryTransport:
    name = "memory"

    def __init__(self, prefix: str, buffer_size: int = 1000) -> None:
        self.prefix = prefix
        self.broker = InMemoryMessageBroker(channel_prefix=prefix, buffer_size=buffer_size)

    def new_broker(self) -> InMemoryMessageBroker:
        return self.broker

    async def publish_raw(self, channel: str, data: bytes) -> None:
        await self.broker.publish_raw(channel, data)

    async def dead_letter_reasons(self) -> list[str]:
        return [d.reason for d in self.broker.dead_letters]


TransportFactory = Callable[[str], AsyncIterator[Transport]]


@asynccontextmanager
async def memory_transport(prefix: str) -> AsyncIterator[Transport]:
    transport = MemoryTransport(prefix)
    try:
        yield transport
    finally:
        await transport.broker.stop()


FACTORIES = {"memory": memory_transport}
