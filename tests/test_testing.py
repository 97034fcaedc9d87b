"""mediator.testing: waits that say what they waited for, capture, dead letters."""

from __future__ import annotations

import attrs
import pytest

from brokers.memory import InMemoryMessageBroker
from mediator import EventConsumer, EventEmitter, EventMap, NotificationEvent
from mediator.testing import (
    CapturingBroker,
    WaitTimeout,
    dead_letters,
    keep_handled,
    wait_for_event,
    wait_until,
)


@attrs.frozen(kw_only=True)
class Paid(NotificationEvent):
    order_id: int


@pytest.fixture
async def consumer() -> EventConsumer:
    broker = CapturingBroker(InMemoryMessageBroker(channel_prefix="t"))
    events = EventMap()

    @events.bind(Paid)
    async def handle(event: Paid) -> None:
        return None

    consumer = keep_handled(EventConsumer(broker=broker, event_map=events))  # type: ignore[arg-type]
    await consumer.subscribe("t:*")
    return consumer


async def test_wait_for_event_returns_the_matching_event(consumer: EventConsumer) -> None:
    emitter = EventEmitter(message_broker=consumer.broker)
    async with consumer:
        await emitter.emit_all([Paid(order_id=1), Paid(order_id=2)])
        paid = await wait_for_event(consumer, Paid, where=lambda e: e.order_id == 2)
    assert paid.order_id == 2
    assert consumer.broker.names() == ["Paid", "Paid"]  # type: ignore[attr-defined]


async def test_a_timeout_says_what_was_awaited_and_what_arrived(consumer: EventConsumer) -> None:
    async with consumer:
        await consumer.broker.publish_raw("t:notification_event:Paid", b"[]")  # type: ignore[attr-defined]
        with pytest.raises(WaitTimeout) as caught:
            await wait_for_event(consumer, Paid, timeout=0.2)
    text = str(caught.value)
    assert "waited 0.2 s for a handled Paid" in text
    assert "dead-lettered 1 {'not_object': 1}" in text
    assert "dead_lettered: ? ? (not_object)" in text
    [dead] = await dead_letters(consumer.broker, reason="not_object")
    assert dead.data == b"[]"


async def test_wait_until_checks_before_waiting(consumer: EventConsumer) -> None:
    stats = await wait_until(consumer, lambda s: s.handled == 0, timeout=0.01)
    assert stats.received == 0
    with pytest.raises(WaitTimeout, match=r"stats: .*s\.handled >= 1"):
        await wait_until(consumer, lambda s: s.handled >= 1, timeout=0.01)


async def test_wait_for_event_sees_an_event_handled_before_the_wait(
    consumer: EventConsumer,
) -> None:
    emitter = EventEmitter(message_broker=consumer.broker)
    async with consumer:
        await emitter.emit(Paid(order_id=7))
        await wait_until(consumer, lambda s: s.handled >= 1)
        paid = await wait_for_event(consumer, Paid, timeout=0.01)
    assert paid.order_id == 7
