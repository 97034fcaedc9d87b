"""EventMap bindings, the emitter's dispatch order, error policies and publishing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import attrs
import pytest

from brokers.memory import InMemoryMessageBroker
from mediator import (
    Backoff,
    DomainEvent,
    ECSTEvent,
    Event,
    EventBindingError,
    EventCycleError,
    EventEmitter,
    EventHandler,
    EventMap,
    FailFast,
    Ignore,
    LogAndContinue,
    Message,
    MessageCodec,
    NoMessageBrokerError,
    NotificationEvent,
    Retry,
    event_name,
)

NO_WAIT = Backoff(initial=0, jitter=0)


@attrs.frozen(kw_only=True)
class OrderPlaced(DomainEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class ExpressOrderPlaced(OrderPlaced):
    pass


@attrs.frozen(kw_only=True)
class StockReserved(DomainEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class InvoiceSent(DomainEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class OrderShipped(NotificationEvent, name="orders.shipped"):
    order_id: int


@attrs.frozen(kw_only=True)
class OrderState(ECSTEvent):
    order_id: int
    status: str


class Log:
    def __init__(self) -> None:
        self.entries: list[str] = []

    def handler(self, label: str, raises: Sequence[Event] = ()) -> object:
        async def record(event: Event) -> Sequence[Event]:
            self.entries.append(f"{label}:{type(event).__name__}")
            return raises

        return record


def test_event_name_defaults_to_class_name_and_can_be_set() -> None:
    assert event_name(OrderPlaced) == "OrderPlaced"
    assert event_name(OrderShipped) == "orders.shipped"
    assert event_name(ExpressOrderPlaced) == "ExpressOrderPlaced"


def test_events_carry_an_id_and_an_aware_utc_timestamp() -> None:
    first, second = OrderPlaced(order_id=1), OrderPlaced(order_id=1)
    assert first.event_id != second.event_id
    assert first.event_timestamp.utcoffset() is not None
    assert first.event_timestamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_a_timestamp_given_is_kept_as_given_naive_or_with_its_offset() -> None:
    from datetime import datetime, timedelta, timezone

    naive = datetime(2026, 1, 1, 9, 30)
    assert OrderPlaced(order_id=1, event_timestamp=naive).event_timestamp is naive
    plus_two = datetime(2026, 1, 1, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    assert OrderPlaced(order_id=1, event_timestamp=plus_two).event_timestamp is plus_two


async def test_several_handlers_run_in_bind_order_and_base_bindings_get_subclasses() -> None:
    log = Log()
    events = EventMap()
    events.bind(OrderPlaced, log.handler("first"))  # type: ignore[arg-type]
    events.bind(Event, log.handler("audit"))  # type: ignore[arg-type]
    events.bind(OrderPlaced, log.handler("second"))  # type: ignore[arg-type]
    await EventEmitter(event_map=events).emit(ExpressOrderPlaced(order_id=1))
    assert log.entries == [
        "first:ExpressOrderPlaced",
        "audit:ExpressOrderPlaced",
        "second:ExpressOrderPlaced",
    ]


async def test_glob_bindings_match_event_names() -> None:
    log = Log()
    events = EventMap()
    events.bind("Order*", log.handler("orders"))  # type: ignore[arg-type]
    events.bind("Stock?eserved", log.handler("stock"))  # type: ignore[arg-type]
    emitter = EventEmitter(event_map=events)
    await emitter.emit_all([OrderPlaced(order_id=1), StockReserved(order_id=1)])
    await emitter.emit(InvoiceSent(order_id=1))
    assert log.entries == ["orders:OrderPlaced", "stock:StockReserved"]


async def test_handler_classes_and_the_decorator_form() -> None:
    received: list[int] = []

    class Reserve(EventHandler[OrderPlaced]):
        async def handle(self, event: OrderPlaced) -> None:
            received.append(event.order_id)

    events = EventMap()
    events.bind(OrderPlaced, Reserve)

    @events.bind(OrderPlaced)
    async def twice(event: OrderPlaced) -> None:
        received.append(event.order_id * 2)

    await EventEmitter(event_map=events).emit(OrderPlaced(order_id=21))
    assert received == [21, 42]
    assert twice.__name__ == "twice"  # the decorator hands the function back


def test_binding_nonsense_is_refused_with_a_reason() -> None:
    events = EventMap()
    with pytest.raises(EventBindingError, match="a class with a `handle` method or a function"):
        events.bind(OrderPlaced, 42)  # type: ignore[call-overload]
    with pytest.raises(EventBindingError, match="needs a `handle"):
        events.bind(OrderPlaced, int)
    with pytest.raises(EventBindingError, match="to_thread is for a sync function"):
        events.bind(OrderPlaced, Log().handler("x"), to_thread=True)  # type: ignore[arg-type]
    with pytest.raises(EventBindingError, match="Event subclass or a glob"):
        events.bind(int, Log().handler("x"))  # type: ignore[arg-type]


async def test_follow_up_events_are_processed_breadth_first() -> None:
    log = Log()
    events = EventMap()
    events.bind(OrderPlaced, log.handler("a", raises=[StockReserved(order_id=1)]))  # type: ignore[arg-type]
    events.bind(OrderPlaced, log.handler("b", raises=[InvoiceSent(order_id=1)]))  # type: ignore[arg-type]
    events.bind(StockReserved, log.handler("c"))  # type: ignore[arg-type]
    events.bind(InvoiceSent, log.handler("d"))  # type: ignore[arg-type]
    events.bind(ExpressOrderPlaced, log.handler("e"))  # type: ignore[arg-type]
    await EventEmitter(event_map=events).emit_all(
        [OrderPlaced(order_id=1), ExpressOrderPlaced(order_id=2)]
    )
    # Both first-level events (and every handler of the first) before any follow-up.
    assert log.entries == [
        "a:OrderPlaced",
        "b:OrderPlaced",
        "a:ExpressOrderPlaced",
        "b:ExpressOrderPlaced",
        "e:ExpressOrderPlaced",
        "c:StockReserved",
        "d:InvoiceSent",
        "c:StockReserved",
        "d:InvoiceSent",
    ]


async def test_an_event_cycle_is_stopped_with_an_error_naming_it() -> None:
    class Reserve(EventHandler[OrderPlaced]):
        async def handle(self, event: OrderPlaced) -> None:
            self.events.append(StockReserved(order_id=event.order_id))

    class Reorder(EventHandler[StockReserved]):
        async def handle(self, event: StockReserved) -> None:
            self.events.append(OrderPlaced(order_id=event.order_id))

    events = EventMap()
    events.bind(OrderPlaced, Reserve)
    events.bind(StockReserved, Reorder)
    with pytest.raises(EventCycleError, match="OrderPlaced -> StockReserved -> OrderPlaced"):
        await EventEmitter(event_map=events).emit(OrderPlaced(order_id=1))


async def test_broker_events_are_published_in_raised_order_as_one_batch() -> None:
    class CountingBroker(InMemoryMessageBroker):
        batches: list[int]

        async def send_messages(self, messages: Sequence[Message]) -> None:
            self.batches.append(len(messages))
            await super().send_messages(messages)

    broker = CountingBroker()
    broker.batches = []
    log = Log()
    events = EventMap()
    events.bind(OrderPlaced, log.handler("local", raises=[OrderShipped(order_id=5)]))  # type: ignore[arg-type]
    emitter = EventEmitter(event_map=events, message_broker=broker)
    await emitter.emit_all([OrderState(order_id=5, status="placed"), OrderPlaced(order_id=5)])
    assert [m.message_name for m in broker.messages] == ["OrderState", "orders.shipped"]
    assert [m.message_type for m in broker.messages] == ["ecst_event", "notification_event"]
    assert broker.batches == [2]
    assert log.entries == ["local:OrderPlaced"]  # broker events never reach local handlers


async def test_a_broker_event_without_a_broker_is_a_clear_error() -> None:
    with pytest.raises(NoMessageBrokerError, match="OrderShipped is a notification_event"):
        await EventEmitter(event_map=EventMap()).emit(OrderShipped(order_id=1))


async def test_fail_fast_stops_everything_and_publishes_nothing() -> None:
    broker = InMemoryMessageBroker()
    log = Log()

    async def broken(event: OrderPlaced) -> None:
        raise RuntimeError("stock service down")

    events = EventMap()
    events.bind(OrderPlaced, broken)
    events.bind(OrderPlaced, log.handler("after"))  # type: ignore[arg-type]
    emitter = EventEmitter(event_map=events, message_broker=broker)
    with pytest.raises(RuntimeError, match="stock service down"):
        await emitter.emit_all([OrderPlaced(order_id=1), OrderShipped(order_id=1)])
    assert log.entries == []
    assert list(broker.messages) == []


@pytest.mark.parametrize("policy", [LogAndContinue(), Ignore()])
async def test_log_and_continue_and_ignore_let_the_next_handler_run(
    policy: LogAndContinue | Ignore, caplog: pytest.LogCaptureFixture
) -> None:
    log = Log()

    async def broken(event: OrderPlaced) -> None:
        raise RuntimeError("boom")

    events = EventMap()
    events.bind(OrderPlaced, broken, policy=policy)
    events.bind(OrderPlaced, log.handler("after"))  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="mediator.events"):
        await EventEmitter(event_map=events).emit(OrderPlaced(order_id=1))
    assert log.entries == ["after:OrderPlaced"]
    logged = [r for r in caplog.records if r.levelno >= logging.INFO]
    if isinstance(policy, LogAndContinue):
        assert len(logged) == 1
        assert "broken failed on OrderPlaced" in logged[0].getMessage()
        assert logged[0].exc_info is not None
    else:
        assert logged == []


async def test_retry_calls_again_until_the_handler_succeeds() -> None:
    calls: list[int] = []

    async def flaky(event: OrderPlaced) -> None:
        calls.append(event.order_id)
        if len(calls) < 3:
            raise ConnectionError("try again")

    events = EventMap()
    events.bind(OrderPlaced, flaky, policy=Retry(attempts=3, backoff=NO_WAIT))
    await EventEmitter(event_map=events).emit(OrderPlaced(order_id=9))
    assert calls == [9, 9, 9]


@pytest.mark.parametrize(
    ("then", "raises"), [(FailFast(), True), (LogAndContinue(), False), (Ignore(), False)]
)
async def test_retry_applies_its_final_policy_when_attempts_run_out(
    then: FailFast | LogAndContinue | Ignore, raises: bool
) -> None:
    calls = 0

    async def always_failing(event: OrderPlaced) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError(f"attempt {calls}")

    events = EventMap()
    events.bind(OrderPlaced, always_failing, policy=Retry(attempts=2, backoff=NO_WAIT, then=then))
    emitter = EventEmitter(event_map=events)
    if raises:
        with pytest.raises(ConnectionError, match="attempt 2"):
            await emitter.emit(OrderPlaced(order_id=1))
    else:
        await emitter.emit(OrderPlaced(order_id=1))
    assert calls == 2


def test_backoff_grows_exponentially_up_to_its_maximum() -> None:
    backoff = Backoff(initial=0.1, multiplier=2, maximum=0.5, jitter=0)
    assert [backoff.delay(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.5]
    jittered = Backoff(initial=1, jitter=0.1)
    assert all(0.9 <= jittered.delay(1) <= 1.1 for _ in range(50))


async def test_the_map_default_policy_applies_to_bindings_without_one() -> None:
    log = Log()

    async def broken(event: OrderPlaced) -> None:
        raise RuntimeError("boom")

    events = EventMap(default_policy=Ignore())
    events.bind(OrderPlaced, broken)
    events.bind(OrderPlaced, log.handler("after"))  # type: ignore[arg-type]
    await EventEmitter(event_map=events).emit(OrderPlaced(order_id=1))
    assert log.entries == ["after:OrderPlaced"]


async def test_concurrent_delivery_runs_handlers_together_within_the_limit() -> None:
    running = 0
    peak = 0
    gate = asyncio.Event()
    arrived = asyncio.Event()

    def make(index: int) -> object:
        async def handler(event: OrderPlaced) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            if running == 2:
                arrived.set()
            await gate.wait()
            running -= 1

        handler.__qualname__ = f"handler{index}"
        return handler

    events = EventMap()
    for index in range(4):
        events.bind(OrderPlaced, make(index))  # type: ignore[arg-type]
    emitter = EventEmitter(event_map=events, max_concurrency=2)
    task = asyncio.create_task(emitter.emit(OrderPlaced(order_id=1)))
    await asyncio.wait_for(arrived.wait(), timeout=5)
    gate.set()
    await asyncio.wait_for(task, timeout=5)
    assert peak == 2


async def test_concurrent_delivery_still_fails_fast() -> None:
    async def broken(event: OrderPlaced) -> None:
        raise RuntimeError("one of many")

    log = Log()
    events = EventMap()
    events.bind(OrderPlaced, broken)
    events.bind(OrderPlaced, log.handler("ok"))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="one of many"):
        await EventEmitter(event_map=events, max_concurrency=4).emit(OrderPlaced(order_id=1))


def test_two_classes_with_one_wire_name_are_refused() -> None:
    @attrs.frozen(kw_only=True)
    class Clash(NotificationEvent, name="orders.shipped"):
        pass

    events = EventMap()
    events.bind(OrderShipped, Log().handler("x"))  # type: ignore[arg-type]
    with pytest.raises(EventBindingError, match=r"Two event classes are named 'orders\.shipped'"):
        events.register(Clash)


async def test_memory_broker_keeps_a_bounded_history() -> None:
    broker = InMemoryMessageBroker(history=3)
    for n in range(5):
        await broker.send_message(MessageCodec.to_message(OrderShipped(order_id=n)))
    assert [m.payload["order_id"] for m in broker.messages] == [2, 3, 4]


async def test_a_handler_may_send_through_the_same_concurrent_emitter() -> None:
    from mediator import Mediator, Request, RequestHandler, RequestMap

    @attrs.frozen
    class Ship(Request[None]):
        order_id: int

    done: list[str] = []
    events = EventMap()
    emitter = EventEmitter(event_map=events, max_concurrency=1 + 1)
    requests = RequestMap()
    mediator = Mediator(request_map=requests, event_emitter=emitter)

    class ShipHandler(RequestHandler[Ship, None]):
        async def handle(self, request: Ship) -> None:
            self.events.append(InvoiceSent(order_id=request.order_id))

    requests.bind(Ship, ShipHandler)

    async def ship(event: OrderPlaced) -> None:
        await mediator.send(Ship(order_id=event.order_id))

    for label in ("x", "y", "z"):
        events.bind(InvoiceSent, Log().handler(label))  # type: ignore[arg-type]

    async def ship_again(event: OrderPlaced) -> None:
        await mediator.send(Ship(order_id=event.order_id))

    # Both slots are held by handlers that wait on nested sends of their own.
    events.bind(OrderPlaced, ship)
    events.bind(OrderPlaced, ship_again)

    @events.bind(InvoiceSent)
    async def finished(event: InvoiceSent) -> None:
        done.append("invoice")

    await asyncio.wait_for(emitter.emit(OrderPlaced(order_id=1)), timeout=5)
    assert done == ["invoice", "invoice"]
