"""The NATS adapter of the transport-parametrized tests (tests/transports.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from nats.aio.client import Client

    from brokers.nats import NatsMessageBroker
    from tests.transports import Transport

TEST_OPTIONS: dict[str, Any] = {
    # A short ack wait, so that the in-progress acks of a slow handler are
    # what keeps its message from another member; a short fetch, so that a
    # deleted consumer is noticed within half a second.
    "ack_wait": 1.0,
    "fetch_timeout": 0.5,
    "timeout": 10.0,
}
"""`NatsMessageBroker` keywords for every broker of a test."""


class NatsTransport:
    """nats-py against the tests' NATS (see tests/nats_support.py): every
    broker of a test on its own connection and the test's prefix; the
    prefix's stream deleted afterwards. `options` are `NatsMessageBroker`
    keywords for every broker of the test."""

    name = "nats"
    has_groups = True
    round_robin = False  # a member's fetch may take a whole burst first

    def __init__(self, prefix: str, url: str, **options: Any) -> None:
        self.prefix = prefix
        self.url = url
        self._options = {**TEST_OPTIONS, **options}
        self._brokers: list[NatsMessageBroker] = []
        self._raw: Client | None = None
        self.broker = self.new_broker()

    def new_broker(self, **options: Any) -> NatsMessageBroker:
        from brokers.nats import NatsMessageBroker

        merged = {**self._options, **options}
        connect = {"reconnect_time_wait": 0.1, **merged.pop("connect_options", {})}
        broker = NatsMessageBroker.from_url(
            self.url, self.prefix, connect_options=connect, **merged
        )
        self._brokers.append(broker)
        return broker

    def own_group(self, name: str) -> str | None:
        return None

    async def raw(self) -> Client:
        """A plain nats-py client of the test's own."""
        import nats

        if self._raw is None:
            self._raw = await nats.connect(self.url)
        return self._raw

    async def publish_raw(self, channel: str, data: bytes) -> None:
        await self.broker.start()  # the stream exists
        js = (await self.raw()).jetstream()
        await js.publish(channel.replace(":", "."), data)

    async def dead_letters(self, limit: int | None = None) -> list[tuple[str, str]]:
        return [(r.reason, r.description) for r in await self.broker.dead_letters(limit=limit)]

    def kill_connections(self) -> int:
        """Abort the socket of every connection of the test's brokers, as a
        network failure would; nats-py reconnects. Returns how many."""
        killed = 0
        for broker in self._brokers:
            client = broker._client
            transport = getattr(client, "_transport", None) if client is not None else None
            writer = getattr(transport, "_io_writer", None)
            if writer is not None and not client.is_closed:  # type: ignore[union-attr]
                writer.transport.abort()
                killed += 1
        return killed

    async def delete_stream(self) -> None:
        """Delete the prefix's stream, and with it every consumer on it."""
        from tests.nats_support import delete_stream

        await delete_stream(self.url, self.broker.stream)

    async def close(self) -> None:
        import asyncio

        await asyncio.gather(*(broker.stop() for broker in self._brokers))
        if self._raw is not None:
            await self._raw.close()
        await self.delete_stream()


@asynccontextmanager
async def nats_transport(prefix: str, request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    from tests.nats_support import nats_url

    transport = NatsTransport(prefix, nats_url(request))
    try:
        yield transport
    finally:
        await transport.close()
