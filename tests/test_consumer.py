"""EventConsumer behaviour, one test body for every transport."""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator
from typing import Any

import attrs
import orjson
import pytest

from brokers.memory import InMemoryMessageBroker
from mediator import (
    Backoff,
    DeadLetter,
    ECSTEvent,
    EventConsumer,
    EventEmitter,
    EventMap,
    FailFast,
    Ignore,
    LogAndContinue,
    Mediator,
    Message,
    MessageCodec,
    NotificationEvent,
    Request,
    RequestHandler,
    RequestMap,
    Retry,
    correlation_scope,
    current_message,
)
from mediator.testing import wait_until
from mediator.transport import DeliveryBase, encode_message
from tests.transports import FACTORIES, Transport

NO_WAIT = Backoff(initial=0, jitter=0)


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class OrderPaid(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class UserJoined(NotificationEvent):
    user_id: int


@attrs.frozen(kw_only=True)
class CustomerState(ECSTEvent):
    customer_id: int
    name: str


@pytest.fixture(params=sorted(FACTORIES))
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    prefix = f"mtk-{uuid.uuid4().hex[:8]}"
    async with FACTORIES[request.param](prefix, request) as transport:
        yield transport


def prefix_of(transport: Transport) -> str:
    return transport.broker.channel_prefix


class Inbox:
    """Handlers that record what they received."""

    def __init__(self) -> None:
        self.events: list[object] = []

    async def __call__(self, event: object) -> None:
        self.events.append(event)


async def publish(transport: Transport, *events: NotificationEvent | ECSTEvent) -> None:
    emitter = EventEmitter(message_broker=transport.new_broker())
    await emitter.emit_all(list(events))


async def test_several_patterns_on_one_consumer(transport: Transport) -> None:
    inbox = Inbox()
    events = EventMap()
    for event_type in (OrderPlaced, OrderPaid, UserJoined, CustomerState):
        events.bind(event_type, inbox)
    consumer = EventConsumer(broker=transport.broker, event_map=events)
    p = prefix_of(transport)
    await consumer.subscribe(f"{p}:notification_event:Order*", transport.own_group("first"))
    await consumer.subscribe(f"{p}:ecst_event:*", transport.own_group("second"))
    async with consumer:
        await publish(
            transport,
            UserJoined(user_id=1),
            OrderPlaced(order_id=1),
            CustomerState(customer_id=3, name="ada"),
            OrderPaid(order_id=1),
        )
        await wait_until(consumer, lambda s: s.handled >= 3)
    assert sorted(type(e).__name__ for e in inbox.events) == [
        "CustomerState",
        "OrderPaid",
        "OrderPlaced",
    ]
    assert consumer.stats.received == 3


async def test_overlapping_patterns_deliver_once_per_subscription(transport: Transport) -> None:
    inbox = Inbox()
    events = EventMap()
    events.bind(OrderPlaced, inbox)
    consumer = EventConsumer(broker=transport.broker, event_map=events)
    p = prefix_of(transport)
    await consumer.subscribe(f"{p}:*", transport.own_group("first"))
    await consumer.subscribe(f"{p}:notification_event:*", transport.own_group("second"))
    async with consumer:
        await publish(transport, OrderPlaced(order_id=7))
        await wait_until(consumer, lambda s: s.handled >= 2)
    assert [e.order_id for e in inbox.events] == [7, 7]  # type: ignore[attr-defined]


async def test_subscribing_while_running_is_live_when_it_returns(transport: Transport) -> None:
    inbox = Inbox()
    events = EventMap()
    events.bind(OrderPlaced, inbox)
    consumer = EventConsumer(broker=transport.broker, event_map=events)
    async with consumer:
        await consumer.subscribe(f"{prefix_of(transport)}:notification_event:OrderPlaced")
        await publish(transport, OrderPlaced(order_id=1))
        await wait_until(consumer, lambda s: s.handled >= 1)
    assert len(inbox.events) == 1


async def test_consumer_groups_share_and_every_group_gets_everything(
    transport: Transport,
) -> None:
    if not transport.has_groups:
        with pytest.raises(ValueError, match="no consumer groups"):
            await transport.broker.subscribe(f"{prefix_of(transport)}:*", group="billing")
        return
    p = prefix_of(transport)
    inboxes = [Inbox(), Inbox(), Inbox()]
    consumers = []
    for inbox, group in zip(inboxes, ["billing", "billing", "audit"], strict=True):
        events = EventMap()
        events.bind(OrderPlaced, inbox)
        consumer = EventConsumer(broker=transport.new_broker(), event_map=events)
        await consumer.subscribe(f"{p}:notification_event:*", group=group)
        consumers.append(consumer)
    # The group's six may be split in any way between its two members, so
    # either member's settlements can complete it.
    group_done = asyncio.Event()

    def check_group(_: object) -> None:
        if consumers[0].stats.handled + consumers[1].stats.handled >= 6:
            group_done.set()

    for consumer in consumers[:2]:
        consumer.add_listener(check_group)
    for consumer in consumers:
        await consumer.start()
    try:
        await publish(transport, *[OrderPlaced(order_id=n) for n in range(6)])
        await wait_until(consumers[2], lambda s: s.handled >= 6, timeout=15)
        async with asyncio.timeout(15):
            await group_done.wait()
    finally:
        for consumer in consumers:
            await consumer.stop()
    billing = [e.order_id for inbox in inboxes[:2] for e in inbox.events]  # type: ignore[attr-defined]
    assert sorted(billing) == list(range(6))  # each message once within the group
    if transport.round_robin:
        assert inboxes[0].events, "both members of the group share the messages"
        assert inboxes[1].events
    assert sorted(e.order_id for e in inboxes[2].events) == list(range(6))  # type: ignore[attr-defined]


def valid_envelope(order_id: int) -> bytes:
    return encode_message(MessageCodec.to_message(OrderPlaced(order_id=order_id)))


BAD_INPUT = {
    "not_json": b"{nope",
    "not_object": b"[1, 2, 3]",
    "missing_key": orjson.dumps({"message_id": str(uuid.uuid4())}),
    "unknown_name": orjson.dumps(
        {
            "message_type": "notification_event",
            "message_name": "NobodyKnowsMe",
            "message_id": str(uuid.uuid4()),
            "payload": {},
        }
    ),
    "invalid_payload": valid_envelope(1).replace(b'"order_id":1', b'"order_id":"one"'),
    "too_large": b"x" * 4096,
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUT))
async def test_bad_input_is_dead_lettered_and_the_next_message_handled(
    transport: Transport, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = Inbox()
    events = EventMap()
    events.bind(OrderPlaced, inbox)
    consumer = EventConsumer(broker=transport.broker, event_map=events, max_message_size=2048)
    channel = f"{prefix_of(transport)}:notification_event:OrderPlaced"
    await consumer.subscribe(channel)
    async with consumer:
        await transport.publish_raw(channel, BAD_INPUT[kind])
        await publish(transport, OrderPlaced(order_id=2))
        await wait_until(consumer, lambda s: s.handled >= 1 and s.dead_lettered >= 1)
    assert [e.order_id for e in inbox.events] == [2]  # type: ignore[attr-defined]
    assert consumer.stats.dead_lettered_by_reason == {kind: 1}
    assert [reason for reason, _ in await transport.dead_letters()] == [kind]
    assert any(kind in record.getMessage() for record in caplog.records)


async def test_dead_letters_are_read_back_oldest_first_up_to_a_limit(
    transport: Transport,
) -> None:
    # The broker contract's one signature: dead_letters(*, limit=None).
    events = EventMap()
    events.bind(OrderPlaced, Inbox())
    consumer = EventConsumer(broker=transport.broker, event_map=events)
    channel = f"{prefix_of(transport)}:notification_event:OrderPlaced"
    await consumer.subscribe(channel)
    async with consumer:
        await transport.publish_raw(channel, BAD_INPUT["not_json"])
        await wait_until(consumer, lambda s: s.dead_lettered >= 1)
        await transport.publish_raw(channel, BAD_INPUT["not_object"])
        await wait_until(consumer, lambda s: s.dead_lettered >= 2)
    assert [reason for reason, _ in await transport.dead_letters()] == [
        "not_json",
        "not_object",
    ]
    assert [reason for reason, _ in await transport.dead_letters(limit=1)] in (
        ["not_json"],  # a queue or a trimmed stream: its oldest
        ["not_object"],  # Kafka's unbounded topic: its newest
    )


async def run_with_policy(
    transport: Transport, policy: object, failures: int
) -> tuple[EventConsumer, list[int]]:
    calls: list[int] = []

    async def flaky(event: OrderPlaced) -> None:
        calls.append(event.order_id)
        if len(calls) <= failures:
            raise ConnectionError(f"failure {len(calls)}")

    events = EventMap()
    events.bind(OrderPlaced, flaky, policy=policy)  # type: ignore[arg-type]
    consumer = EventConsumer(broker=transport.broker, event_map=events)
    await consumer.subscribe(f"{prefix_of(transport)}:notification_event:*")
    async with consumer:
        await publish(transport, OrderPlaced(order_id=1))
        await wait_until(consumer, lambda s: s.settled >= 1)
    return consumer, calls


async def test_retry_recovers_and_acknowledges(transport: Transport) -> None:
    consumer, calls = await run_with_policy(transport, Retry(attempts=3, backoff=NO_WAIT), 2)
    assert calls == [1, 1, 1]
    assert (consumer.stats.handled, consumer.stats.retried) == (1, 2)


async def test_retry_then_dead_letter_carries_the_exception_text(transport: Transport) -> None:
    consumer, calls = await run_with_policy(
        transport, Retry(attempts=2, backoff=NO_WAIT, then=DeadLetter()), 5
    )
    assert calls == [1, 1]
    assert consumer.stats.dead_lettered_by_reason == {"handler_failed": 1}
    [(reason, description)] = await transport.dead_letters()
    assert reason == "handler_failed"
    assert "failure 2" in description


async def test_the_consumer_default_policy_is_retry_then_dead_letter(
    transport: Transport,
) -> None:
    consumer, calls = await run_with_policy(transport, None, 99)
    assert len(calls) == 3
    assert consumer.stats.dead_lettered_by_reason == {"handler_failed": 1}


@pytest.mark.parametrize("policy", [LogAndContinue(), Ignore()])
async def test_log_and_continue_and_ignore_acknowledge(
    transport: Transport, policy: object
) -> None:
    consumer, calls = await run_with_policy(transport, policy, 1)
    assert calls == [1]
    assert consumer.stats.handled == 1
    assert consumer.stats.dead_lettered == 0


async def test_fail_fast_releases_the_message_and_stops_the_consumer(
    transport: Transport,
) -> None:
    calls: list[int] = []

    async def broken(event: OrderPlaced) -> None:
        calls.append(event.order_id)
        raise RuntimeError("database is gone")

    events = EventMap()
    events.bind(OrderPlaced, broken, policy=FailFast())
    consumer = EventConsumer(broker=transport.broker, event_map=events)
    await consumer.subscribe(f"{prefix_of(transport)}:notification_event:*")
    await consumer.start()  # subscriptions live; run() keeps it going
    runner = asyncio.create_task(consumer.run())
    await publish(transport, OrderPlaced(order_id=1))
    with pytest.raises(RuntimeError, match="database is gone"):
        await asyncio.wait_for(runner, timeout=10)
    assert consumer.stats.released == 1
    assert calls == [1]  # the released message is not taken again by this consumer
    assert not consumer.running


async def test_stop_lets_the_handler_in_flight_finish(transport: Transport) -> None:
    entered = asyncio.Event()
    gate = asyncio.Event()
    finished: list[int] = []

    async def slow(event: OrderPlaced) -> None:
        entered.set()
        await gate.wait()
        finished.append(event.order_id)

    events = EventMap()
    events.bind(OrderPlaced, slow)
    consumer = EventConsumer(broker=transport.broker, event_map=events)
    await consumer.subscribe(f"{prefix_of(transport)}:notification_event:*")
    await consumer.start()
    await publish(transport, OrderPlaced(order_id=4))
    await asyncio.wait_for(entered.wait(), timeout=5)
    stopping = asyncio.create_task(consumer.stop())
    done, _ = await asyncio.wait({stopping}, timeout=0.1)
    assert not done, "stop() must wait for the handler in flight"
    gate.set()
    await asyncio.wait_for(stopping, timeout=5)
    assert finished == [4]
    assert consumer.stats.handled == 1


async def test_stop_cancels_and_releases_what_outlives_the_drain_timeout(
    transport: Transport,
) -> None:
    entered = asyncio.Event()

    async def stuck(event: OrderPlaced) -> None:
        entered.set()
        await asyncio.Event().wait()

    events = EventMap()
    events.bind(OrderPlaced, stuck)
    consumer = EventConsumer(broker=transport.broker, event_map=events, drain_timeout=0.05)
    await consumer.subscribe(f"{prefix_of(transport)}:notification_event:*")
    await consumer.start()
    await publish(transport, OrderPlaced(order_id=4))
    await asyncio.wait_for(entered.wait(), timeout=5)
    await asyncio.wait_for(consumer.stop(), timeout=5)
    assert consumer.stats.released == 1
    assert consumer.stats.handled == 0


async def test_cancelling_run_drains_closes_and_stops(transport: Transport) -> None:
    entered = asyncio.Event()
    left = asyncio.Event()

    async def stuck(event: OrderPlaced) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            left.set()

    events = EventMap()
    events.bind(OrderPlaced, stuck)
    consumer = EventConsumer(broker=transport.broker, event_map=events, drain_timeout=0.05)
    await consumer.subscribe(f"{prefix_of(transport)}:notification_event:*")
    await consumer.start()
    runner = asyncio.create_task(consumer.run())
    await publish(transport, OrderPlaced(order_id=4))
    await asyncio.wait_for(entered.wait(), timeout=5)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(runner, timeout=5)
    # Cancellation cleaned up as stop() does: the handler past the drain
    # timeout was cancelled, its delivery released, the consumer is down.
    assert left.is_set()
    assert not consumer.running
    assert consumer.stats.released == 1
    assert consumer.stats.in_flight == 0


async def test_headers_interceptors_and_correlation_flow(transport: Transport) -> None:
    p = prefix_of(transport)
    seen_headers: list[dict[str, str]] = []

    def add_tenant(message: Message) -> Message:
        return attrs.evolve(message, headers={**message.headers, "tenant": "acme"})

    def check_tenant(message: Message) -> None:
        if message.headers.get("tenant") != "acme":
            raise PermissionError("unknown tenant")

    async def charge(event: OrderPlaced) -> list[OrderPaid]:
        message = current_message()
        assert message is not None
        seen_headers.append(dict(message.headers))
        return [OrderPaid(order_id=event.order_id)]

    @attrs.frozen
    class PlaceOrder(Request[None]):
        order_id: int

    class PlaceOrderHandler(RequestHandler[PlaceOrder, None]):
        async def handle(self, request: PlaceOrder) -> None:
            self.events.append(OrderPlaced(order_id=request.order_id))

    producer_broker = transport.new_broker()
    requests = RequestMap()
    requests.bind(PlaceOrder, PlaceOrderHandler)
    mediator = Mediator(
        request_map=requests,
        event_emitter=EventEmitter(message_broker=producer_broker, outgoing=[add_tenant]),
    )

    paid = Inbox()
    events = EventMap()
    events.bind(OrderPlaced, charge)
    consumer = EventConsumer(
        broker=transport.broker,
        event_map=events,
        incoming=[check_tenant],
        event_emitter=EventEmitter(message_broker=transport.broker, outgoing=[add_tenant]),
    )
    await consumer.subscribe(f"{p}:notification_event:OrderPlaced", transport.own_group("first"))
    watch_events = EventMap()
    watch_events.bind(OrderPaid, paid)
    watcher = EventConsumer(broker=transport.new_broker(), event_map=watch_events)
    await watcher.subscribe(f"{p}:notification_event:OrderPaid", transport.own_group("second"))

    async with consumer, watcher:
        with correlation_scope("request-42"):
            await mediator.send(PlaceOrder(order_id=9))
        await transport.publish_raw(
            f"{p}:notification_event:OrderPlaced", valid_envelope(10)
        )  # no tenant header: rejected by the incoming hook
        await wait_until(watcher, lambda s: s.handled >= 1)
        await wait_until(consumer, lambda s: s.settled >= 2)

    assert seen_headers == [{"correlation_id": "request-42", "tenant": "acme"}]
    assert consumer.stats.dead_lettered_by_reason == {"rejected": 1}
    [order_paid] = paid.events
    assert order_paid.order_id == 9  # type: ignore[attr-defined]


async def test_follow_ups_carry_correlation_and_causation_ids() -> None:
    from brokers.memory import InMemoryMessageBroker

    broker = InMemoryMessageBroker(channel_prefix="app")

    async def charge(event: OrderPlaced) -> list[OrderPaid]:
        return [OrderPaid(order_id=event.order_id)]

    events = EventMap()
    events.bind(OrderPlaced, charge)
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe("app:notification_event:OrderPlaced")
    async with consumer:
        with correlation_scope("corr-1"):
            await EventEmitter(message_broker=broker).emit(OrderPlaced(order_id=1))
        await wait_until(consumer, lambda s: s.handled >= 1)
    placed, paid_message = broker.messages
    assert placed.headers == {"correlation_id": "corr-1"}
    assert paid_message.headers == {
        "correlation_id": "corr-1",
        "causation_id": str(placed.message_id),
    }


async def test_a_full_buffer_makes_the_publisher_wait_instead_of_growing() -> None:
    from brokers.memory import InMemoryMessageBroker

    broker = InMemoryMessageBroker(channel_prefix="bp", buffer_size=2)
    entered = asyncio.Event()
    gate = asyncio.Event()
    handled: list[int] = []

    async def slow(event: OrderPlaced) -> None:
        entered.set()
        await gate.wait()
        handled.append(event.order_id)

    events = EventMap()
    events.bind(OrderPlaced, slow)
    consumer = EventConsumer(broker=broker, event_map=events, max_concurrency=1)
    await consumer.subscribe("bp:notification_event:*")
    emitter = EventEmitter(message_broker=broker)
    async with consumer:
        await emitter.emit(OrderPlaced(order_id=1))
        await asyncio.wait_for(entered.wait(), timeout=5)  # the one slot is busy
        await emitter.emit(OrderPlaced(order_id=2))
        await emitter.emit(OrderPlaced(order_id=3))  # the buffer of 2 is full now
        blocked = asyncio.create_task(emitter.emit(OrderPlaced(order_id=4)))
        done, _ = await asyncio.wait({blocked}, timeout=0.1)
        assert not done, "the publisher must wait for room in the buffer"
        assert consumer.stats.in_flight == 1
        gate.set()
        await asyncio.wait_for(blocked, timeout=5)
        await wait_until(consumer, lambda s: s.handled >= 4)
    assert handled == [1, 2, 3, 4]


async def test_run_returns_only_after_a_stop_from_elsewhere_has_drained(
    transport: Transport,
) -> None:
    entered = asyncio.Event()
    gate = asyncio.Event()

    async def slow(event: OrderPlaced) -> None:
        entered.set()
        await gate.wait()

    events = EventMap()
    events.bind(OrderPlaced, slow)
    consumer = EventConsumer(broker=transport.broker, event_map=events)
    await consumer.subscribe(f"{prefix_of(transport)}:notification_event:*")
    await consumer.start()
    runner = asyncio.create_task(consumer.run())
    await publish(transport, OrderPlaced(order_id=1))
    await asyncio.wait_for(entered.wait(), timeout=5)
    stopper = asyncio.create_task(consumer.stop())  # e.g. a SIGTERM handler
    done, _ = await asyncio.wait({runner, stopper}, timeout=0.1)
    assert not done, "neither run() nor stop() may return while a handler runs"
    gate.set()
    await asyncio.wait_for(asyncio.gather(runner, stopper), timeout=5)
    assert consumer.stats.handled == 1


async def test_a_message_released_too_often_is_dead_lettered() -> None:
    from brokers.memory import InMemoryMessageBroker
    from mediator import DomainEvent

    @attrs.frozen(kw_only=True)
    class Audited(DomainEvent):
        order_id: int

    broker = InMemoryMessageBroker(channel_prefix="loop")

    async def handle(event: OrderPlaced) -> list[Audited]:
        return [Audited(order_id=event.order_id)]

    async def audit(event: Audited) -> None:
        raise RuntimeError("audit log is read-only")  # fail-fast locally: release

    events = EventMap()
    events.bind(OrderPlaced, handle)
    events.bind(Audited, audit, policy=FailFast())
    consumer = EventConsumer(broker=broker, event_map=events, max_deliveries=3)
    await consumer.subscribe("loop:notification_event:*")
    async with consumer:
        await EventEmitter(message_broker=broker).emit(OrderPlaced(order_id=1))
        await wait_until(consumer, lambda s: s.dead_lettered >= 1)
    assert consumer.stats.released == 2
    assert consumer.stats.dead_lettered_by_reason == {"too_many_deliveries": 1}
    assert (await broker.dead_letters())[0].delivery_count == 3


class ChainedDelivery(DeliveryBase):
    """A delivery of a transport that hands records on in order (as Kafka's
    ordered partitions do): the next one comes from `next_in_order`."""

    __slots__ = ("queue",)

    def __init__(self, data: bytes, queue: collections.deque[ChainedDelivery]) -> None:
        super().__init__("chain:notification_event:OrderPlaced", data)
        self.queue = queue

    def next_in_order(self) -> ChainedDelivery | None:
        assert self.settled is not None, "the next one is asked for only once this one is settled"
        return self.queue.popleft() if self.queue else None

    async def _ack(self) -> None:
        pass

    async def _release(self) -> None:
        pass

    async def _dead_letter(self, reason: str, description: str) -> None:
        pass


class AckedInMemory(ChainedDelivery):
    """A delivery whose transport acknowledges in memory (as Kafka's does):
    `ack_nowait` settles it, and `ack()` must not be awaited as well."""

    __slots__ = ()

    def ack_nowait(self) -> bool:
        self._settling("ack")
        return True

    async def _ack(self) -> None:
        raise AssertionError("ack() awaited for a delivery that ack_nowait() settled")


class ChainBroker(InMemoryMessageBroker):
    """Its one subscription yields the head of `queue`; the rest follow it."""

    def __init__(self, count: int, kind: type[ChainedDelivery] = ChainedDelivery) -> None:
        super().__init__(channel_prefix="chain")
        self.queue: collections.deque[ChainedDelivery] = collections.deque()
        self.all = [kind(valid_envelope(order_id), self.queue) for order_id in range(count)]
        self.queue.extend(self.all[1:])

    async def subscribe(self, pattern: str, *, group: str | None = None) -> Any:
        head = self.all[0]

        class Subscription:
            def __init__(self) -> None:
                self.pattern, self.group = pattern, group
                self.closed = asyncio.Event()

            async def __aiter__(self) -> AsyncIterator[ChainedDelivery]:
                yield head
                await self.closed.wait()

            async def close(self) -> None:
                self.closed.set()

        return Subscription()


async def test_deliveries_handed_on_in_order_are_handled_in_order_by_one_task() -> None:
    broker = ChainBroker(count=200)
    seen: list[tuple[int, asyncio.Task[Any] | None]] = []

    async def handle(event: OrderPlaced) -> None:
        seen.append((event.order_id, asyncio.current_task()))

    events = EventMap()
    events.bind(OrderPlaced, handle)
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe("chain:notification_event:*")
    async with consumer:
        await wait_until(consumer, lambda s: s.handled >= 200)
    assert [order_id for order_id, _ in seen] == list(range(200))
    assert len({task for _, task in seen}) == 1
    assert all(delivery.settled == "ack" for delivery in broker.all)


async def _noop(event: OrderPlaced) -> None:
    pass


async def test_a_delivery_acknowledged_in_memory_is_settled_once_without_awaiting_ack() -> None:
    broker = ChainBroker(count=150, kind=AckedInMemory)  # past two of the task's yields
    events = EventMap()
    events.bind(OrderPlaced, _noop)
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe("chain:notification_event:*")
    async with consumer:
        await wait_until(consumer, lambda s: s.handled >= 150)
    assert consumer.stats.handled == 150
    assert consumer.stats.released == consumer.stats.dead_lettered == 0
    assert all(delivery.settled == "ack" for delivery in broker.all)


async def test_a_stopping_consumer_takes_no_more_of_a_chain() -> None:
    broker = ChainBroker(count=5)
    entered, gate = asyncio.Event(), asyncio.Event()
    handled: list[int] = []

    async def handle(event: OrderPlaced) -> None:
        if event.order_id == 1:
            entered.set()
            await gate.wait()
        handled.append(event.order_id)

    events = EventMap()
    events.bind(OrderPlaced, handle)
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe("chain:notification_event:*")
    await consumer.start()
    await asyncio.wait_for(entered.wait(), timeout=5)
    stopping = asyncio.create_task(consumer.stop())
    for _ in range(100):  # a few turns of the loop: until stop() has begun its drain
        if not consumer.running:
            break
        await asyncio.sleep(0)
    assert not consumer.running
    gate.set()
    await asyncio.wait_for(stopping, timeout=5)
    assert handled == [0, 1]
    # Left with the transport: neither handled nor settled.
    assert [delivery.settled for delivery in broker.all] == ["ack", "ack", None, None, None]
    assert len(broker.queue) == 3
