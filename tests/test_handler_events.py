"""Events belong to the send that raised them, even on one shared handler instance.

A container may hand the same handler instance (a singleton) to concurrent
sends. Each test below holds two runs inside `handle` at once, makes one of
them fail, and checks that the other emits exactly its own events.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, TypeVar, cast

import attrs
import pytest

from brokers.memory import InMemoryMessageBroker
from mediator import (
    DomainEvent,
    Event,
    EventEmitter,
    EventHandler,
    EventMap,
    Mediator,
    NotificationEvent,
    Request,
    RequestHandler,
    RequestMap,
    StreamingRequestHandler,
    StreamRequest,
)

T = TypeVar("T")

WAIT = 5.0  # seconds; only reached when a run never arrives at the barrier

Failing = Literal["first", "second"]
"""Which of the two concurrent runs fails: the first to enter `handle` or the second."""


class Singletons:
    """A container with the scoped protocol whose resolver returns one instance per type."""

    def __init__(self, *instances: object) -> None:
        self.instances = {type(instance): instance for instance in instances}

    def scope(self) -> Singletons:
        return self

    async def __aenter__(self) -> Singletons:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def resolve(self, type_: type[T]) -> T:
        return cast(T, self.instances[type_])


class Barrier:
    """Holds each run until two runs are inside `handle` at the same time."""

    def __init__(self) -> None:
        self.inside = 0
        self.both_inside = asyncio.Event()

    async def wait(self) -> None:
        self.inside += 1
        if self.inside == 2:
            self.both_inside.set()
        async with asyncio.timeout(WAIT):
            await self.both_inside.wait()


class HandlerFailed(Exception):
    """What the failing run raises."""


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class StockCounted(DomainEvent):
    order_id: int


def published_ids(broker: InMemoryMessageBroker) -> list[int]:
    return [message.payload["order_id"] for message in broker.messages]


def failing_ids(failing: Failing) -> tuple[int, int]:
    """(failing order id, succeeding order id): order 1 enters `handle` first."""
    return (1, 2) if failing == "first" else (2, 1)


async def run_both(first: Any, second: Any) -> list[object]:
    """Run two coroutines concurrently, `first` scheduled first; results or exceptions."""
    outcomes: list[object] = list(await asyncio.gather(first, second, return_exceptions=True))
    return outcomes


# Requests: Mediator.send


@attrs.frozen(kw_only=True)
class PlaceOrder(Request[int]):
    order_id: int
    fail: bool = False


class PlaceOrderHandler(RequestHandler[PlaceOrder, int]):
    def __init__(self) -> None:
        self.barrier = Barrier()

    async def handle(self, request: PlaceOrder) -> int:
        self.events.append(OrderPlaced(order_id=request.order_id))
        self.events.append(StockCounted(order_id=request.order_id))
        await self.barrier.wait()
        if request.fail:
            raise HandlerFailed(request.order_id)
        return request.order_id


def counting_map(counted: list[int]) -> EventMap:
    events = EventMap()

    @events.bind(StockCounted)
    async def count(event: StockCounted) -> None:
        counted.append(event.order_id)

    return events


def mediator_of(
    bindings: dict[type[Any], type[Any]],
    container: Any,
    counted: list[int],
    broker: InMemoryMessageBroker | None = None,
) -> Mediator:
    """A Mediator over `bindings` whose StockCounted events are counted into `counted`."""
    requests = RequestMap()
    for request_type, handler_type in bindings.items():
        requests.bind(request_type, handler_type)
    return Mediator(
        request_map=requests,
        event_emitter=EventEmitter(event_map=counting_map(counted), message_broker=broker),
        container=container,
    )


@pytest.mark.parametrize("failing", ["first", "second"])
async def test_a_singleton_request_handler_emits_only_the_events_of_its_own_send(
    failing: Failing,
) -> None:
    shared = PlaceOrderHandler()
    broker = InMemoryMessageBroker()
    counted: list[int] = []
    mediator = mediator_of({PlaceOrder: PlaceOrderHandler}, Singletons(shared), counted, broker)
    failed_id, ok_id = failing_ids(failing)

    outcomes = await run_both(
        mediator.send(PlaceOrder(order_id=1, fail=failed_id == 1)),
        mediator.send(PlaceOrder(order_id=2, fail=failed_id == 2)),
    )

    failure = outcomes[failed_id - 1]
    assert isinstance(failure, HandlerFailed)
    assert outcomes[ok_id - 1] == ok_id
    assert counted == [ok_id]
    assert published_ids(broker) == [ok_id]
    assert shared.events == []  # nothing was left behind on the shared instance


async def test_a_singleton_request_handler_emits_its_events_once_per_send() -> None:
    shared = PlaceOrderHandler()
    broker = InMemoryMessageBroker()
    counted: list[int] = []
    mediator = mediator_of({PlaceOrder: PlaceOrderHandler}, Singletons(shared), counted, broker)

    assert await run_both(
        mediator.send(PlaceOrder(order_id=1)), mediator.send(PlaceOrder(order_id=2))
    ) == [1, 2]

    assert sorted(counted) == [1, 2]
    assert sorted(published_ids(broker)) == [1, 2]


class DiatorStyleHandler:
    """A handler that keeps its own `events` list, as diator's docs write one."""

    def __init__(self) -> None:
        self._events: list[Event] = []

    @property
    def events(self) -> list[Event]:
        return self._events

    async def handle(self, request: PlaceOrder) -> int:
        self._events.append(StockCounted(order_id=request.order_id))
        return request.order_id


async def test_a_shared_diator_style_handler_is_read_and_emptied_after_each_send() -> None:
    shared = DiatorStyleHandler()
    counted: list[int] = []
    mediator = mediator_of({PlaceOrder: DiatorStyleHandler}, Singletons(shared), counted)
    await mediator.send(PlaceOrder(order_id=1))
    await mediator.send(PlaceOrder(order_id=2))
    assert counted == [1, 2]
    assert shared.events == []


@attrs.frozen(kw_only=True)
class Outer(Request[None]):
    pass


class OuterHandler(RequestHandler[Outer, None]):
    """Sends a request handled by the same singleton handler type from inside `handle`."""

    def __init__(self) -> None:
        self.mediator: Mediator | None = None

    async def handle(self, request: Outer) -> None:
        assert self.mediator is not None
        self.events.append(StockCounted(order_id=10))
        await self.mediator.send(PlaceOrder(order_id=20))
        self.events.append(StockCounted(order_id=11))


class SoloPlaceOrderHandler(RequestHandler[PlaceOrder, int]):
    async def handle(self, request: PlaceOrder) -> int:
        self.events.append(StockCounted(order_id=request.order_id))
        return request.order_id


async def test_a_send_inside_a_handler_keeps_the_events_of_each_send_apart() -> None:
    outer = OuterHandler()
    counted: list[int] = []
    mediator = mediator_of(
        {Outer: OuterHandler, PlaceOrder: SoloPlaceOrderHandler},
        Singletons(outer, SoloPlaceOrderHandler()),
        counted,
    )
    outer.mediator = mediator
    await mediator.send(Outer())
    # The inner send emits its event when it returns; the outer send's two
    # events follow when the outer handle returns.
    assert counted == [20, 10, 11]


# Event handlers: EventMap class handlers resolved through a container


@attrs.frozen(kw_only=True)
class PaymentReceived(DomainEvent):
    order_id: int
    fail: bool = False


class ShipOnPayment(EventHandler[PaymentReceived]):
    def __init__(self) -> None:
        self.barrier = Barrier()

    async def handle(self, event: PaymentReceived) -> None:
        self.events.append(StockCounted(order_id=event.order_id))
        self.events.append(OrderPlaced(order_id=event.order_id))
        await self.barrier.wait()
        if event.fail:
            raise HandlerFailed(event.order_id)


@pytest.mark.parametrize("failing", ["first", "second"])
async def test_a_singleton_event_handler_emits_only_the_follow_ups_of_its_own_event(
    failing: Failing,
) -> None:
    shared = ShipOnPayment()
    broker = InMemoryMessageBroker()
    counted: list[int] = []
    events = counting_map(counted)
    events.bind(PaymentReceived, ShipOnPayment)
    emitter = EventEmitter(event_map=events, message_broker=broker, container=Singletons(shared))
    failed_id, ok_id = failing_ids(failing)

    outcomes = await run_both(
        emitter.emit(PaymentReceived(order_id=1, fail=failed_id == 1)),
        emitter.emit(PaymentReceived(order_id=2, fail=failed_id == 2)),
    )

    assert isinstance(outcomes[failed_id - 1], HandlerFailed)
    assert outcomes[ok_id - 1] is None
    assert counted == [ok_id]
    assert published_ids(broker) == [ok_id]
    assert shared.events == []


# Streams: Mediator.stream


@attrs.frozen(kw_only=True)
class ListOrders(StreamRequest[int]):
    order_id: int
    fail: bool = False


class ListOrdersHandler(StreamingRequestHandler[ListOrders, int]):
    def __init__(self) -> None:
        self.barrier = Barrier()

    async def handle(self, request: ListOrders) -> AsyncIterator[int]:
        self.events.append(StockCounted(order_id=request.order_id))
        await self.barrier.wait()
        if request.fail:
            raise HandlerFailed(request.order_id)
        yield request.order_id
        self.events.append(OrderPlaced(order_id=request.order_id))


async def collect(stream: AsyncIterator[int]) -> Sequence[int]:
    return [item async for item in stream]


@pytest.mark.parametrize("failing", ["first", "second"])
async def test_a_singleton_streaming_handler_emits_only_the_events_of_its_own_stream(
    failing: Failing,
) -> None:
    shared = ListOrdersHandler()
    broker = InMemoryMessageBroker()
    counted: list[int] = []
    mediator = mediator_of({ListOrders: ListOrdersHandler}, Singletons(shared), counted, broker)
    failed_id, ok_id = failing_ids(failing)

    outcomes = await run_both(
        collect(mediator.stream(ListOrders(order_id=1, fail=failed_id == 1))),
        collect(mediator.stream(ListOrders(order_id=2, fail=failed_id == 2))),
    )

    assert isinstance(outcomes[failed_id - 1], HandlerFailed)
    assert outcomes[ok_id - 1] == [ok_id]
    assert counted == [ok_id]
    assert published_ids(broker) == [ok_id]
    assert shared.events == []


class WatchOrdersHandler(StreamingRequestHandler[ListOrders, int]):
    """Raises an event in its cleanup, which runs when a caller stops early."""

    def __init__(self) -> None:
        self.closed: list[int] = []

    async def handle(self, request: ListOrders) -> AsyncIterator[int]:
        try:
            self.events.append(StockCounted(order_id=request.order_id))
            yield request.order_id
            yield request.order_id + 100
        finally:
            self.events.append(StockCounted(order_id=-request.order_id))
            self.closed.append(request.order_id)


async def test_a_stream_closed_early_cleans_up_at_once_and_its_late_events_are_dropped() -> None:
    shared = WatchOrdersHandler()
    counted: list[int] = []
    mediator = mediator_of({ListOrders: WatchOrdersHandler}, Singletons(shared), counted)
    for order_id in (1, 2):
        async with contextlib.aclosing(mediator.stream(ListOrders(order_id=order_id))) as items:
            async for _ in items:
                break
        assert shared.closed[-1:] == [order_id]  # the handler's cleanup ran on close
    assert counted == [1, 2]
    assert shared.events == []


class PlaceOrderKeepingItsOwnEvents(SoloPlaceOrderHandler):
    """A subclass a container may hand out for the bound class, with diator-style events."""

    def __init__(self) -> None:
        self.own: list[Event] = []

    @property
    def events(self) -> list[Event]:
        return self.own


class Substituting(Singletons):
    """Resolves every type to one instance of another class, as a container binding may."""

    async def resolve(self, type_: type[T]) -> T:
        return cast(T, self.instances[PlaceOrderKeepingItsOwnEvents])


async def test_a_container_may_resolve_a_subclass_that_keeps_its_own_events() -> None:
    shared = PlaceOrderKeepingItsOwnEvents()
    counted: list[int] = []
    mediator = mediator_of({PlaceOrder: SoloPlaceOrderHandler}, Substituting(shared), counted)
    await mediator.send(PlaceOrder(order_id=1))
    await mediator.send(PlaceOrder(order_id=2))
    assert counted == [1, 2]
    assert shared.events == []
