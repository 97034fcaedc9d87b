"""The Kafka adapter of the transport-parametrized tests (tests/transports.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.transports import Transport

if TYPE_CHECKING:  # the Kafka names, for annotations; imported where used
    from typing import Any

    from brokers.kafka import KafkaMessageBroker
    from tests.kafka_support import KafkaServer


class KafkaTransport:
    """aiokafka against the session's Kafka (Tansu, or KAFKA_BOOTSTRAP_SERVERS):
    every broker of a test on the test's prefix; its topics deleted afterwards.
    `options` are `KafkaMessageBroker` keywords for every broker of the test."""

    name = "kafka"
    has_groups = True
    round_robin = False  # Kafka hands a group's members partitions, not messages in turn

    def __init__(self, prefix: str, server: KafkaServer, **options: Any) -> None:
        self.prefix = prefix
        self.server = server
        self._options = options
        self._brokers: list[KafkaMessageBroker] = []
        self._raw: Any = None
        self._admin: Any = None
        self.broker = self.new_broker()

    def new_broker(self, **options: Any) -> KafkaMessageBroker:
        from brokers.kafka import KafkaMessageBroker

        broker = KafkaMessageBroker(
            self.server.bootstrap_servers,
            channel_prefix=self.prefix,
            **{**self.server.broker_options(), **self._options, **options},
        )
        self._brokers.append(broker)
        return broker

    def own_group(self, name: str) -> str | None:
        return None

    async def admin(self) -> Any:
        from aiokafka.admin import AIOKafkaAdminClient

        if self._admin is None:
            self._admin = AIOKafkaAdminClient(bootstrap_servers=self.server.bootstrap_servers)
            await self._admin.start()
        return self._admin

    async def publish_raw(self, channel: str, data: bytes) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.admin import NewTopic

        topic = channel.replace(":", ".")
        await (await self.admin()).create_topics([NewTopic(topic, self.broker.partitions, 1)])
        if self._raw is None:
            # Room for the bad inputs over the consumer's 1 MiB limit.
            self._raw = AIOKafkaProducer(
                bootstrap_servers=self.server.bootstrap_servers, max_request_size=4 << 20
            )
            await self._raw.start()
        await self._raw.send_and_wait(topic, data)

    async def dead_letters(self, limit: int | None = None) -> list[tuple[str, str]]:
        return [(r.reason, r.description) for r in await self.broker.dead_letters(limit=limit)]

    def kill_connections(self) -> int:
        """Abort every socket of the test's aiokafka clients, as a network
        failure would; returns how many."""
        clients = [self._raw and self._raw.client]
        for broker in self._brokers:
            clients += [broker._producer and broker._producer.client]
            clients += [broker._admin_client and broker._admin_client._client]
            clients += [s._consumer and s._consumer._client for s in broker._subscriptions]
        killed = 0
        for client in filter(None, clients):
            for conn in list(client._conns.values()):
                if conn._writer is not None:
                    conn._writer.transport.abort()
                    killed += 1
        return killed

    async def delete_topics(self) -> int:
        """Delete the test's topics under its consumers; returns how many."""
        admin = await self.admin()
        topics = [t for t in await admin.list_topics() if t.startswith(f"{self.prefix}.")]
        if topics:
            await admin.delete_topics(topics)
        return len(topics)

    async def close(self) -> None:
        import asyncio

        await asyncio.gather(*(broker.stop() for broker in self._brokers))
        if self._raw is not None:
            await self._raw.stop()
        try:
            await self.delete_topics()
        finally:
            if self._admin is not None:
                await self._admin.close()


@asynccontextmanager
async def kafka_transport(prefix: str, request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    transport = KafkaTransport(prefix, request.getfixturevalue("kafka_server"))
    try:
        yield transport
    finally:
        await transport.close()
