"""The outbox: a send's rows and events commit together; the relay publishes them.

Every test runs on SQLite and on PostgreSQL (`tests.outbox_support`) unless
it says which, with tables of its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
from sqlalchemy import text, update
from sqlalchemy.exc import IntegrityError

from brokers.memory import InMemoryMessageBroker
from mediator import (
    Backoff,
    DomainEvent,
    EventEmitter,
    EventMap,
    Mediator,
    Message,
    NotificationEvent,
    PublishError,
    Request,
    RequestHandler,
    RequestMap,
)
from mediator.outbox import (
    DEAD,
    PENDING,
    PUBLISH_FAILED,
    SENT,
    Outbox,
    OutboxError,
    OutboxRelay,
    RelayRound,
    current_session,
)
from mediator.testing import CapturingBroker
from tests.outbox_support import (
    KINDS,
    Database,
    observed,
    only,
    open_database,
    relayed,
    soak,
)

NO_WAIT = Backoff(initial=0.001, multiplier=2.0, maximum=0.005, jitter=0.0)
"""Retries due at once, so tests never wait for a backoff."""


# -- the application under test --------------------------------------------------


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent, partition_key="order_id"):
    order_id: int


@attrs.frozen(kw_only=True)
class OrderNoted(DomainEvent):
    order_id: int
    fail: bool = False


@attrs.frozen(kw_only=True)
class Ping(NotificationEvent):
    n: int


@attrs.frozen(kw_only=True)
class PlaceOrder(Request[int]):
    order_id: int
    customer_id: int = 1
    fail_in_handler: bool = False
    fail_in_local_handler: bool = False
    then: PlaceOrder | None = None
    """A second order the handler sends through the mediator, inside its own send."""


class Shop:
    """A mediator whose PlaceOrder handler writes an order row and raises an
    OrderNoted (handled locally) and an OrderPlaced (broker-bound)."""

    def __init__(self, db: Database, *, unit_of_work: Any = None) -> None:
        self.db = db
        self.outbox = db.outbox
        self.orders = f"{db.prefix}_orders"
        self.local_checks: list[Callable[[OrderNoted], Any]] = []
        requests = RequestMap()
        events = EventMap()
        shop = self

        class PlaceOrderHandler(RequestHandler[PlaceOrder, int]):
            async def handle(self, request: PlaceOrder) -> int:
                await current_session().execute(
                    text(f"INSERT INTO {shop.orders} (id, customer_id) VALUES (:id, :customer)"),
                    {"id": request.order_id, "customer": request.customer_id},
                )
                if request.then is not None:
                    await shop.mediator.send(request.then)
                if request.fail_in_handler:
                    raise RuntimeError(f"order {request.order_id} refused by its handler")
                self.events.append(
                    OrderNoted(order_id=request.order_id, fail=request.fail_in_local_handler)
                )
                self.events.append(OrderPlaced(order_id=request.order_id))
                return request.order_id

        async def note(event: OrderNoted) -> None:
            for check in shop.local_checks:
                await check(event)
            if event.fail:
                raise RuntimeError(f"order {event.order_id} refused by a local handler")

        requests.bind(PlaceOrder, PlaceOrderHandler)
        events.bind(OrderNoted, note)
        self.mediator = Mediator(
            request_map=requests,
            event_emitter=EventEmitter(event_map=events, message_broker=self.outbox),
            unit_of_work=unit_of_work or self.outbox.unit_of_work,
        )

    async def create_tables(self) -> None:
        await self.db.table("customers", "id INTEGER PRIMARY KEY")
        await self.db.table(
            "orders",
            "id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL "
            f"REFERENCES {self.db.prefix}_customers (id) DEFERRABLE INITIALLY DEFERRED",
        )
        await self.db.execute(f"INSERT INTO {self.db.prefix}_customers (id) VALUES (1)")

    async def order_ids(self) -> list[int]:
        async with self.db.engine.connect() as connection:
            result = await connection.execute(text(f"SELECT id FROM {self.orders} ORDER BY id"))
            return list(result.scalars())


@pytest.fixture(params=KINDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(request.param, tmp_path)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def shop(db: Database) -> Shop:
    shop = Shop(db)
    await shop.create_tables()
    return shop


def relay_of(outbox: Outbox, broker: Any, **options: Any) -> OutboxRelay:
    options.setdefault("backoff", NO_WAIT)
    return OutboxRelay(outbox, broker, **options)


async def relay_all(relay: OutboxRelay) -> int:
    """Run rounds until one claims nothing; returns the rows published."""
    published = 0
    while (done := await relay.run_once()).claimed:
        published += done.published
    return published


# -- the unit of work ------------------------------------------------------------------


async def test_a_send_commits_its_row_and_its_event_together(shop: Shop) -> None:
    assert await shop.mediator.send(PlaceOrder(order_id=7)) == 7

    assert await shop.order_ids() == [7]
    assert await shop.outbox.counts() == {PENDING: 1, SENT: 0, DEAD: 0}
    broker = CapturingBroker(InMemoryMessageBroker(channel_prefix="shop"))
    assert await relay_all(relay_of(shop.outbox, broker)) == 1
    [message] = broker.messages
    assert message.message_name == "OrderPlaced"
    assert message.payload["order_id"] == 7
    assert message.partition_key == "7"
    assert await shop.outbox.message_ids(SENT) == [message.message_id]


@pytest.mark.parametrize(
    ("order", "error"),
    [
        pytest.param(PlaceOrder(order_id=1, fail_in_handler=True), RuntimeError, id="handler"),
        pytest.param(
            PlaceOrder(order_id=1, fail_in_local_handler=True), RuntimeError, id="local-handler"
        ),
        # No customer 99: the deferred foreign key fails at COMMIT.
        pytest.param(PlaceOrder(order_id=1, customer_id=99), IntegrityError, id="commit"),
    ],
)
async def test_a_send_that_fails_leaves_neither_row_nor_event(
    shop: Shop, order: PlaceOrder, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await shop.mediator.send(order)

    assert await shop.order_ids() == []
    assert await shop.outbox.counts() == {PENDING: 0, SENT: 0, DEAD: 0}
    broker = CapturingBroker(InMemoryMessageBroker())
    assert await relay_all(relay_of(shop.outbox, broker)) == 0
    assert list(broker.messages) == []
    # The connection went back clean: the next send commits.
    await shop.mediator.send(PlaceOrder(order_id=2))
    assert await shop.order_ids() == [2]


async def test_nothing_reaches_the_broker_before_the_commit(shop: Shop) -> None:
    broker = CapturingBroker(InMemoryMessageBroker())
    seen_inside: list[tuple[int, int]] = []
    observer = shop.db.new_engine()

    async def look_from_outside(event: OrderNoted) -> None:
        # The last step before the commit: the row and the event are written
        # (the event after this handler), nothing is visible or published.
        async with observer.connect() as connection:
            rows = await connection.execute(text(f"SELECT count(*) FROM {shop.orders}"))
            seen_inside.append((int(rows.scalar_one()), len(broker.messages)))

    shop.local_checks.append(look_from_outside)
    async with relay_of(shop.outbox, broker, poll_interval=60.0) as relay:
        await shop.mediator.send(PlaceOrder(order_id=3))
        await relayed(relay, lambda stats: stats.published == 1)
    assert seen_inside == [(0, 0)]
    assert [m.payload["order_id"] for m in broker.messages] == [3]


async def test_a_send_inside_a_send_joins_its_transaction(shop: Shop) -> None:
    await shop.mediator.send(PlaceOrder(order_id=1, then=PlaceOrder(order_id=2)))
    assert await shop.order_ids() == [1, 2]
    assert await shop.outbox.counts() == {PENDING: 2, SENT: 0, DEAD: 0}

    with pytest.raises(RuntimeError):
        await shop.mediator.send(
            PlaceOrder(order_id=3, then=PlaceOrder(order_id=4), fail_in_handler=True)
        )
    assert await shop.order_ids() == [1, 2]
    assert await shop.outbox.counts() == {PENDING: 2, SENT: 0, DEAD: 0}


async def test_your_own_session_and_transaction_can_be_handed_in(shop: Shop) -> None:
    sessions = shop.outbox.sessions
    broker = CapturingBroker(InMemoryMessageBroker())
    async with relay_of(shop.outbox, broker, poll_interval=60.0) as relay:
        async with sessions() as session, session.begin():
            await session.execute(text(f"INSERT INTO {shop.orders} VALUES (10, 1)"))
            with shop.outbox.bind(session):
                await shop.mediator.send(PlaceOrder(order_id=11))
            assert await shop.outbox.counts() == {PENDING: 0, SENT: 0, DEAD: 0}
        # Committed by us: the relay is woken by the session's commit.
        await relayed(relay, lambda stats: stats.published == 1)
        assert await shop.order_ids() == [10, 11]

        async with sessions() as session:
            await session.begin()
            with shop.outbox.bind(session):
                await shop.mediator.send(PlaceOrder(order_id=12))
            await session.rollback()
    assert await shop.order_ids() == [10, 11]
    assert await shop.outbox.counts() == {PENDING: 0, SENT: 1, DEAD: 0}
    assert [m.payload["order_id"] for m in broker.messages] == [11]


async def test_using_the_outbox_outside_a_unit_of_work_says_what_to_do(shop: Shop) -> None:
    with pytest.raises(OutboxError, match=r"unit_of_work=outbox\.unit_of_work"):
        current_session()
    message = Message(
        message_type="notification_event",
        message_name="Ping",
        message_id=uuid.uuid4(),
        payload={},
    )
    with pytest.raises(OutboxError, match=r"cannot write Ping: no unit of work is open"):
        await shop.outbox.send_message(message)
    with pytest.raises(TypeError, match=r"Mediator\(unit_of_work=\.\.\.\) got"):
        Mediator(request_map=RequestMap(), unit_of_work=42)  # type: ignore[arg-type]

    other = Outbox(shop.db.engine, prefix=f"{shop.db.prefix}x")
    async with shop.outbox.unit_of_work():
        with pytest.raises(OutboxError, match="one transaction cannot span two databases"):
            await other.unit_of_work().__aenter__()
        with pytest.raises(OutboxError, match="has it in this context"):
            await other.send_message(message)


def test_the_outbox_refuses_what_it_cannot_use() -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from mediator.outbox import OutboxTables, sqlite_engine

    with pytest.raises(ValueError, match="in-memory database lives in one connection"):
        sqlite_engine("sqlite+aiosqlite:///:memory:")
    with pytest.raises(ValueError, match=r"must start with sqlite\+aiosqlite"):
        sqlite_engine("sqlite:///app.db")
    with pytest.raises(ValueError, match="lowercase letters"):
        OutboxTables("Shop-Orders")
    with pytest.raises(TypeError, match="pass an AsyncEngine"):
        Outbox("sqlite+aiosqlite:///app.db")  # type: ignore[arg-type]
    outbox = Outbox(create_async_engine("sqlite+aiosqlite:///unused.db"))
    with pytest.raises(ValueError, match="not the outbox itself"):
        OutboxRelay(outbox, outbox)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"OutboxRelay\(lease=0\): must be above 0"):
        OutboxRelay(outbox, InMemoryMessageBroker(), lease=0)
    with pytest.raises(ValueError, match="1 to 255 characters"):
        OutboxRelay(outbox, InMemoryMessageBroker(), name="x" * 256)


def test_the_outbox_module_exports_exactly_its_all() -> None:
    import types

    import mediator.outbox

    public = {
        name
        for name, value in vars(mediator.outbox).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(mediator.outbox.__all__) == public


def test_importing_the_outbox_without_sqlalchemy_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['sqlalchemy'] = None\n"
        "try:\n    import mediator.outbox\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'mediator-toolkit[outbox]'" in result.stdout


# -- the relay -------------------------------------------------------------------------


async def send_pings(outbox: Outbox, count: int, *, start: int = 0) -> list[uuid.UUID]:
    """`count` sends of one Ping each, committed one by one; their message ids."""
    events = EventMap()
    emitter = EventEmitter(event_map=events, message_broker=outbox)
    ids = []
    for n in range(start, start + count):
        ping = Ping(n=n)
        async with outbox.unit_of_work():
            await emitter.emit(ping)
        ids.append(ping.event_id)
    return ids


class Refusing(InMemoryMessageBroker):
    """An in-memory broker that refuses the messages `refuse` says to, and
    can hold publishing until `gate` is set."""

    def __init__(self, refuse: Callable[[Message], bool] = lambda m: False) -> None:
        super().__init__(channel_prefix="refusing")
        self.refuse = refuse
        self.gate: asyncio.Event | None = None
        self.publishing = asyncio.Event()
        self.published: list[Message] = []

    async def send_messages(self, messages: Sequence[Message]) -> None:
        self.publishing.set()
        if self.gate is not None:
            await self.gate.wait()
        for message in messages:
            if self.refuse(message):
                raise PublishError(f"refusing {message.message_name} {message.message_id}")
        self.published.extend(messages)
        for message in messages:
            await super().send_message(message)

    async def send_message(self, message: Message) -> None:
        await self.send_messages((message,))


async def test_the_relay_publishes_in_batches_in_commit_order(db: Database) -> None:
    ids = await send_pings(db.outbox, 25)
    broker = Refusing()
    relay = relay_of(db.outbox, broker, batch_size=10)
    rounds = []
    while (done := await relay.run_once()).claimed:
        rounds.append(done.published)
    assert rounds == [10, 10, 5]
    assert [m.message_id for m in broker.published] == ids
    assert await db.outbox.counts() == {PENDING: 0, SENT: 25, DEAD: 0}


async def test_a_poison_row_goes_dead_after_max_attempts_and_the_rows_behind_it_go_out(
    db: Database,
) -> None:
    ids = await send_pings(db.outbox, 6)
    poison = ids[1]
    broker = Refusing(refuse=lambda m: m.message_id == poison)
    relay = relay_of(db.outbox, broker, batch_size=100, max_attempts=3)
    async with relay:
        await relayed(relay, lambda stats: stats.dead == 1 and stats.published == 5)
    assert [m.message_id for m in broker.published] == [i for i in ids if i != poison]
    assert await db.outbox.counts() == {PENDING: 0, SENT: 5, DEAD: 1}
    [dead] = await db.outbox.dead_letters()
    assert dead.reason == PUBLISH_FAILED
    assert dead.delivery_count == 3
    assert str(poison) in dead.description
    assert dead.channel == f"{db.prefix}_outbox:Ping"

    # Mended: requeued, it goes out.
    broker.refuse = lambda m: False
    assert await db.outbox.requeue_dead() == 1
    assert await relay_all(relay) == 1
    assert broker.published[-1].message_id == poison
    assert await db.outbox.counts() == {PENDING: 0, SENT: 6, DEAD: 0}


async def test_dead_rows_are_listed_replayed_and_purged_from_the_command_line(
    db: Database,
) -> None:
    from mediator._operations.exit_status import STOPPED
    from tests.test_cli_dead_letters import mediator as dead_letters_command

    ids = await send_pings(db.outbox, 4)
    poison = {ids[1], ids[2]}
    broker = Refusing(refuse=lambda m: m.message_id in poison)
    relay = relay_of(db.outbox, broker, batch_size=100, max_attempts=1)
    async with relay:
        await relayed(relay, lambda stats: stats.dead == 2 and stats.published == 2)
    where = ["--outbox", db.url, "--prefix", db.prefix]

    status, out, err = await dead_letters_command("list", *where, "--json")
    assert (status, err) == (STOPPED, "")
    records = orjson.loads(out)["records"]
    assert [r["message_id"] for r in records] == [str(ids[1]), str(ids[2])]
    assert {r["reason"] for r in records} == {PUBLISH_FAILED}
    assert all(r["dead_lettered_at"] for r in records)

    broker.refuse = lambda m: False
    status, out, _ = await dead_letters_command("replay", *where, str(ids[1]))
    assert (status, out.splitlines()[-1]) == (STOPPED, "replayed 1 of 1")
    assert await db.outbox.counts() == {PENDING: 1, SENT: 2, DEAD: 1}
    assert await relay_all(relay) == 1
    assert broker.published[-1].message_id == ids[1]

    status, out, _ = await dead_letters_command("purge", *where, "--all", "--yes")
    assert (status, out) == (STOPPED, "purged 1 of 1\n")
    assert await db.outbox.counts() == {PENDING: 0, SENT: 3, DEAD: 0}


async def test_a_failed_row_holds_the_later_rows_of_its_partition_key_only(
    db: Database,
) -> None:
    outbox = db.outbox
    emitter = EventEmitter(event_map=EventMap(), message_broker=outbox)
    raised = [OrderPlaced(order_id=1), OrderPlaced(order_id=2), OrderPlaced(order_id=1)]
    for event in raised:
        async with outbox.unit_of_work():
            await emitter.emit(event)
    first = raised[0].event_id
    attempts = Counter[uuid.UUID]()

    def refuse(message: Message) -> bool:
        attempts[message.message_id] += 1
        return message.message_id == first and attempts[first] < 3

    broker = Refusing(refuse=refuse)
    relay = relay_of(outbox, broker, max_attempts=5)
    async with relay:
        await relayed(relay, lambda stats: stats.published == 3)
    published = [(m.payload["order_id"], m.message_id) for m in broker.published]
    # Order 2 went out while order 1's first event was failing; order 1's
    # second event waited for its first.
    assert published == [
        (2, raised[1].event_id),
        (1, raised[0].event_id),
        (1, raised[2].event_id),
    ]
    assert relay.stats.retried == 1
    assert relay.stats.dead == 0


async def test_an_outage_is_retried_and_loses_nothing(db: Database) -> None:
    ids = await send_pings(db.outbox, 30)
    failures = {"left": 4}

    def refuse(message: Message) -> bool:
        if failures["left"] > 0:
            failures["left"] -= 1
            return True
        return False

    broker = Refusing(refuse=refuse)
    relay = relay_of(db.outbox, broker, batch_size=10, max_attempts=10)
    async with relay:
        await relayed(relay, lambda stats: stats.published == 30)
    assert sorted(m.message_id for m in broker.published) == sorted(ids)
    assert relay.stats.dead == 0
    assert relay.stats.retried >= 1
    assert await db.outbox.counts() == {PENDING: 0, SENT: 30, DEAD: 0}


async def test_sent_rows_are_deleted_after_the_retention(db: Database) -> None:
    await send_pings(db.outbox, 5)
    broker = Refusing()
    keeping = relay_of(db.outbox, broker, retention=3600.0)
    assert await relay_all(keeping) == 5
    assert await keeping.cleanup() == 0
    await send_pings(db.outbox, 2, start=5)
    deleting = relay_of(db.outbox, broker, retention=0.0)
    assert await deleting.cleanup() == 5
    assert await db.outbox.counts() == {PENDING: 2, SENT: 0, DEAD: 0}
    assert await relay_of(db.outbox, broker, retention=None).cleanup() == 0


async def test_a_relay_in_another_process_is_woken_without_polling(db: Database) -> None:
    # The sends go through another Outbox (another process, as far as the
    # relay can tell), so no in-process wake-up reaches it: on PostgreSQL the
    # NOTIFY of the commit wakes it, on SQLite its poll finds the rows.
    broker = Refusing()
    poll = 3600.0 if db.kind == "postgresql" else 0.05
    relay = relay_of(db.outbox, broker, poll_interval=poll)
    async with relay:
        assert relay.listening is (db.kind == "postgresql")
        elsewhere = Outbox(db.new_engine(), prefix=db.prefix)
        ids = await send_pings(elsewhere, 3)
        await relayed(relay, lambda stats: stats.published == 3, timeout=10.0)
    assert [m.message_id for m in broker.published] == ids


@only("postgresql")
async def test_a_lost_listen_connection_is_given_back_not_left_to_the_garbage_collector(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    # A backend terminated under the relay's LISTEN: SQLAlchemy must get its
    # connection back (invalidated), not find it unreturned when the
    # garbage collector comes ("non-checked-in connection").
    import gc

    caplog.set_level(logging.WARNING)
    relay = relay_of(db.outbox, Refusing(), poll_interval=0.05)
    async with relay:
        assert relay.listening
        async with db.outbox.engine.begin() as connection:
            terminated = await connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query = :listen AND pid <> pg_backend_pid()"
                ),
                {"listen": f'LISTEN "{db.outbox.tables.channel}"'},
            )
            assert terminated.all() == [(True,)]
        await observed(lambda: _true(not relay.listening))
        ids = await send_pings(db.outbox, 2)  # the relay goes on, polling
        await relayed(relay, lambda stats: stats.published == 2, timeout=10.0)
        gc.collect()
    assert "the LISTEN connection closed" in caplog.text
    unreturned = [r for r in caplog.records if "non-checked-in connection" in r.getMessage()]
    assert not unreturned, unreturned[0].getMessage()
    assert len(ids) == 2


async def _true(value: bool) -> bool:
    return value


async def test_the_relay_stops_gracefully_after_its_round(db: Database) -> None:
    await send_pings(db.outbox, 3)
    broker = Refusing()
    broker.gate = asyncio.Event()
    relay = relay_of(db.outbox, broker)
    await relay.start()
    await asyncio.wait_for(broker.publishing.wait(), 10)
    stopping = asyncio.create_task(relay.stop())
    broker.gate.set()
    await stopping
    assert not relay.running
    assert relay.stats.published == 3
    assert await db.outbox.counts() == {PENDING: 0, SENT: 3, DEAD: 0}


# -- several relays --------------------------------------------------------------------


@only("postgresql")
async def test_two_relays_share_the_rows_without_duplicates(db: Database) -> None:
    ids = await send_pings(db.outbox, 600)
    broker = Refusing()
    relays = [relay_of(db.outbox, broker, batch_size=20, name=f"relay-{i}") for i in (1, 2)]
    all_published = asyncio.Event()

    def count(_: RelayRound) -> None:
        if sum(relay.stats.published for relay in relays) >= 600:
            all_published.set()

    for relay in relays:
        relay.add_listener(count)
        await relay.start()
    try:
        await asyncio.wait_for(all_published.wait(), 30.0)
    finally:
        for relay in relays:
            await relay.stop()
    counts = Counter(m.message_id for m in broker.published)
    assert set(counts) == set(ids)
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates == 0, f"{duplicates} duplicates while no lease expired"
    assert await db.outbox.counts() == {PENDING: 0, SENT: 600, DEAD: 0}


@only("postgresql")
async def test_a_second_relay_skips_the_rows_a_first_one_holds(db: Database) -> None:
    ids = await send_pings(db.outbox, 10)
    held = Refusing()
    held.gate = asyncio.Event()
    first = relay_of(db.outbox, held, batch_size=4, name="first")
    second_broker = Refusing()
    second = relay_of(db.outbox, second_broker, batch_size=4, name="second")
    holding = asyncio.create_task(first.run_once())
    await asyncio.wait_for(held.publishing.wait(), 10)
    # The first relay holds rows 1-4 (claimed, being published): the second
    # takes the next ones, then nothing more until the first is done.
    assert (await second.run_once()).published == 4
    assert (await second.run_once()).published == 2
    assert (await second.run_once()).claimed == 0
    held.gate.set()
    assert (await holding).published == 4
    assert [m.message_id for m in held.published] == ids[:4]
    assert [m.message_id for m in second_broker.published] == ids[4:]


async def test_the_rows_of_a_relay_that_died_are_taken_over_when_its_lease_expires(
    db: Database,
) -> None:
    ids = await send_pings(db.outbox, 5)
    stuck = Refusing()
    stuck.gate = asyncio.Event()  # never set
    dead_relay = relay_of(db.outbox, stuck, lease=0.3, name="stuck")
    dying = asyncio.create_task(dead_relay.run_once())
    await asyncio.wait_for(stuck.publishing.wait(), 10)
    # It dies mid-publish: nothing renews its lease any more.
    dying.cancel()
    await asyncio.gather(dying, return_exceptions=True)
    broker = Refusing()
    heir = relay_of(db.outbox, broker, poll_interval=0.05, name="heir")
    async with heir:
        await relayed(heir, lambda stats: stats.published == 5, timeout=10.0)
    assert [m.message_id for m in broker.published] == ids


async def rows_of(db: Database) -> list[tuple[int, str, str | None, int]]:
    """Each outbox row's (id, status, locked_by, attempts), in id order."""
    async with db.engine.connect() as connection:
        result = await connection.execute(
            text(f"SELECT id, status, locked_by, attempts FROM {db.prefix}_outbox ORDER BY id")
        )
        return [(row[0], row[1], row[2], row[3]) for row in result]


async def expire_the_lease_of(db: Database, relay: OutboxRelay) -> None:
    """End the lease of `relay`'s rows now, as if it had stalled past it."""
    table = db.outbox.tables.outbox
    async with db.engine.begin() as connection:
        await connection.execute(
            update(table)
            .where(table.c.locked_by == relay.name)
            .values(locked_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )


@pytest.mark.parametrize("late", ["failure", "success"])
async def test_a_relay_whose_lease_expired_leaves_the_row_to_the_relay_holding_it(
    db: Database, late: str, caplog: pytest.LogCaptureFixture
) -> None:
    ids = await send_pings(db.outbox, 1)
    first_broker = Refusing(refuse=lambda m: late == "failure")
    first_broker.gate = asyncio.Event()
    first = relay_of(db.outbox, first_broker, name="first")
    second_broker = Refusing()
    second_broker.gate = asyncio.Event()
    second = relay_of(db.outbox, second_broker, name="second")
    third_broker = Refusing()
    third = relay_of(db.outbox, third_broker, name="third")

    first_round = asyncio.create_task(first.run_once())
    await asyncio.wait_for(first_broker.publishing.wait(), 10)
    await expire_the_lease_of(db, first)
    second_round = asyncio.create_task(second.run_once())
    await asyncio.wait_for(second_broker.publishing.wait(), 10)
    [(row, _, _, _)] = await rows_of(db)

    # The first relay's outcome comes after its lease: the row is the second's.
    first_broker.gate.set()
    await first_round
    assert await rows_of(db) == [(row, PENDING, "second", 0)]
    assert (await third.run_once()).claimed == 0
    second_broker.gate.set()
    assert (await second_round).published == 1
    assert (await third.run_once()).claimed == 0

    assert [m.message_id for m in second_broker.published] == ids
    assert third_broker.published == []
    assert await rows_of(db) == [(row, SENT, None, 0)]
    assert first.stats.lost == 1
    assert (first.stats.published, first.stats.retried) == (0, 0)
    said = re.compile(rf"\brow {row}\b.*\blease\b")
    lost = [
        r for r in caplog.records if r.levelno == logging.WARNING and said.search(r.getMessage())
    ]
    assert len(lost) == 1, [r.getMessage() for r in caplog.records]
    assert "first" in lost[0].getMessage()


async def test_a_publish_in_flight_keeps_its_rows_leased(db: Database) -> None:
    lease = 1.0
    held_ids = await send_pings(db.outbox, 2)
    held = Refusing()
    held.gate = asyncio.Event()
    healthy = relay_of(db.outbox, held, lease=lease, name="healthy")
    publishing = asyncio.create_task(healthy.run_once())
    await asyncio.wait_for(held.publishing.wait(), 10)
    # A relay that dies holding a row claimed after those, under the same
    # lease: once another relay can take it, an unrenewed lease of the
    # healthy relay would have expired too.
    [control] = await send_pings(db.outbox, 1, start=2)
    stuck = Refusing()
    stuck.gate = asyncio.Event()
    dying = asyncio.create_task(relay_of(db.outbox, stuck, lease=lease, name="dies").run_once())
    await asyncio.wait_for(stuck.publishing.wait(), 10)
    dying.cancel()
    await asyncio.gather(dying, return_exceptions=True)

    other = Refusing()
    heir = relay_of(db.outbox, other, poll_interval=0.02, name="heir")
    async with heir:
        await relayed(heir, lambda stats: stats.published >= 1)
    assert [m.message_id for m in other.published] == [control]
    held.gate.set()
    assert (await publishing).published == 2
    assert [m.message_id for m in held.published] == held_ids
    assert await db.outbox.counts() == {PENDING: 0, SENT: 3, DEAD: 0}


class Crashed(BaseException):
    """What no round catches: it ends the relay's loop."""


class Crashing(Refusing):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    async def send_messages(self, messages: Sequence[Message]) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("error", "raised", "match"),
    [
        pytest.param(Crashed("the broker's SDK gave up"), Crashed, "gave up", id="error"),
        pytest.param(
            asyncio.CancelledError(), RuntimeError, "cancelled while it ran", id="cancelled"
        ),
    ],
)
async def test_run_raises_what_ended_the_relays_loop(
    db: Database, error: BaseException, raised: type[BaseException], match: str
) -> None:
    await send_pings(db.outbox, 1)
    relay = relay_of(db.outbox, Crashing(error))
    with pytest.raises(raised, match=match):
        await asyncio.wait_for(relay.run(), 10)
    assert not relay.running
    assert not relay.listening


# -- what the relay logs ----------------------------------------------------------------

PROGRESS = re.compile(
    r": (?P<published>\d+) published, (?P<retried>\d+) retried, (?P<dead>\d+) dead "
    r"in the last [\d.]+ s; (?P<backlog>.*)$"
)


class RelayLog(logging.Handler):
    """The relay's log lines (logger ``mediator.outbox``), and a wait for one."""

    def __init__(self, relay: OutboxRelay) -> None:
        super().__init__(logging.INFO)
        self.relay = relay
        self.lines: list[str] = []
        self._waiters: list[tuple[re.Pattern[str], asyncio.Event]] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        if record.levelno != logging.INFO or not line.startswith(f"outbox relay {self.relay.name}"):
            return
        self.lines.append(line)
        for pattern, event in self._waiters:
            if pattern.search(line):
                event.set()

    async def line(self, pattern: str, timeout: float = 10.0) -> str:
        """The first line matching `pattern`, once the relay has written it."""
        wanted = re.compile(pattern)
        event = asyncio.Event()
        self._waiters.append((wanted, event))
        try:
            if not any(wanted.search(line) for line in self.lines):
                async with asyncio.timeout(timeout):
                    await event.wait()
        except TimeoutError:
            raise AssertionError(f"no line matching {pattern!r}; lines: {self.lines}") from None
        finally:
            self._waiters.remove((wanted, event))
        return next(line for line in self.lines if wanted.search(line))

    def progress(self) -> list[re.Match[str]]:
        return [m for line in self.lines if (m := PROGRESS.search(line))]


@pytest.fixture
def relay_log(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[OutboxRelay], RelayLog]]:
    caplog.set_level(logging.INFO, logger="mediator.outbox")
    logger = logging.getLogger("mediator.outbox")
    handlers: list[RelayLog] = []

    def watch(relay: OutboxRelay) -> RelayLog:
        handler = RelayLog(relay)
        logger.addHandler(handler)
        handlers.append(handler)
        return handler

    yield watch
    for handler in handlers:
        logger.removeHandler(handler)


def backlog_queries(db: Database) -> Callable[[int], Any]:
    """A wait for `n` more runs of the relay's progress query (its one
    aggregate over the pending rows), seen on the engine."""
    from sqlalchemy import event

    seen = {"count": 0}
    reached: list[tuple[int, asyncio.Event]] = []

    def executed(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "count(*)" in statement and "min(CASE" in statement:
            seen["count"] += 1
            for count, waiter in reached:
                if seen["count"] >= count:
                    waiter.set()

    event.listen(db.engine.sync_engine, "after_cursor_execute", executed)

    async def more(n: int) -> None:
        waiter = asyncio.Event()
        reached.append((seen["count"] + n, waiter))
        async with asyncio.timeout(10):
            await waiter.wait()

    return more


async def test_the_relay_logs_its_start_its_progress_and_its_stop(
    db: Database, relay_log: Callable[[OutboxRelay], RelayLog]
) -> None:
    await send_pings(db.outbox, 3)
    relay = relay_of(db.outbox, Refusing(), progress_interval=0.05)
    log = relay_log(relay)
    more_queries = backlog_queries(db)
    async with relay:
        await relayed(relay, lambda stats: stats.published == 3)
        idle = await log.line(r"nothing pending \(idle: ")
        # Quiet intervals go on querying (one aggregate each) and write nothing.
        await more_queries(2)
    start, *progress, stop = log.lines
    woken = "woken by LISTEN/NOTIFY" if db.kind == "postgresql" else "polling every 1 s"
    assert start == (
        f"outbox relay {relay.name} started: table {db.prefix}_outbox ({db.kind}) to "
        f"Refusing(prefix 'refusing'), {woken}"
        + (", polling every 1 s as a fallback" if db.kind == "postgresql" else "")
        + "; progress every 0.05 s"
    )
    # The rows published are in the lines before the idle one (one line, or
    # a first one before the round if the round was slow); the idle line is
    # the last: the quiet intervals after it wrote nothing.
    assert progress[-1] == idle
    *busy, quiet = log.progress()
    assert len(busy) + 1 == len(progress)
    assert sum(int(m["published"]) for m in busy) == 3
    assert busy[-1]["backlog"] == "nothing pending"
    assert (quiet["published"], quiet["retried"], quiet["dead"]) == ("0", "0", "0")
    assert quiet["backlog"] == (
        "nothing pending (idle: no more lines until there is something to say)"
    )
    assert stop.startswith(f"outbox relay {relay.name} stopped after ")
    assert stop.endswith(
        ": in total 3 published, 0 retried, 0 dead, 0 given back, 0 lost to another relay, "
        "0 cleaned up, 0 failed rounds"
    )


async def test_the_progress_line_gives_the_pending_rows_and_how_long_they_waited(
    db: Database, relay_log: Callable[[OutboxRelay], RelayLog]
) -> None:
    outbox = db.outbox
    emitter = EventEmitter(event_map=EventMap(), message_broker=outbox)
    refused, behind = OrderPlaced(order_id=1), OrderPlaced(order_id=1)
    for event in (refused, behind, Ping(n=1)):
        async with outbox.unit_of_work():
            await emitter.emit(event)
    broker = Refusing(refuse=lambda m: m.message_id == refused.event_id)
    # The refused row is retried in an hour; the row behind it (same key)
    # waits for it, due and pending; the ping goes out.
    later = Backoff(initial=3600.0, multiplier=1.0, maximum=3600.0, jitter=0.0)
    relay = relay_of(outbox, broker, backoff=later, progress_interval=0.05)
    log = relay_log(relay)
    async with relay:
        await relayed(relay, lambda stats: stats.published == 1 and stats.retried == 1)
        line = await log.line(r"; 2 pending, the oldest due one waiting [\d.]+ s$")
    counted = log.progress()
    assert sum(int(m["published"]) for m in counted) == 1
    assert sum(int(m["retried"]) for m in counted) == 1
    assert PROGRESS.search(line) is not None
    assert "idle" not in " ".join(log.lines[1:-1])  # rows pending: never idle
    assert log.lines[-1].endswith(
        ": in total 1 published, 1 retried, 0 dead, 1 given back, 0 lost to another relay, "
        "0 cleaned up, 0 failed rounds"
    )


async def test_the_relay_logs_where_it_publishes_without_a_password(
    db: Database, relay_log: Callable[[OutboxRelay], RelayLog]
) -> None:
    from brokers.redis import RedisStreamMessageBroker

    broker = RedisStreamMessageBroker.from_url("redis://relay:s3cret@127.0.0.1:1/0", "shop")
    relay = relay_of(db.outbox, broker, progress_interval=None)
    log = relay_log(relay)
    try:
        async with relay:  # nothing to publish: the broker is never reached
            pass
    finally:
        await broker.client.aclose()
    start, stop = log.lines
    assert "to RedisStreamMessageBroker(127.0.0.1:1, prefix 'shop')" in start
    assert start.endswith("; no progress lines")
    assert "s3cret" not in " ".join(log.lines)
    assert "in total 0 published" in stop


@only("postgresql")
async def test_writers_of_one_partition_key_commit_in_the_order_of_their_rows(
    db: Database,
) -> None:
    outbox = db.outbox
    emitter = EventEmitter(event_map=EventMap(), message_broker=outbox)
    wrote = asyncio.Event()
    commit = asyncio.Event()
    first, second = OrderPlaced(order_id=5), OrderPlaced(order_id=5)

    async def hold_open() -> None:
        async with outbox.unit_of_work():
            await emitter.emit(first)
            wrote.set()
            await commit.wait()

    async def write_second() -> None:
        async with outbox.unit_of_work():
            await emitter.emit(second)

    holder = asyncio.create_task(hold_open())
    await asyncio.wait_for(wrote.wait(), 10)
    writer = asyncio.create_task(write_second())
    # The second writer waits for the key's row, which the first holds until
    # it commits (seen from the server: a backend waiting on a lock).

    async def waiting_on_the_key() -> bool:
        return bool(
            await db.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE :keys",
                keys=f"%{db.prefix}_outbox_keys%",
            )
        )

    await observed(waiting_on_the_key)
    assert not writer.done()
    commit.set()
    await asyncio.gather(holder, writer)
    assert await outbox.message_ids() == [first.event_id, second.event_id]


# -- the documentation and the example -----------------------------------------------------


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_the_documented_sql_is_the_sql_the_tables_are_made_with(dialect: str) -> None:
    from mediator.outbox import OutboxTables

    page = (Path(__file__).resolve().parent.parent / "docs" / "outbox.md").read_text()
    assert OutboxTables().sql(dialect) in page


def test_the_sqlite_example_commits_publishes_and_rolls_back() -> None:
    from tests.examples_runner import run_ok

    assert run_ok("outbox_sqlite.py") == [
        "placed order 1",
        "billing: order 1, 4200 cents",
        "refused an order of -5 cents: its row and its event were rolled back together",
        "orders: 1, outbox rows: {'pending': 0, 'sent': 1, 'dead': 0}",
    ]


# -- kill -9 -----------------------------------------------------------------------------


@pytest.mark.timeout(150)
async def test_a_relay_process_killed_with_sigkill_ten_times_loses_nothing(
    db: Database, redis_url: str, key_prefix: str, tmp_path: Path, record_property: Any
) -> None:
    result = await soak(db, redis_url, key_prefix, sends=1000, kills=10, log=tmp_path / "relay.log")
    print(f"soak on {db.kind}: {result}")
    record_property("soak", str(result))
    assert result.kills == 10
    assert result.lost == 0, result
    assert await db.outbox.counts() == {PENDING: 0, SENT: 1000, DEAD: 0}


@only("postgresql")
async def test_processes_creating_the_tables_at_once_all_succeed(db: Database) -> None:
    # Every worker of `mediator run --workers N` runs the same start-up hook.
    await db.outbox.drop_tables()
    outboxes = [Outbox(db.new_engine(), prefix=db.prefix) for _ in range(4)]

    await asyncio.gather(*(outbox.create_tables() for outbox in outboxes))

    assert await db.outbox.counts() == {"pending": 0, "sent": 0, "dead": 0}
