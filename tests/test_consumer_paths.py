"""The same delivery comes to the same outcome whatever is configured around
the handlers: the consumer has a short path when nothing runs around them
(no interceptor, hook, inbox or container) and a general one otherwise, and
each case here runs on both."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
import pytest

from brokers.memory import InMemoryMessageBroker, MemoryDelivery
from mediator import (
    Backoff,
    Consuming,
    DeadLetter,
    EventConsumer,
    EventEmitter,
    EventMap,
    Interceptor,
    Message,
    NotificationEvent,
    Retry,
)
from mediator.testing import Settled, WaitTimeout, keep_handled, wait_for_event, wait_until

WAIT = 10.0


@attrs.frozen(kw_only=True)
class Shipped(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class Audited(NotificationEvent):
    order_id: int


class Around(Interceptor):
    """Runs around every delivery, so the consumer takes its general path."""

    @contextmanager
    def consuming(self, consuming: Consuming) -> Iterator[None]:
        yield


def _nothing(message: Message) -> None:
    pass


CONFIGURED: dict[str, dict[str, Any]] = {
    "nothing around": {},
    "an interceptor": {"interceptors": [Around()]},
    "an incoming hook": {"incoming": [_nothing]},
}


@pytest.fixture(params=list(CONFIGURED))
def around(request: pytest.FixtureRequest) -> dict[str, Any]:
    return CONFIGURED[request.param]


def consumer_of(
    broker: InMemoryMessageBroker, events: EventMap, around: dict[str, Any], **options: Any
) -> EventConsumer:
    return EventConsumer(broker=broker, event_map=events, **around, **options)


async def test_a_function_handler_may_return_one_event_instead_of_a_list(
    around: dict[str, Any],
) -> None:
    broker = InMemoryMessageBroker(channel_prefix="paths")
    audited: list[int] = []

    async def ship(event: Shipped) -> Audited:
        return Audited(order_id=event.order_id)

    async def audit(event: Audited) -> None:
        audited.append(event.order_id)

    events = EventMap()
    events.bind(Shipped, ship)
    events.bind(Audited, audit)
    consumer = consumer_of(broker, events, around)
    await consumer.subscribe("paths:notification_event:*")
    async with consumer:
        await EventEmitter(message_broker=broker).emit(Shipped(order_id=7))
        await wait_until(consumer, lambda s: s.handled >= 2, timeout=WAIT)
    assert audited == [7]
    assert consumer.stats.released == 0
    assert consumer.stats.dead_lettered == 0


async def test_a_handler_returning_something_else_fails_under_its_policy(
    around: dict[str, Any],
) -> None:
    broker = InMemoryMessageBroker(channel_prefix="paths")
    calls = 0

    async def ship(event: Shipped) -> Any:
        nonlocal calls
        calls += 1
        return 42

    events = EventMap()
    events.bind(
        Shipped, ship, policy=Retry(attempts=3, backoff=Backoff(initial=0), then=DeadLetter())
    )
    consumer = consumer_of(broker, events, around)
    await consumer.subscribe("paths:notification_event:*")
    async with consumer:
        await EventEmitter(message_broker=broker).emit(Shipped(order_id=7))
        await wait_until(consumer, lambda s: s.settled >= 1, timeout=WAIT)
    assert calls == 3
    assert consumer.stats.dead_lettered_by_reason == {"handler_failed": 1}
    [dead] = await broker.dead_letters()
    assert "ship" in dead.description
    assert "an event, a list of events or None" in dead.description
    assert consumer.stats.released == 0


class HeldBroker(InMemoryMessageBroker):
    """Publishing waits until the test lets it go (a broker that hangs)."""

    def __init__(self) -> None:
        super().__init__(channel_prefix="paths-held")
        self.entered = asyncio.Event()
        self.go = asyncio.Event()

    async def send_messages(self, messages: Sequence[Message]) -> None:
        self.entered.set()
        await self.go.wait()
        await super().send_messages(messages)

    async def send_message(self, message: Message) -> None:
        await self.send_messages([message])


async def test_a_stop_while_follow_ups_are_published_releases_and_reports_the_delivery(
    around: dict[str, Any],
) -> None:
    broker = InMemoryMessageBroker(channel_prefix="paths")
    held = HeldBroker()

    async def ship(event: Shipped) -> list[Audited]:
        return [Audited(order_id=event.order_id)]

    events = EventMap()
    events.bind(Shipped, ship)
    consumer = consumer_of(
        broker,
        events,
        around,
        event_emitter=EventEmitter(event_map=events, message_broker=held),
        drain_timeout=0.05,
    )
    settled: list[Settled] = []
    consumer.add_listener(settled.append)
    await consumer.subscribe("paths:notification_event:*")
    async with consumer:
        await EventEmitter(message_broker=broker).emit(Shipped(order_id=7))
        async with asyncio.timeout(WAIT):
            await held.entered.wait()
        # Leaving the block stops the consumer while the publish hangs.
    assert [(s.outcome, s.reason) for s in settled] == [
        ("released", "stopped before its handlers finished")
    ]
    assert consumer.stats.released == 1
    assert consumer.stats.in_flight == 0


async def test_a_consumer_keeps_no_handled_events_unless_asked() -> None:
    broker = InMemoryMessageBroker(channel_prefix="paths")

    async def ship(event: Shipped) -> None:
        pass

    events = EventMap()
    events.bind(Shipped, ship)
    kept = EventConsumer(broker=broker, event_map=events)
    keep_handled(kept)
    plain = EventConsumer(broker=broker, event_map=events)
    for consumer in (kept, plain):
        await consumer.subscribe("paths:notification_event:*")
    async with kept, plain:
        await EventEmitter(message_broker=broker).emit(Shipped(order_id=7))
        for consumer in (kept, plain):
            await wait_until(consumer, lambda s: s.handled >= 1, timeout=WAIT)
        # Handled before the wait began: seen where it was kept.
        assert (await wait_for_event(kept, Shipped, timeout=WAIT)).order_id == 7
        with pytest.raises(WaitTimeout, match="a handled Shipped"):
            await wait_for_event(plain, Shipped, timeout=0.05)


def test_production_code_never_imports_the_testing_module() -> None:
    """`EventConsumer.wait_until` (a health probe) works without it, and
    importing `mediator` and every broker leaves it unimported."""
    script = """
import asyncio, sys
import attrs
import brokers, brokers.memory, brokers.redis, brokers.rabbitmq, brokers.kafka, brokers.azure
import mediator, mediator.outbox, mediator.otel, mediator.container, mediator.transport
from mediator import EventConsumer, EventEmitter, EventMap, NotificationEvent

@attrs.frozen(kw_only=True)
class Pinged(NotificationEvent):
    n: int

async def main():
    broker = brokers.memory.InMemoryMessageBroker(channel_prefix="probe")
    events = EventMap()
    async def pinged(event: Pinged) -> None:
        pass
    events.bind(Pinged, pinged)
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe("probe:*")
    async with consumer:
        await EventEmitter(message_broker=broker).emit(Pinged(n=1))
        await consumer.wait_until(lambda s: s.handled == 1, timeout=10)
    assert "mediator.testing" not in sys.modules, "mediator.testing was imported"

asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


async def test_stop_returns_when_a_handler_swallows_its_cancellation(
    around: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The drain has a deadline after the cancel too: a handler that ignores
    cancellation (or a settle stuck on a dead socket) cannot hold stop() for ever."""
    broker = InMemoryMessageBroker(channel_prefix="paths")
    entered = asyncio.Event()
    let_go = asyncio.Event()
    cancellations = 0

    async def stubborn(event: Shipped) -> None:
        nonlocal cancellations
        entered.set()
        while not let_go.is_set():
            try:
                await let_go.wait()
            except asyncio.CancelledError:
                cancellations += 1  # swallowed: it goes on waiting

    events = EventMap()
    events.bind(Shipped, stubborn)
    consumer = consumer_of(broker, events, around, drain_timeout=0.05)
    await consumer.subscribe("paths:notification_event:*")
    await consumer.start()
    try:
        await EventEmitter(message_broker=broker).emit(Shipped(order_id=7))
        async with asyncio.timeout(WAIT):
            await entered.wait()
        async with asyncio.timeout(WAIT):
            await consumer.stop()
        assert cancellations >= 1
        assert not consumer.running
        assert any("did not end after being cancelled" in r.getMessage() for r in caplog.records), [
            r.getMessage() for r in caplog.records
        ]
    finally:
        let_go.set()


async def test_a_failed_dead_letter_write_while_stopping_keeps_the_cancellation(
    around: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery cancelled by a stop, already at its delivery limit, is
    dead-lettered; when that write fails the stop still goes on (the
    cancellation is not replaced by the write's error) and it is released."""
    broker = InMemoryMessageBroker(channel_prefix="paths")
    entered = asyncio.Event()

    async def slow(event: Shipped) -> None:
        entered.set()
        await asyncio.Event().wait()

    events = EventMap()
    events.bind(Shipped, slow)
    consumer = consumer_of(broker, events, around, drain_timeout=0.05, max_deliveries=1)
    settled: list[Settled] = []
    consumer.add_listener(settled.append)
    await consumer.subscribe("paths:notification_event:*")

    async def refused(self: MemoryDelivery, reason: str, description: str) -> None:
        raise ConnectionError("the dead-letter store is down")

    monkeypatch.setattr(MemoryDelivery, "_dead_letter", refused)
    await consumer.start()  # live when it returns; run() keeps it going
    runner = asyncio.create_task(consumer.run())
    try:
        await EventEmitter(message_broker=broker).emit(Shipped(order_id=7))
        async with asyncio.timeout(WAIT):
            await entered.wait()
        async with asyncio.timeout(WAIT):
            await consumer.stop()
            await runner  # run() returns: the stop was not turned into the write's error
    finally:
        runner.cancel()
    assert not consumer.running
    assert consumer.stats.in_flight == 0
    assert [(s.outcome, s.reason) for s in settled] == [
        (
            "released",
            "dead-lettering it (too_many_deliveries) failed: "
            "ConnectionError('the dead-letter store is down')",
        )
    ]
