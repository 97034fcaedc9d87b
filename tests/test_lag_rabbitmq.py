"""Consumer lag of RabbitMQ at ``/metrics``: the messages ready in the
subscription's queue, measured by a passive declare off the consuming channel."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import attrs
import pytest
from aio_pika.abc import AbstractRobustConnection

from brokers.rabbitmq import RabbitMQMessageBroker, RabbitMQSubscription
from mediator import EventEmitter, EventMap, NotificationEvent, Service
from mediator.prometheus import lag_of, metrics_for
from mediator.testing import wait_until
from tests.rabbitmq_support import connect, delete_everything
from tests.test_lag_redis_streams import lag_when


@attrs.frozen(kw_only=True)
class OrderQueued(NotificationEvent):
    order_id: int


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A prefix of the test's own; its exchanges and group queue are deleted afterwards."""
    prefix = f"mtk-lag{uuid.uuid4().hex[:8]}"
    yield prefix
    connection = await connect(f"{prefix}-cleanup")
    try:
        await delete_everything(
            connection,
            [prefix, f"{prefix}.dead-letter"],
            [f"{prefix}.billing", f"{prefix}.dead-letter"],
        )
    finally:
        await connection.close()


@pytest.fixture
async def connection(prefix: str) -> AsyncIterator[AbstractRobustConnection]:
    connection = await connect(prefix)
    yield connection
    await connection.close()


@pytest.fixture(autouse=True)
def measure_often(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RabbitMQSubscription, "lag_interval", 0.05)


async def test_the_depth_of_a_blocked_groups_queue_rises_then_falls_to_zero(
    connection: AbstractRobustConnection, prefix: str
) -> None:
    release = asyncio.Event()

    async def on_queued(event: OrderQueued) -> None:
        await release.wait()

    events = EventMap()
    events.bind(OrderQueued, on_queued)
    broker = RabbitMQMessageBroker(
        connection, channel_prefix=prefix, connect_timeout=30, prefetch=1
    )
    service = Service(broker, name="lag", event_map=events, max_concurrency=1)
    service.subscribe("{prefix}:notification_event:*", group="billing")
    metrics = metrics_for(service)
    async with service:
        await service.event_emitter.emit_all([OrderQueued(order_id=n) for n in range(20)])
        # One message is with the blocked handler (prefetch 1): the rest are ready.
        assert await lag_when(metrics, "billing", lambda lag: lag == 19) == 19
        release.set()
        await wait_until(service.consumers[0], lambda stats: stats.handled == 20)
        assert await lag_when(metrics, "billing", lambda lag: lag == 0) == 0


async def test_an_exclusive_queue_reports_its_depth_unread(
    connection: AbstractRobustConnection, prefix: str
) -> None:
    async with RabbitMQMessageBroker(
        connection, channel_prefix=prefix, connect_timeout=30, prefetch=1
    ) as broker:
        subscription = await broker.subscribe(f"{prefix}:notification_event:*")
        await EventEmitter(message_broker=broker).emit_all(
            [OrderQueued(order_id=n) for n in range(3)]
        )
        async with asyncio.timeout(3):
            while True:
                if lag_of(subscription) == 2:  # one is prefetched
                    break
                await asyncio.sleep(0.02)
        await subscription.close()
    assert subscription._measurer is not None
    assert subscription._measurer.done()


async def test_closing_while_measuring_waits_for_the_measure_and_leaves_the_connection_working(
    connection: AbstractRobustConnection, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RabbitMQSubscription, "lag_interval", 0)
    async with RabbitMQMessageBroker(
        connection, channel_prefix=prefix, connect_timeout=30
    ) as broker:
        for _ in range(3):
            subscription = await broker.subscribe(f"{prefix}:notification_event:*")
            async with asyncio.timeout(3):
                while True:
                    measure = subscription._measure
                    if measure is not None and not measure.done():
                        break
                    await asyncio.sleep(0)
            async with asyncio.timeout(3):
                await subscription.close()
            assert measure.done()
        async with asyncio.timeout(3):
            await EventEmitter(message_broker=broker).emit(OrderQueued(order_id=1))
