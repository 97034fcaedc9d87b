"""Consumer lag of Redis Streams at ``/metrics``: the group's ``XINFO GROUPS``
lag over the streams a subscription reads, measured every ``claim_idle`` / 3,
off the read path."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import attrs
import redis.asyncio
from prometheus_client.parser import text_string_to_metric_families

from brokers.redis import RedisStreamMessageBroker
from brokers.redis._streams_replies import group_lag, streams_lag
from mediator import EventEmitter, EventMap, NotificationEvent, Service
from mediator.prometheus import ServiceMetrics, lag_of, metrics_for
from mediator.testing import wait_until

LAG = "mediator_consumer_lag_messages"


@attrs.frozen(kw_only=True)
class OrderQueued(NotificationEvent):
    order_id: int


def lags(metrics: ServiceMetrics) -> dict[str, float]:
    """The lag samples of the exposition, by group."""
    return {
        sample.labels["group"]: sample.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for sample in family.samples
        if sample.name == LAG
    }


async def lag_when(
    metrics: ServiceMetrics, group: str, holds: Callable[[float], bool], timeout: float = 3
) -> float:
    """The group's lag once a scrape reports one that `holds` (polled, bounded)."""
    async with asyncio.timeout(timeout):
        while True:
            value = lags(metrics).get(group)
            if value is not None and holds(value):
                return value
            await asyncio.sleep(0.02)


async def test_the_lag_of_a_blocked_group_rises_then_falls_to_zero(
    redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    release = asyncio.Event()

    async def on_queued(event: OrderQueued) -> None:
        await release.wait()

    events = EventMap()
    events.bind(OrderQueued, on_queued)
    broker = RedisStreamMessageBroker(
        client=redis_client,
        channel_prefix=key_prefix,
        discovery_interval=0.05,
        claim_idle=0.3,  # lag measured every 0.1 s
        block_ms=50,
        batch_size=1,
    )
    service = Service(broker, name="lag", event_map=events, max_concurrency=1)
    service.subscribe("{prefix}:notification_event:*", group="billing")
    metrics = metrics_for(service)
    async with service:
        await service.event_emitter.emit_all([OrderQueued(order_id=n) for n in range(20)])
        # One entry is with the blocked handler, one read and waiting for it
        # at most (batch_size 1): the rest wait in the stream, undelivered.
        assert await lag_when(metrics, "billing", lambda lag: lag >= 18) <= 20
        release.set()
        await wait_until(service.consumers[0], lambda stats: stats.handled == 20)
        assert await lag_when(metrics, "billing", lambda lag: lag == 0) == 0


async def test_an_ungrouped_subscription_reports_its_private_groups_lag_unread(
    redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    broker = RedisStreamMessageBroker(
        client=redis_client,
        channel_prefix=key_prefix,
        discovery_interval=0.05,
        claim_idle=0.3,
        block_ms=50,
    )
    emitter = EventEmitter(message_broker=broker)
    async with broker:
        await emitter.emit(OrderQueued(order_id=0))  # the group starts at its end
        subscription = await broker.subscribe(f"{key_prefix}:notification_event:*")
        await emitter.emit_all([OrderQueued(order_id=n) for n in range(1, 4)])
        async with asyncio.timeout(3):
            while True:
                if lag_of(subscription) == 3:
                    break
                await asyncio.sleep(0.02)
        await subscription.close()


def test_the_lag_of_the_group_is_read_from_xinfo_groups() -> None:
    groups = [
        {"name": b"other", "pending": 0, "lag": 7},
        {"name": b"billing", "pending": 2, "lag": 3},
    ]
    assert group_lag(groups, "billing") == 3
    assert group_lag(groups, "missing") is None
    assert group_lag([{"name": "billing", "pending": 2}], "billing") is None, "Redis < 7"
    assert group_lag([{"name": b"billing", "lag": None}], "billing") is None, "after XDEL"


def test_the_lag_over_streams_is_their_sum_or_unknown() -> None:
    one = [{"name": b"g", "lag": 2}]
    two = [{"name": b"g", "lag": 5}]
    assert streams_lag([one, two], "g") == 7
    assert streams_lag([], "g") == 0
    assert streams_lag([one, [{"name": b"g"}]], "g") is None
    assert streams_lag([one, redis.exceptions.ResponseError("no such key")], "g") is None


def test_lag_is_read_before_pending_and_must_be_an_int() -> None:
    @attrs.define
    class Reported:
        lag: object = None
        pending: object = None

    assert lag_of(Reported(lag=4, pending=9)) == 4
    assert lag_of(Reported(pending=9)) == 9
    assert lag_of(Reported(lag=True)) is None
    assert lag_of(object()) is None
