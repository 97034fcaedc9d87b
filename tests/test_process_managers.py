"""Process managers (mediator.sagas, docs/sagas.md, "Process managers"): an
instance per key, started by one event and moved on by others, through a
real consumer; a timeout delivered when due (on an injected clock), across
a new dispatcher and store as after a restart, and ignored once the
instance completed; concurrent events of one key never lose an update; on
every store (in memory, SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest

from brokers.memory import InMemoryMessageBroker
from mediator import EventConsumer, EventEmitter, EventMap, NotificationEvent, Request
from mediator.sagas import (
    MemoryProcessStore,
    Process,
    ProcessManager,
    ProcessStore,
    SagaConflictError,
    SagaError,
    TimeoutDispatcher,
    handles,
)
from mediator.testing import wait_until
from tests.outbox_support import Database, open_database

STORES = ("memory", "sqlite", "postgresql")
T0 = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int
    total_cents: int


@attrs.frozen(kw_only=True)
class PaymentReceived(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class PaymentOverdue(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class OrderCancelled(NotificationEvent):
    order_id: int


@attrs.define
class Checkout:
    order_id: int
    total_cents: int
    paid: bool = False
    cancelled: bool = False


class CheckoutProcess(ProcessManager[Checkout]):
    @handles(OrderPlaced, key="order_id", starts=True)
    async def placed(self, process: Process[Checkout], event: OrderPlaced) -> None:
        process.state = Checkout(order_id=event.order_id, total_cents=event.total_cents)
        process.request_timeout(dt.timedelta(minutes=15), PaymentOverdue(order_id=event.order_id))

    @handles(PaymentReceived, key="order_id")
    async def paid(self, process: Process[Checkout], event: PaymentReceived) -> None:
        assert process.state is not None
        process.state = attrs.evolve(process.state, paid=True)
        process.complete()

    @handles(PaymentOverdue, key="order_id")
    async def overdue(self, process: Process[Checkout], event: PaymentOverdue) -> None:
        assert process.state is not None
        process.state = attrs.evolve(process.state, cancelled=True)
        process.raise_event(OrderCancelled(order_id=event.order_id))
        process.complete()


@attrs.define
class World:
    kind: str
    db: Database | None
    make_store: Callable[[], ProcessStore]
    store: ProcessStore


@pytest.fixture(params=STORES)
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    if request.param == "memory":
        store = MemoryProcessStore()
        yield World("memory", None, lambda: store, store)
        return
    from mediator.sagas import SqlProcessStore

    db = await open_database(request.param, tmp_path)
    try:
        sql = SqlProcessStore(db.outbox)
        await sql.create_tables()
        try:
            yield World(request.param, db, lambda: SqlProcessStore(db.outbox), sql)
        finally:
            await sql.drop_tables()
    finally:
        await db.close()


async def test_an_instance_per_key_started_moved_on_and_completed_through_a_consumer(
    world: World,
) -> None:
    broker = InMemoryMessageBroker(channel_prefix="shop")
    events = EventMap()
    CheckoutProcess().bind(events, world.store)
    # One at a time: in order, as a partition key or an ordered queue keeps them.
    consumer = EventConsumer(broker=broker, event_map=events, max_concurrency=1)
    await consumer.subscribe("shop:notification_event:*")
    emitter = EventEmitter(message_broker=broker)
    async with consumer:
        await emitter.emit(PaymentReceived(order_id=9))  # no instance: ignored
        await emitter.emit(OrderPlaced(order_id=1, total_cents=4200))
        await emitter.emit(OrderPlaced(order_id=2, total_cents=990))
        await emitter.emit(PaymentReceived(order_id=1))
        await emitter.emit(PaymentReceived(order_id=1))  # completed: ignored
        await wait_until(consumer, lambda s: s.handled >= 5)
    instances = {i.key: i for i in await world.store.instances("CheckoutProcess")}
    assert sorted(instances) == ["1", "2"]
    assert (instances["1"].finished, instances["2"].finished) == (True, False)
    assert instances["1"].version == 2  # started, then paid: the third event changed nothing


async def test_a_timeout_fires_when_due_after_a_restart_and_raises_its_events(
    world: World,
) -> None:
    manager = CheckoutProcess()
    events = EventMap()
    manager.bind(events, world.store)
    [(marked, method)] = [(m, f) for m, f in manager.handlers() if m.event is OrderPlaced]
    await manager.handle(
        OrderPlaced(order_id=3, total_cents=100), marked, method, world.store, None
    )

    now = T0
    emitted: list[Any] = []

    class Capture:
        async def emit_all(self, raised: list[Any]) -> None:
            emitted.extend(raised)

    def dispatcher() -> TimeoutDispatcher:  # a new one on a new store: as after a restart
        return TimeoutDispatcher(
            world.make_store(),
            [manager],
            emitter=Capture(),
            clock=lambda: now,  # type: ignore[arg-type]
        )

    now = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=14)
    assert await dispatcher().run_once() == 0  # not due yet
    now += dt.timedelta(minutes=2)
    assert await dispatcher().run_once() == 1
    assert await dispatcher().run_once() == 0  # taken once
    [instance] = await world.store.instances()
    assert instance.finished
    assert [(type(e), e.order_id) for e in emitted] == [(OrderCancelled, 3)]


async def test_a_timeout_for_a_completed_instance_is_ignored(world: World) -> None:
    manager = CheckoutProcess()
    handlers = {m.event: (m, f) for m, f in manager.handlers()}
    await manager.handle(
        OrderPlaced(order_id=4, total_cents=100), *handlers[OrderPlaced], world.store, None
    )
    await manager.handle(PaymentReceived(order_id=4), *handlers[PaymentReceived], world.store, None)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    dispatcher = TimeoutDispatcher(world.store, [manager], clock=lambda: later)
    assert await dispatcher.run_once() == 1
    [instance] = await world.store.instances()
    checkout = attrs.asdict(manager.state_type(order_id=4, total_cents=100, paid=True))
    assert instance.finished
    assert orjson.loads(instance.state) == checkout  # paid, not cancelled


@attrs.frozen(kw_only=True)
class Counted(NotificationEvent):
    key: int


@attrs.define
class Tally:
    count: int = 0


class Counter(ProcessManager[Tally]):
    """Counts its events per key; with a gate, each handling waits at it
    (after loading the instance) until the gate opens."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.gate = gate
        self.waiting = 0
        self.both_waiting = asyncio.Event()

    @handles(Counted, key="key", starts=True)
    async def counted(self, process: Process[Tally], event: Counted) -> None:
        tally = process.state or Tally()
        await asyncio.sleep(0)  # other deliveries of the key load the same version meanwhile
        if self.gate is not None and not self.gate.is_set():
            self.waiting += 1
            if self.waiting == 2:
                self.both_waiting.set()
            await self.gate.wait()
        process.state = attrs.evolve(tally, count=tally.count + 1)


async def test_concurrent_events_of_one_key_never_lose_an_update(world: World) -> None:
    gate = asyncio.Event()
    manager = Counter(gate)
    [(marked, method)] = manager.handlers()
    conflicts = 0

    async def deliver() -> None:
        nonlocal conflicts
        while True:  # what a consumer's redelivery does after the conflict
            try:
                await manager.handle(Counted(key=1), marked, method, world.store, None)
                return
            except SagaConflictError:
                conflicts += 1

    gate.set()
    await deliver()  # the instance exists: count 1
    if world.kind != "sqlite":  # SQLite runs one write transaction at a time
        gate.clear()
    runs = [asyncio.create_task(deliver()) for _ in range(2)]
    if not gate.is_set():
        async with asyncio.timeout(10):
            await manager.both_waiting.wait()  # both loaded version 1
        gate.set()
    await asyncio.gather(*runs)
    [instance] = await world.store.instances()
    assert orjson.loads(instance.state) == {"count": 3}
    assert conflicts == (0 if world.kind == "sqlite" else 1)


async def test_a_consumer_retries_a_conflicting_event_so_no_update_is_lost() -> None:
    store = MemoryProcessStore()
    broker = InMemoryMessageBroker(channel_prefix="count")
    events = EventMap()
    Counter().bind(events, store)
    consumer = EventConsumer(broker=broker, event_map=events, max_concurrency=8)
    await consumer.subscribe("count:*")
    emitter = EventEmitter(message_broker=broker)
    async with consumer:
        for n in range(40):
            await emitter.emit(Counted(key=n % 4))
        await wait_until(consumer, lambda s: s.handled >= 40)
    assert consumer.stats.retried >= 1  # conflicts met and handled again
    counts = sorted(orjson.loads(i.state)["count"] for i in await store.instances())
    assert counts == [10, 10, 10, 10]


def test_a_process_manager_without_handlers_says_so() -> None:
    class Empty(ProcessManager[Tally]):
        pass

    with pytest.raises(SagaError, match="marks no handler"):
        Empty().bind(EventMap(), MemoryProcessStore())


async def test_a_handler_sending_without_a_mediator_is_told_how_to_give_one() -> None:
    process: Process[Tally] = Process("k", None, None)
    with pytest.raises(SagaError, match=r"bind\(event_map, store, mediator=\.\.\.\)"):
        await process.send(object())  # type: ignore[arg-type]


KEYS = 200
EVENTS_PER_KEY = 5


async def test_two_consumer_processes_on_the_same_instances_lose_no_update(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    """Two processes in one group take turns at the events of 200 instances
    on Redis Streams and PostgreSQL; every instance ends with every event counted."""
    import os
    import signal
    import sys

    from brokers.redis import RedisStreamMessageBroker
    from mediator.sagas import SqlProcessStore
    from tests.outbox_support import ROOT
    from tests.process_manager_processes import Tallied

    db = await open_database("postgresql", tmp_path)
    store = SqlProcessStore(db.outbox)
    await store.create_tables()
    command = [
        sys.executable,
        "-m",
        "tests.process_manager_processes",
        db.url,
        db.prefix,
        redis_url,
        key_prefix,
    ]
    workers = [
        await asyncio.create_subprocess_exec(
            *command,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    broker = RedisStreamMessageBroker.from_url(redis_url, key_prefix)
    try:
        for worker in workers:
            assert worker.stdout is not None
            async with asyncio.timeout(30):
                assert await worker.stdout.readline() == b"ready\n"
        emitter = EventEmitter(message_broker=broker)
        # A key's events side by side: both processes, and a process's
        # concurrent deliveries, meet on the same instances.
        await emitter.emit_all(
            [Tallied(key=key) for key in range(KEYS) for _ in range(EVENTS_PER_KEY)]
        )

        async def counted() -> int:
            return sum(orjson.loads(i.state)["count"] for i in await store.instances())

        async with asyncio.timeout(60):
            while await counted() < KEYS * EVENTS_PER_KEY:  # noqa: ASYNC110
                await asyncio.sleep(0.1)  # the database is the condition: polled
        conflicts = 0
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            assert worker.stdout is not None
            async with asyncio.timeout(30):
                out = (await worker.stdout.read()).decode()
                assert await worker.wait() == 0
            conflicts += int(out.split("conflicts ")[1])
        counts = [orjson.loads(i.state)["count"] for i in await store.instances()]
        print(
            f"{KEYS} instances, {KEYS * EVENTS_PER_KEY} events, 2 processes: "
            f"{conflicts} saves refused by the version check and handled again"
        )
        assert sorted(counts) == [EVENTS_PER_KEY] * KEYS
        assert conflicts > 0  # the two processes did meet on the same instances
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
        await broker.stop()
        await store.drop_tables()
        await db.close()


async def test_the_order_process_example_runs_on_redis_streams_and_postgresql(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    from mediator.sagas import SqlProcessStore
    from tests.examples_runner import run_ok

    db = await open_database("postgresql", tmp_path)
    try:
        lines = await asyncio.to_thread(
            run_ok,
            "order_process.py",
            MEDIATOR_BROKER_URL=redis_url.replace("redis://", "redis+streams://", 1),
            ORDERS_DATABASE_URL=db.url,
            ORDERS_TABLE_PREFIX=db.prefix,
            ORDERS_CHANNEL_PREFIX=key_prefix,
            ORDERS_SHIPPING_TIMEOUT="5",  # new streams are found once a second
        )
        assert lines[-3:] == [
            "order 1: shipped",
            "order 2: declined: stock released",
            "order 3: not shipped in time: refunded, stock released",
        ]
        store = SqlProcessStore(db.outbox)
        instances = await store.instances("OrderProcess")
        assert sorted((i.key, i.finished) for i in instances) == [
            ("1", True),
            ("2", True),
            ("3", True),
        ]
        assert await store.timeouts() == []  # order 3's fired; the others' were taken too
        await store.drop_tables()
    finally:
        await db.close()


@attrs.frozen(kw_only=True)
class ShipOrder(Request[None]):
    order_id: int


class Shipping(ProcessManager[Checkout]):
    @handles(PaymentReceived, key="order_id", starts=True)
    async def paid(self, process: Process[Checkout], event: PaymentReceived) -> None:
        process.state = Checkout(order_id=event.order_id, total_cents=0, paid=True)
        await process.send(ShipOrder(order_id=event.order_id))
        process.raise_event(OrderCancelled(order_id=event.order_id))


def test_the_routing_diagram_shows_what_a_process_manager_consumes_sends_and_raises() -> None:
    from mediator import Service
    from mediator._operations.diagram import mermaid_diagram

    events = EventMap()
    Shipping().bind(events, MemoryProcessStore())
    service = Service(InMemoryMessageBroker(channel_prefix="shop"), event_map=events)
    service.subscribe("shop:notification_event:*")
    chart = mermaid_diagram(service)
    handler = next(
        line.split("[")[0].strip() for line in chart.splitlines() if "Shipping.paid" in line
    )
    request = next(line.split("[")[0].strip() for line in chart.splitlines() if "ShipOrder" in line)
    event = next(
        line.split("(")[0].strip() for line in chart.splitlines() if '"OrderCancelled"' in line
    )
    assert f"    {handler} -- sends --> {request}" in chart.splitlines()
    assert f"    {handler} -- raises --> {event}" in chart.splitlines()
    assert f" -- PaymentReceived --> {handler}" in chart
