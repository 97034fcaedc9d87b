"""One adapter per transport, so consumer tests run one body against each."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import pytest

from brokers.memory import InMemoryMessageBroker
from mediator import SubscribingBroker


class Transport(Protocol):
    """What a consumer test needs from a transport besides the broker itself."""

    name: str
    broker: SubscribingBroker
    has_groups: bool
    """Whether subscriptions can share messages in consumer groups."""
    round_robin: bool
    """Whether a group hands messages to its members in turn (else: to whoever reads first)."""

    def new_broker(self) -> SubscribingBroker:
        """Another broker on the same transport and prefix (a second service)."""
        ...

    async def publish_raw(self, channel: str, data: bytes) -> None:
        """Put bytes on a channel as they are, bypassing the envelope codec."""
        ...

    async def dead_letters(self) -> list[tuple[str, str]]:
        """(reason, description) of what was dead-lettered, oldest first."""
        ...


class MemoryTransport:
    name = "memory"
    has_groups = True
    round_robin = True

    def __init__(self, prefix: str) -> None:
        self.broker = InMemoryMessageBroker(channel_prefix=prefix)

    def new_broker(self) -> InMemoryMessageBroker:
        return self.broker

    async def publish_raw(self, channel: str, data: bytes) -> None:
        await self.broker.publish_raw(channel, data)

    async def dead_letters(self) -> list[tuple[str, str]]:
        return [(d.reason, d.description) for d in self.broker.dead_letters]


@asynccontextmanager
async def memory_transport(prefix: str, request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    transport = MemoryTransport(prefix)
    try:
        yield transport
    finally:
        await transport.broker.stop()


class RedisPubSubTransport:
    name = "redis-pubsub"
    has_groups = False
    round_robin = False

    def __init__(self, prefix: str, url: str) -> None:
        from redis.asyncio import Redis

        from brokers.redis import RedisMessageBroker

        self.prefix = prefix
        self.client = Redis.from_url(url)
        self.broker = RedisMessageBroker(client=self.client, channel_prefix=prefix)
        self._others: list[RedisMessageBroker] = []

    def new_broker(self) -> SubscribingBroker:
        from brokers.redis import RedisMessageBroker

        other = RedisMessageBroker(client=self.client, channel_prefix=self.prefix)
        self._others.append(other)
        return other

    async def publish_raw(self, channel: str, data: bytes) -> None:
        await self.client.publish(channel, data)

    async def dead_letters(self) -> list[tuple[str, str]]:
        records = await self.broker.dead_letters()
        return [(r["reason"], r["description"]) for r in reversed(records)]

    async def close(self) -> None:
        for broker in (self.broker, *self._others):
            await broker.stop()
        await self.client.delete(self.broker.dead_letter_key)
        await self.client.aclose()


@asynccontextmanager
async def redis_pubsub_transport(
    prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Transport]:
    transport = RedisPubSubTransport(prefix, request.getfixturevalue("redis_url"))
    try:
        yield transport
    finally:
        await transport.close()


class RedisStreamsTransport:
    name = "redis-streams"
    has_groups = True
    round_robin = False

    def __init__(self, prefix: str, url: str) -> None:
        from redis.asyncio import Redis

        self.prefix = prefix
        self.client = Redis.from_url(url)
        self.broker = self.new_broker()

    def new_broker(self) -> SubscribingBroker:
        from brokers.redis import RedisStreamBroker

        # Short intervals so tests see new streams and idle entries quickly.
        return RedisStreamBroker(
            client=self.client,
            channel_prefix=self.prefix,
            discovery_interval=0.05,
            claim_interval=0.1,
            claim_idle=0.5,
            block_ms=50,
        )

    async def publish_raw(self, channel: str, data: bytes) -> None:
        await self.client.xadd(channel, {"data": data})
        await self.client.sadd(f"{self.prefix}:streams", channel)

    async def dead_letters(self) -> list[tuple[str, str]]:
        from brokers.redis import RedisStreamBroker

        assert isinstance(self.broker, RedisStreamBroker)
        return [(d["reason"], d["description"]) for d in await self.broker.dead_letters()]

    async def close(self) -> None:
        await self.broker.stop()
        keys = [key async for key in self.client.scan_iter(match=f"{self.prefix}*")]
        if keys:
            await self.client.delete(*keys)
        await self.client.aclose()


@asynccontextmanager
async def redis_streams_transport(
    prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Transport]:
    transport = RedisStreamsTransport(prefix, request.getfixturevalue("redis_url"))
    try:
        yield transport
    finally:
        await transport.close()


TransportFactory = Callable[[str, pytest.FixtureRequest], AbstractAsyncContextManager[Transport]]

FACTORIES: dict[str, TransportFactory] = {
    "memory": memory_transport,
    "redis-pubsub": redis_pubsub_transport,
    "redis-streams": redis_streams_transport,
}
