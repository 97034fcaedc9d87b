"""One adapter per transport, so consumer tests run one body against each."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Protocol

import pytest

from brokers.memory import InMemoryMessageBroker
from mediator.transport import SubscribingBroker


class Transport(Protocol):
    """What a consumer test needs from a transport besides the broker itself."""

    name: str
    broker: SubscribingBroker
    has_groups: bool
    """Whether subscriptions can share messages in consumer groups."""
    round_robin: bool
    """Whether a group hands messages to its members in turn (else: to whoever reads first)."""

    def own_group(self, name: str) -> str | None:
        """The group for a subscription that must get its own copy of every
        message: None where ungrouped subscriptions are independent already,
        a group of its own (`name`) where the transport needs one (Azure)."""
        ...

    def new_broker(self) -> SubscribingBroker:
        """Another broker on the same transport and prefix (a second service)."""
        ...

    async def publish_raw(self, channel: str, data: bytes) -> None:
        """Put bytes on a channel as they are, bypassing the envelope codec."""
        ...

    async def dead_letters(self, limit: int | None = None) -> list[tuple[str, str]]:
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

    def own_group(self, name: str) -> str | None:
        return None

    async def publish_raw(self, channel: str, data: bytes) -> None:
        await self.broker.publish_raw(channel, data)

    async def dead_letters(self, limit: int | None = None) -> list[tuple[str, str]]:
        return [(d.reason, d.description) for d in await self.broker.dead_letters(limit=limit)]


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

    def __init__(self, prefix: str, url: str, **options: object) -> None:
        from redis.asyncio import Redis

        from brokers.redis import RedisPubSubMessageBroker

        self.prefix = prefix
        self.client = Redis.from_url(url, client_name=prefix)
        self.broker = RedisPubSubMessageBroker(
            client=self.client,
            channel_prefix=prefix,
            **options,  # type: ignore[arg-type]
        )
        self._others: list[RedisPubSubMessageBroker] = []

    def new_broker(self) -> SubscribingBroker:
        from brokers.redis import RedisPubSubMessageBroker

        other = RedisPubSubMessageBroker(client=self.client, channel_prefix=self.prefix)
        self._others.append(other)
        return other

    def own_group(self, name: str) -> str | None:
        return None

    async def publish_raw(self, channel: str, data: bytes) -> None:
        await self.client.publish(channel, data)

    async def dead_letters(self, limit: int | None = None) -> list[tuple[str, str]]:
        return [(r.reason, r.description) for r in await self.broker.dead_letters(limit=limit)]

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

    def __init__(self, prefix: str, url: str, **options: object) -> None:
        from redis.asyncio import Redis

        self.prefix = prefix
        self.client = Redis.from_url(url, client_name=prefix)
        self._options = options
        self.broker = self.new_broker()

    def new_broker(self) -> SubscribingBroker:
        from brokers.redis import RedisStreamMessageBroker

        # Short intervals so tests see new streams and idle entries quickly.
        return RedisStreamMessageBroker(
            client=self.client,
            channel_prefix=self.prefix,
            discovery_interval=0.05,
            claim_interval=0.1,
            claim_idle=0.5,
            block_ms=50,
            **self._options,  # type: ignore[arg-type]
        )

    def own_group(self, name: str) -> str | None:
        return None

    async def publish_raw(self, channel: str, data: bytes) -> None:
        await self.client.xadd(channel, {"data": data})
        await self.client.sadd(f"{self.prefix}:streams", channel)

    async def dead_letters(self, limit: int | None = None) -> list[tuple[str, str]]:
        from brokers.redis import RedisStreamMessageBroker

        assert isinstance(self.broker, RedisStreamMessageBroker)
        return [(r.reason, r.description) for r in await self.broker.dead_letters(limit=limit)]

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


AZURE_SUBSCRIPTIONS = ("default", "billing", "audit", "first", "second")
"""Topic subscriptions the loopback peer declares for every Azure test."""


if TYPE_CHECKING:  # the Azure names, for annotations; imported where used
    from tests.azure_peer import AmqpPeer


class AzureTransport:
    """The real azure-servicebus SDK against the loopback AMQP peer (started
    here unless given; stopped by `close`). The client connects to `port`
    (a proxy in front of the peer) or to the peer itself; `options` are
    `AzureMessageBroker` keywords for every broker of the test."""

    name = "azure"
    has_groups = True
    round_robin = False

    def __init__(
        self,
        prefix: str,
        peer: AmqpPeer | None = None,
        *,
        port: int | None = None,
        **options: object,
    ) -> None:
        from azure.servicebus.aio import ServiceBusClient, ServiceBusSender

        from brokers.azure import AzureMessageBroker
        from tests.azure_peer import AmqpPeer

        self.peer = peer or AmqpPeer()
        if not self.peer.running:
            self.peer.__enter__()
        self.topic = prefix
        for subscription in AZURE_SUBSCRIPTIONS:
            self.peer.add_subscription(prefix, subscription)
        self.client = ServiceBusClient.from_connection_string(
            self.peer.connection_string_via(port or self.peer.port),
            retry_total=3,
            retry_backoff_factor=0.01,
        )
        self._options = options
        self._brokers: list[AzureMessageBroker] = []
        self._raw_sender: ServiceBusSender | None = None
        self.broker = self.new_broker()

    def new_broker(self) -> SubscribingBroker:
        from brokers.azure import AzureMessageBroker

        broker = AzureMessageBroker(
            self.client,
            self.topic,
            subscription="default",
            max_wait_time=1.0,
            # The SDK polls its socket at this interval; a loopback peer answers at once.
            sender_options={"socket_timeout": 0.05, "keep_alive": 0},
            receiver_options={"socket_timeout": 0.05},
            **self._options,  # type: ignore[arg-type]
        )
        self._brokers.append(broker)
        return broker

    def own_group(self, name: str) -> str | None:
        assert name in AZURE_SUBSCRIPTIONS, f"declare {name!r} in AZURE_SUBSCRIPTIONS"
        return name

    async def publish_raw(self, channel: str, data: bytes) -> None:
        from azure.servicebus import ServiceBusMessage

        if self._raw_sender is None:
            # One sender for every raw publish, as the broker keeps one.
            self._raw_sender = self.client.get_topic_sender(
                self.topic, socket_timeout=0.05, keep_alive=0
            )
        await self._raw_sender.send_messages(
            ServiceBusMessage(data, application_properties={"channel": channel})
        )

    async def dead_letters(self, limit: int | None = None) -> list[tuple[str, str]]:
        """Read back from the "default" subscription's dead-letter sub-queue,
        where the tests that look at dead letters receive."""
        return [
            (r.reason, r.description)
            for r in await self._brokers[0].dead_letters(limit=1000 if limit is None else limit)
        ]

    async def close(self) -> None:
        import asyncio

        await asyncio.gather(*(broker.stop() for broker in self._brokers))
        if self._raw_sender is not None:
            await self._raw_sender.close()
        await self.client.close()
        self.peer.stop()


@asynccontextmanager
async def azure_transport(prefix: str, request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    transport = AzureTransport(prefix)
    try:
        yield transport
    finally:
        await transport.close()


TransportFactory = Callable[[str, pytest.FixtureRequest], AbstractAsyncContextManager[Transport]]

FACTORIES: dict[str, TransportFactory] = {
    "memory": memory_transport,
    "redis-pubsub": redis_pubsub_transport,
    "redis-streams": redis_streams_transport,
    "azure": azure_transport,
}


if TYPE_CHECKING:  # the RabbitMQ names, for annotations; imported where used
    from aio_pika.abc import AbstractRobustConnection

    from brokers.rabbitmq import RabbitMQMessageBroker, RabbitMQSubscription


class RabbitMQTransport:
    """aio-pika against the RabbitMQ at AMQP_URL: every broker of a test on
    one robust connection named by the prefix (so a fault injector can close
    it from the server side), each with its own channels."""

    name = "rabbitmq"
    has_groups = True
    round_robin = False  # a member with free prefetch may take a whole burst first

    def __init__(self, prefix: str, connection: AbstractRobustConnection) -> None:
        self.prefix = prefix
        self.connection = connection
        self._brokers: list[RabbitMQMessageBroker] = []
        self.groups: set[str] = set()
        self.broker = self.new_broker()

    def new_broker(self) -> RabbitMQMessageBroker:
        from brokers.rabbitmq import RabbitMQMessageBroker

        transport = self

        class Recording(RabbitMQMessageBroker):
            # Remembers the group queues it declares, so close() deletes them.
            async def subscribe(
                self, pattern: str, *, group: str | None = None
            ) -> RabbitMQSubscription:
                if group is not None:
                    transport.groups.add(group)
                return await super().subscribe(pattern, group=group)

        broker = Recording(self.connection, channel_prefix=self.prefix, connect_timeout=30)
        self._brokers.append(broker)
        return broker

    def own_group(self, name: str) -> str | None:
        return None

    async def publish_raw(self, channel: str, data: bytes) -> None:
        import aio_pika

        prefix, _, rest = channel.partition(":")
        async with self.connection.channel() as amqp_channel:
            exchange = await amqp_channel.get_exchange(prefix, ensure=False)
            await exchange.publish(
                aio_pika.Message(data, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=rest.replace(":", ".", 1),
            )

    async def dead_letters(self, limit: int | None = None) -> list[tuple[str, str]]:
        return [(r.reason, r.description) for r in await self.broker.dead_letters(limit=limit)]

    async def close(self) -> None:
        import asyncio

        from tests.rabbitmq_support import delete_everything

        await asyncio.gather(*(broker.stop() for broker in self._brokers))
        queues = [self.broker.group_queue(group) for group in sorted(self.groups)]
        await delete_everything(
            self.connection,
            exchanges=[self.broker.exchange, self.broker.dead_letter_exchange],
            queues=[*queues, self.broker.dead_letter_queue],
        )
        await self.connection.close()


@asynccontextmanager
async def rabbitmq_transport(
    prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Transport]:
    from tests.rabbitmq_support import connect

    transport = RabbitMQTransport(prefix, await connect(prefix))
    try:
        yield transport
    finally:
        await transport.close()


FACTORIES["rabbitmq"] = rabbitmq_transport


from tests.transports_kafka import KafkaTransport, kafka_transport  # noqa: E402

FACTORIES["kafka"] = kafka_transport

__all__ = ["FACTORIES", "KafkaTransport", "Transport"]


# Looked up when called: tests/transports_cluster.py imports this module.
import tests.transports_cluster as _cluster  # noqa: E402

FACTORIES["redis-cluster-pubsub"] = lambda p, r: _cluster.redis_cluster_pubsub_transport(p, r)
FACTORIES["redis-cluster-streams"] = lambda p, r: _cluster.redis_cluster_streams_transport(p, r)

from tests.transports_nats import nats_transport  # noqa: E402

FACTORIES["nats"] = nats_transport
