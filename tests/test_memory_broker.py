"""The in-memory broker's own guarantees, and a consumer that never stops silently."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import attrs
import pytest

from brokers.memory import InMemoryMessageBroker, MemorySubscription
from mediator import (
    EventConsumer,
    EventEmitter,
    EventMap,
    NotificationEvent,
    SubscriptionLostError,
)
from mediator.transport import DeadLetterRecord


@attrs.frozen(kw_only=True)
class Pinged(NotificationEvent):
    n: int


async def test_stop_with_a_full_buffer_and_a_cancelled_delivery_does_not_hang() -> None:
    # The delivery cancelled at the drain timeout is released; it must not
    # wait for room in the full buffer it came from.
    broker = InMemoryMessageBroker(channel_prefix="full", buffer_size=1)
    entered = asyncio.Event()

    async def stuck(event: Pinged) -> None:
        entered.set()
        await asyncio.Event().wait()

    events = EventMap()
    events.bind(Pinged, stuck)
    consumer = EventConsumer(broker=broker, event_map=events, max_concurrency=1, drain_timeout=0.05)
    await consumer.subscribe("full:*")
    emitter = EventEmitter(message_broker=broker)
    await consumer.start()
    await emitter.emit(Pinged(n=1))
    await asyncio.wait_for(entered.wait(), timeout=5)
    await emitter.emit(Pinged(n=2))  # fills the buffer of one
    async with asyncio.timeout(5):
        await consumer.stop()
    assert consumer.stats.released == 1


async def test_a_publisher_waiting_on_a_full_buffer_goes_on_when_it_closes() -> None:
    broker = InMemoryMessageBroker(channel_prefix="wake", buffer_size=1)
    subscription = await broker.subscribe("wake:*")
    emitter = EventEmitter(message_broker=broker)
    await emitter.emit(Pinged(n=1))
    blocked = asyncio.create_task(emitter.emit(Pinged(n=2)))
    done, _ = await asyncio.wait({blocked}, timeout=0.05)
    assert not done, "the publisher waits for room while someone may still read"
    await subscription.close()
    async with asyncio.timeout(5):
        await blocked
    assert [m.payload["n"] for m in broker.messages] == [1, 2]


async def test_a_released_delivery_comes_back_first_with_its_count() -> None:
    broker = InMemoryMessageBroker(channel_prefix="again", buffer_size=1)
    subscription = await broker.subscribe("again:*")
    await broker.publish_raw("again:x", b"first")
    deliveries = aiter(subscription)
    first = await anext(deliveries)
    await broker.publish_raw("again:x", b"second")  # the buffer is full again
    await first.release()  # does not wait for room
    again = await anext(deliveries)
    assert (again.data, again.delivery_count) == (b"first", 2)
    assert (await anext(deliveries)).data == b"second"
    with pytest.raises(RuntimeError, match="already settled"):
        await first.ack()
    await subscription.close()


async def test_dead_letters_are_bounded_records_oldest_first() -> None:
    broker = InMemoryMessageBroker(channel_prefix="dl", dead_letter_limit=2)
    subscription = await broker.subscribe("dl:*")
    deliveries = aiter(subscription)
    for data, reason in ((b"a", "not_json"), (b"b", "not_json"), (b"x" * 100_000, "too_large")):
        await broker.publish_raw("dl:c", data)
        delivery = await anext(deliveries)
        await delivery.dead_letter(reason, f"bad {data[:1]!r}")
    first, second = await broker.dead_letters()
    assert isinstance(first, DeadLetterRecord)
    assert (first.data, first.reason, first.truncated) == (b"b", "not_json", False)
    assert (second.size, len(second.data), second.truncated) == (100_000, 64 * 1024, True)
    assert len(second.sha256) == 64
    await broker.stop()


async def test_a_subscription_closed_under_a_running_consumer_stops_it_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = InMemoryMessageBroker(channel_prefix="gone")
    consumer = EventConsumer(broker=broker, event_map=EventMap())
    await consumer.subscribe("gone:*")
    await consumer.start()
    runner = asyncio.create_task(consumer.run())
    await broker.stop()  # its owner stops the broker first
    with pytest.raises(SubscriptionLostError, match="ended while the consumer was running"):
        await asyncio.wait_for(runner, timeout=5)
    assert not consumer.running
    assert "a subscription ended; stopping the consumer" in caplog.text


class _Failing(MemorySubscription):
    def __aiter__(self) -> AsyncIterator[object]:  # type: ignore[override]
        return self._fail()

    async def _fail(self) -> AsyncIterator[object]:
        raise SubscriptionLostError("the stream shop:x was deleted and could not be recreated")
        yield  # pragma: no cover


async def test_a_transport_error_stops_the_consumer_with_the_true_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broker(InMemoryMessageBroker):
        async def subscribe(self, pattern: str, *, group: str | None = None) -> _Failing:
            return _Failing(self, pattern, group, 1)

    consumer = EventConsumer(broker=Broker(), event_map=EventMap())
    await consumer.subscribe("shop:*")
    caplog.set_level(logging.ERROR, "mediator.consumer")
    with pytest.raises(SubscriptionLostError, match="could not be recreated"):
        await asyncio.wait_for(consumer.run(), timeout=5)
    assert not consumer.running
    assert "subscription shop:* failed; stopping the consumer" in caplog.text
    assert "fail-fast" not in caplog.text
