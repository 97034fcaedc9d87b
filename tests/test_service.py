"""The Service: starts what a process runs in order, stops it in the reverse
order with the work in flight drained, and says when it failed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import attrs
import pytest

from brokers.memory import InMemoryMessageBroker
from mediator import (
    Consuming,
    EventMap,
    FailFast,
    Interceptor,
    NotificationEvent,
    Publishing,
    Request,
    RequestHandler,
    RequestMap,
    Service,
    ServiceStarted,
    ServiceStopping,
)
from mediator.testing import keep_handled, wait_for_event, wait_until


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class CacheFlushed(NotificationEvent):
    entries: int


@attrs.frozen(kw_only=True)
class PlaceOrder(Request[None]):
    order_id: int


class PlaceOrderHandler(RequestHandler[PlaceOrder, None]):
    async def handle(self, request: PlaceOrder) -> None:
        self.events.append(OrderPlaced(order_id=request.order_id))


class LoggedBroker(InMemoryMessageBroker):
    """The in-memory broker, noting when it is started and stopped."""

    def __init__(self, log: list[str], **options: object) -> None:
        super().__init__(channel_prefix="shop")
        self.log = log

    async def start(self) -> None:
        # Consumers start their broker too (a no-op once started): note the first.
        if "broker start" not in self.log:
            self.log.append("broker start")
        await super().start()

    async def stop(self) -> None:
        self.log.append(f"broker stop, {len(self._subscriptions)} subscription(s) open")
        await super().stop()


def make_service(log: list[str]) -> tuple[Service, LoggedBroker]:
    broker = LoggedBroker(log)
    requests = RequestMap()
    requests.bind(PlaceOrder, PlaceOrderHandler)
    events = EventMap()
    service = Service(broker, name="billing", request_map=requests, event_map=events)
    service.subscribe("{prefix}:notification_event:Order*", group="billing")

    @events.bind(OrderPlaced)
    async def bill(event: OrderPlaced) -> None:
        log.append(f"billed {event.order_id}")

    @events.bind(ServiceStarted)
    async def started(event: ServiceStarted) -> None:
        # Every subscription is live by now: a message published here is received.
        log.append(f"started {event.service}, consumers {len(service.consumers)}")

    @events.bind(ServiceStopping)
    async def stopping(event: ServiceStopping) -> None:
        # The consumers have drained; the broker still takes what a flush publishes.
        log.append(f"stopping {event.service}, running {[c.running for c in service.consumers]}")
        await service.event_emitter.emit(CacheFlushed(entries=3))

    @service.on_startup
    async def first() -> None:
        log.append("startup 1")

    @service.on_startup
    async def second() -> None:
        log.append("startup 2")

    @service.on_shutdown
    async def close_first() -> None:
        log.append("shutdown 1")

    @service.on_shutdown
    async def close_second() -> None:
        log.append("shutdown 2")

    return service, broker


async def test_a_service_starts_in_order_handles_messages_and_stops_in_reverse_order() -> None:
    log: list[str] = []
    service, broker = make_service(log)
    async with service:
        assert service.running
        assert service.ready
        [consumer] = service.consumers
        keep_handled(consumer)
        await service.mediator.send(PlaceOrder(order_id=7))
        await wait_for_event(consumer, OrderPlaced)
    assert log == [
        "broker start",
        "startup 1",
        "startup 2",
        "started billing, consumers 1",
        "billed 7",
        "stopping billing, running []",
        "shutdown 2",
        "shutdown 1",
        "broker stop, 0 subscription(s) open",
    ]
    assert [m.message_name for m in broker.messages] == ["OrderPlaced", "CacheFlushed"]
    assert service.stats()["running"] is False
    assert service.consumers == ()


async def test_the_prefix_placeholder_follows_the_broker() -> None:
    service = Service(InMemoryMessageBroker(channel_prefix="a"))
    service.subscribe("{prefix}:*:Order*", group="g")
    assert [(s.pattern, s.group) for s in service.subscriptions] == [("a:*:Order*", "g")]
    service.broker = InMemoryMessageBroker(channel_prefix="b")
    assert [s.pattern for s in service.subscriptions] == ["b:*:Order*"]


async def test_run_returns_after_stop_with_the_work_in_flight_finished() -> None:
    broker = InMemoryMessageBroker(channel_prefix="shop")
    events = EventMap()
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[int] = []

    @events.bind(OrderPlaced)
    async def slow(event: OrderPlaced) -> None:
        started.set()
        await release.wait()
        finished.append(event.order_id)

    service = Service(broker, event_map=events, drain_timeout=10)
    service.subscribe("shop:notification_event:*")
    ready = started_event(service)
    running = asyncio.create_task(service.run())
    await asyncio.wait_for(ready.wait(), timeout=10)
    await service.event_emitter.emit(OrderPlaced(order_id=1))
    await started.wait()
    stopping = asyncio.create_task(service.stop())
    # The stop waits for the handler in flight: it finishes, then run() returns.
    release.set()
    await asyncio.wait_for(asyncio.gather(running, stopping), timeout=10)
    assert finished == [1]
    assert running.result() is None


def started_event(service: Service) -> asyncio.Event:
    """Set when the service has started, by a handler of its ServiceStarted."""
    started = asyncio.Event()

    @service.event_map.bind(ServiceStarted)
    async def note(event: ServiceStarted) -> None:
        started.set()

    return started


async def test_a_failing_consumer_stops_the_service_and_run_raises_its_error() -> None:
    broker = InMemoryMessageBroker(channel_prefix="shop")
    events = EventMap()
    stopped: list[str] = []

    @events.bind(OrderPlaced, policy=FailFast())
    async def broken(event: OrderPlaced) -> None:
        raise RuntimeError(f"cannot bill {event.order_id}")

    service = Service(broker, event_map=events)
    service.subscribe("shop:notification_event:*")

    @service.on_shutdown
    async def note() -> None:
        stopped.append("shutdown")

    ready = started_event(service)
    running = asyncio.create_task(service.run())
    await asyncio.wait_for(ready.wait(), timeout=10)
    await service.event_emitter.emit(OrderPlaced(order_id=3))
    with pytest.raises(RuntimeError, match="cannot bill 3"):
        await asyncio.wait_for(running, timeout=10)
    assert stopped == ["shutdown"]
    assert not service.running


async def test_a_failing_background_task_stops_the_service() -> None:
    service = Service(InMemoryMessageBroker())
    ticks = asyncio.Event()

    @service.background
    async def relay() -> None:
        ticks.set()
        raise ConnectionError("outbox database went away")

    with pytest.raises(ConnectionError, match="outbox database"):
        await asyncio.wait_for(service.run(), timeout=10)
    assert ticks.is_set()


async def test_background_tasks_run_until_stop_and_are_cancelled_after_the_drain() -> None:
    service = Service(InMemoryMessageBroker())
    seen: list[str] = []
    began = asyncio.Event()

    @service.background
    async def relay() -> None:
        began.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("relay cancelled")
            raise

    @service.on_shutdown
    async def after() -> None:
        seen.append("shutdown")

    async with service:
        await began.wait()
    assert seen == ["relay cancelled", "shutdown"]


async def test_a_failing_start_up_hook_fails_start_and_leaves_nothing_running() -> None:
    log: list[str] = []
    service = Service(LoggedBroker(log))
    service.subscribe("shop:*")

    @service.on_startup
    async def database() -> None:
        raise OSError("database refused the connection")

    with pytest.raises(OSError, match="database refused"):
        await service.start()
    assert not service.running
    assert service.consumers == ()
    assert log == ["broker start", "broker stop, 0 subscription(s) open"]
    await service.stop()  # stopping a service that is not running does nothing
    assert len(log) == 2


async def test_each_event_map_gets_its_own_consumer() -> None:
    broker = InMemoryMessageBroker(channel_prefix="shop")
    audit = EventMap()
    audited: list[int] = []

    @audit.bind(OrderPlaced)
    async def keep(event: OrderPlaced) -> None:
        audited.append(event.order_id)

    service = Service(broker)
    billed: list[int] = []

    @service.event_map.bind(OrderPlaced)
    async def bill(event: OrderPlaced) -> None:
        billed.append(event.order_id)

    service.subscribe("shop:notification_event:*", group="billing")
    service.subscribe("shop:notification_event:*", group="audit", event_map=audit)
    async with service:
        assert len(service.consumers) == 2
        await service.event_emitter.emit(OrderPlaced(order_id=9))
        for consumer in service.consumers:
            await wait_until(consumer, lambda stats: stats.handled == 1)
        stats = service.stats()
    assert (billed, audited) == ([9], [9])
    assert stats["ready"] is True
    assert [c["subscriptions"] for c in stats["consumers"]] == [
        [{"pattern": "shop:notification_event:*", "group": "billing", "inbox": None}],
        [{"pattern": "shop:notification_event:*", "group": "audit", "inbox": None}],
    ]
    assert [c["handled"] for c in stats["consumers"]] == [1, 1]


def test_declaring_a_subscription_without_a_broker_says_what_to_pass() -> None:
    service = Service(name="billing")
    service.subscribe("shop:*")
    with pytest.raises(ValueError, match=r"no broker; pass Service\(broker=...\)"):
        asyncio.run(service.start())


async def test_subscribing_or_swapping_the_broker_while_running_is_refused() -> None:
    service = Service(InMemoryMessageBroker())
    async with service:
        with pytest.raises(RuntimeError, match="before start"):
            service.subscribe("x:*")
        with pytest.raises(RuntimeError, match="before start"):
            service.broker = InMemoryMessageBroker()


tenant: ContextVar[str | None] = ContextVar("tenant", default=None)


class TenantHeader(Interceptor):
    """Carries the tenant in force into every envelope, and back into context."""

    @contextmanager
    def publishing(self, publishing: Publishing) -> Iterator[None]:
        current = tenant.get()
        if current is not None:
            publishing.messages = [
                attrs.evolve(m, headers={**m.headers, "tenant": current})
                for m in publishing.messages
            ]
        yield

    @contextmanager
    def consuming(self, consuming: Consuming) -> Iterator[None]:
        token = tenant.set(consuming.message.headers.get("tenant"))
        try:
            yield
        finally:
            tenant.reset(token)


async def test_an_interceptor_carries_a_header_from_publish_to_the_consumers_context() -> None:
    broker = InMemoryMessageBroker(channel_prefix="shop")
    events = EventMap()
    seen: list[tuple[int, str | None]] = []

    @events.bind(OrderPlaced)
    async def bill(event: OrderPlaced) -> None:
        seen.append((event.order_id, tenant.get()))

    service = Service(broker, event_map=events, interceptors=[TenantHeader()])
    service.subscribe("shop:notification_event:*")
    async with service:
        token = tenant.set("acme")
        try:
            await service.event_emitter.emit(OrderPlaced(order_id=1))
        finally:
            tenant.reset(token)
        await service.event_emitter.emit(OrderPlaced(order_id=2))  # no tenant in force
        await wait_until(service.consumers[0], lambda stats: stats.handled == 2)
    assert sorted(seen) == [(1, "acme"), (2, None)]
    assert [m.headers.get("tenant") for m in broker.messages] == ["acme", None]
