"""Consumer lag of Kafka at ``/metrics``: per partition a subscription reads,
its end (the later of the last fetch's high watermark and the end offset
measured every `lag_interval`) less its next offset to fetch."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import attrs
import pytest

from brokers.kafka import KafkaSubscription
from mediator import EventEmitter, EventMap, NotificationEvent, Service
from mediator.prometheus import metrics_for
from mediator.testing import wait_until
from tests.kafka_support import KafkaServer
from tests.test_lag_redis_streams import lag_when
from tests.transports import KafkaTransport


@attrs.frozen(kw_only=True)
class OrderQueued(NotificationEvent):
    order_id: int


@pytest.fixture
async def kafka(
    kafka_server: KafkaServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[KafkaTransport]:
    monkeypatch.setattr(KafkaSubscription, "lag_interval", 0.1)
    transport = KafkaTransport(f"mtk-l{uuid.uuid4().hex[:8]}", kafka_server, prefetch=2)
    try:
        yield transport
    finally:
        await transport.close()


async def test_the_lag_of_a_stuck_group_rises_then_falls_to_zero(kafka: KafkaTransport) -> None:
    release, stuck = asyncio.Event(), asyncio.Event()

    async def on_queued(event: OrderQueued) -> None:
        stuck.set()
        await release.wait()

    events = EventMap()
    events.bind(OrderQueued, on_queued)
    service = Service(kafka.broker, name="lag", event_map=events, max_concurrency=1)
    service.subscribe("{prefix}:notification_event:*", group="billing")
    metrics = metrics_for(service)
    emitter = EventEmitter(message_broker=kafka.new_broker())
    async with service:
        await emitter.emit_all([OrderQueued(order_id=n) for n in range(6)])
        async with asyncio.timeout(30):
            await stuck.wait()
        # The handler is stuck: the partitions fill up (prefetch 2) and are
        # not fetched from; what comes next waits in the topic. One record a
        # batch: Tansu's ListOffsets(latest) is the last batch's base + 1.
        # (A partition fetched from before it filled up may take in several
        # of them first: how many wait depends on the fetches' timing.)
        for n in range(6, 100):
            await emitter.emit(OrderQueued(order_id=n))
        assert await lag_when(metrics, "billing", lambda lag: lag >= 5, timeout=15) <= 100
        release.set()
        await wait_until(service.consumers[0], lambda stats: stats.handled == 100, timeout=30)
        assert await lag_when(metrics, "billing", lambda lag: lag == 0, timeout=15) == 0
