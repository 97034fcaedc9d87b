"""The Kafka example pair works as documented, in either start order.

Both scripts run as processes of their own against the tests' Kafka
(Tansu, or ``KAFKA_BOOTSTRAP_SERVERS``); the test then checks what the
billing group committed, and deletes the prefix's topics.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.examples_runner import assert_handled_the_three_orders, consumer_started_first, run_ok
from tests.kafka_support import KafkaServer


async def _topics(server: KafkaServer, prefix: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=server.bootstrap_servers)
    await admin.start()
    try:
        return sorted(t for t in await admin.list_topics() if t.startswith(f"{prefix}."))
    finally:
        await admin.close()


async def _committed(server: KafkaServer, prefix: str, topics: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=server.bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(
            f"{prefix}.billing", partitions=[TopicPartition(topic, 0) for topic in topics]
        )
        return {tp.topic: meta.offset for tp, meta in offsets.items()}
    finally:
        await admin.close()


async def _delete(server: KafkaServer, prefix: str) -> None:
    topics = await _topics(server, prefix)
    if topics:
        admin = AIOKafkaAdminClient(bootstrap_servers=server.bootstrap_servers)
        await admin.start()
        try:
            await admin.delete_topics(topics)
        finally:
            await admin.close()


@pytest.fixture
def prefix(kafka_server: KafkaServer) -> Iterator[str]:
    """A prefix of the test's own; its topics are deleted afterwards."""
    prefix = f"mtk-example-{uuid.uuid4().hex[:8]}"
    yield prefix
    asyncio.run(_delete(kafka_server, prefix))


def environment(server: KafkaServer, prefix: str) -> dict[str, str]:
    return {
        "KAFKA_URL": f"kafka://{server.bootstrap_servers}",
        "KAFKA_IDEMPOTENCE": "0" if server.tansu else "1",
        "SHOP_PREFIX": prefix,
    }


def assert_all_committed(server: KafkaServer, prefix: str) -> None:
    topics = asyncio.run(_topics(server, prefix))
    assert topics == [
        f"{prefix}.notification_event.NewsletterSigned",
        f"{prefix}.notification_event.OrderCancelled",
        f"{prefix}.notification_event.OrderPlaced",
    ], "no dead letters, and one topic per event name"
    assert asyncio.run(_committed(server, prefix, topics)) == {
        f"{prefix}.notification_event.NewsletterSigned": -1,  # not an Order* topic
        f"{prefix}.notification_event.OrderCancelled": 1,
        f"{prefix}.notification_event.OrderPlaced": 2,
    }


def test_the_consumer_reads_what_the_producer_sent_before_it_started(
    kafka_server: KafkaServer, prefix: str
) -> None:
    env = environment(kafka_server, prefix)
    sent = run_ok("kafka_producer.py", **env)
    assert sent == [
        f"sent 3 commands; their events are in the topics {prefix}.notification_event.*"
    ]

    assert_handled_the_three_orders(run_ok("kafka_consumer.py", **env))
    assert_all_committed(kafka_server, prefix)


def test_a_consumer_started_first_reads_the_topics_that_appear_later(
    kafka_server: KafkaServer, prefix: str
) -> None:
    # No topic exists when the consumer's group joins: it finds them at its
    # next metadata refresh and reads them from their first record, so the
    # two processes need no coordination.
    lines = consumer_started_first(
        "kafka_consumer.py", "kafka_producer.py", **environment(kafka_server, prefix)
    )
    assert_handled_the_three_orders(lines)
    assert_all_committed(kafka_server, prefix)
