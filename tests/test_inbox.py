"""The inbox: a message id is handled once per consumer, in the transaction
of the handlers' writes, however often the transport delivers it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from mediator import (
    Backoff,
    DeadLetter,
    EventConsumer,
    EventEmitter,
    EventMap,
    LogAndContinue,
    MessageCodec,
    Retry,
)
from mediator.outbox import Inbox, OutboxError, current_session
from mediator.testing import CapturingBroker, wait_until
from tests.outbox_processes import Paid, stream_broker
from tests.outbox_support import KINDS, Database, open_database
from tests.transports import FACTORIES, Transport

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=KINDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(request.param, tmp_path)
    try:
        yield database
    finally:
        await database.close()


async def payments_table(db: Database) -> str:
    return await db.table("payments", "order_id INTEGER NOT NULL")


async def payments(db: Database, table: str) -> list[int]:
    async with db.engine.connect() as connection:
        result = await connection.execute(text(f"SELECT order_id FROM {table} ORDER BY order_id"))
        return list(result.scalars())


class Billing:
    """A consumer whose one handler records each payment as a row: the side
    effect that must happen once."""

    def __init__(self, db: Database, table: str, broker: Any, **options: Any) -> None:
        self.calls = 0
        self.fail_next = 0
        self.gate: asyncio.Event | None = None
        """When set, the first call waits for it after its write (a slow handler)."""
        self.entered = asyncio.Event()
        events = EventMap()
        billing = self

        @events.bind(Paid, policy=options.pop("policy", None))
        async def record_payment(paid: Paid) -> None:
            billing.calls += 1
            await current_session().execute(
                text(f"INSERT INTO {table} (order_id) VALUES (:order_id)"),
                {"order_id": paid.order_id},
            )
            if billing.gate is not None and billing.calls == 1:
                billing.entered.set()
                await billing.gate.wait()
            if billing.fail_next:
                billing.fail_next -= 1
                raise RuntimeError(f"payment of order {paid.order_id} failed after its write")

        self.inbox = Inbox(db.outbox, consumer="billing", **options.pop("inbox", {}))
        self.consumer = EventConsumer(broker=broker, event_map=events, inbox=self.inbox, **options)


@pytest.fixture(
    params=[
        pytest.param(("memory", "sqlite"), id="memory-sqlite"),
        pytest.param(("memory", "postgresql"), id="memory-postgresql"),
        pytest.param(("redis-streams", "sqlite"), id="redis-streams-sqlite"),
        pytest.param(("redis-streams", "postgresql"), id="redis-streams-postgresql"),
        pytest.param(("azure", "sqlite"), id="azure-sqlite"),
    ]
)
async def setting(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Transport, Database]]:
    transport_name, kind = request.param
    database = await open_database(kind, tmp_path)
    try:
        prefix = f"mtk-i{uuid.uuid4().hex[:8]}"
        async with FACTORIES[transport_name](prefix, request) as transport:
            yield transport, database
    finally:
        await database.close()


async def test_copies_of_one_message_have_one_side_effect(
    setting: tuple[Transport, Database],
) -> None:
    transport, db = setting
    table = await payments_table(db)
    billing = Billing(db, table, transport.broker)
    prefix = transport.broker.channel_prefix
    await billing.consumer.subscribe(
        f"{prefix}:notification_event:*", group=transport.own_group("billing")
    )
    message = MessageCodec.to_message(Paid(order_id=1))
    async with billing.consumer:
        # The same message id three times, as a relay that crashed after
        # publishing, or a transport redelivering, would hand it over.
        await transport.broker.send_messages([message, message])
        await transport.broker.send_message(message)
        stats = await wait_until(
            billing.consumer, lambda stats: stats.handled + stats.duplicates == 3, timeout=20.0
        )
    assert (stats.handled, stats.duplicates, stats.dead_lettered) == (1, 2, 0)
    assert await payments(db, table) == [1]
    assert billing.calls == 1
    assert await billing.inbox.seen(message.message_id)


@pytest.mark.timeout(90)
async def test_a_consumer_killed_after_its_commit_is_not_handled_twice_on_redelivery(
    db: Database, redis_url: str, key_prefix: str
) -> None:
    table = await payments_table(db)
    command = [
        sys.executable,
        "-m",
        "tests.outbox_processes",
        "crashing-consumer",
        db.url,
        db.prefix,
        redis_url,
        key_prefix,
    ]
    crashing = await asyncio.create_subprocess_exec(
        *command,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    broker = stream_broker(redis_url, key_prefix)
    try:
        assert crashing.stdout is not None
        assert crashing.stderr is not None
        ready = await asyncio.wait_for(crashing.stdout.readline(), 30)
        assert ready.strip() == b"ready", await crashing.stderr.read()
        message = MessageCodec.to_message(Paid(order_id=42))
        await broker.send_message(message)
        # It handles the payment, commits, and dies before acknowledging.
        returncode = await asyncio.wait_for(crashing.wait(), 30)
        assert returncode == -signal.SIGKILL, await crashing.stderr.read()
        assert await payments(db, table) == [42]

        # Another member of the group takes the entry over once it is idle.
        survivor = Billing(db, table, broker)
        await survivor.consumer.subscribe(f"{key_prefix}:notification_event:*", group="billing")
        async with survivor.consumer:
            stats = await wait_until(
                survivor.consumer, lambda stats: stats.duplicates == 1, timeout=30.0
            )
    finally:
        if crashing.returncode is None:
            crashing.kill()
        await crashing.wait()
        await broker.stop()
        await broker.client.aclose()
    assert (stats.handled, stats.duplicates) == (0, 1)
    assert survivor.calls == 0
    assert await payments(db, table) == [42]


async def test_a_lock_lost_on_azure_while_the_handler_works_is_one_side_effect(
    db: Database, request: pytest.FixtureRequest
) -> None:
    table = await payments_table(db)
    async with FACTORIES["azure"](f"mtk-i{uuid.uuid4().hex[:8]}", request) as transport:
        billing = Billing(db, table, transport.broker)
        billing.gate = asyncio.Event()
        prefix = transport.broker.channel_prefix
        await billing.consumer.subscribe(
            f"{prefix}:notification_event:*", group=transport.own_group("billing")
        )
        async with billing.consumer:
            await transport.broker.send_message(MessageCodec.to_message(Paid(order_id=3)))
            await asyncio.wait_for(billing.entered.wait(), 15)
            # The lock runs out while the handler works: Service Bus delivers
            # the message again, to whichever receiver asks first.
            transport.peer.expire_locks()  # type: ignore[attr-defined]
            billing.gate.set()
            stats = await wait_until(
                billing.consumer, lambda stats: stats.duplicates == 1, timeout=20.0
            )
    assert billing.calls == 1
    assert stats.dead_lettered == 0
    assert await payments(db, table) == [3]


async def test_a_delivery_whose_handler_fails_keeps_nothing(db: Database) -> None:
    from brokers.memory import InMemoryMessageBroker

    table = await payments_table(db)
    broker = InMemoryMessageBroker(channel_prefix="billing")
    billing = Billing(db, table, broker, policy=DeadLetter())
    billing.fail_next = 1
    await billing.consumer.subscribe("billing:notification_event:*")
    message = MessageCodec.to_message(Paid(order_id=5))
    async with billing.consumer:
        await broker.send_message(message)
        await wait_until(billing.consumer, lambda stats: stats.dead_lettered == 1)
        # Rolled back, its record with it: the same message is handled when it comes again.
        assert await payments(db, table) == []
        assert not await billing.inbox.seen(message.message_id)
        await broker.send_message(message)
        stats = await wait_until(billing.consumer, lambda stats: stats.handled == 1)
    assert stats.duplicates == 0
    assert await payments(db, table) == [5]


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param(Retry(attempts=3, then=DeadLetter()), id="retried"),
        pytest.param(LogAndContinue(), id="log-and-continue"),
    ],
)
async def test_a_handler_call_that_raised_leaves_none_of_its_writes(
    db: Database, policy: Any
) -> None:
    from brokers.memory import InMemoryMessageBroker

    table = await payments_table(db)
    broker = InMemoryMessageBroker(channel_prefix="billing")
    billing = Billing(db, table, broker, policy=policy)
    billing.fail_next = 1
    await billing.consumer.subscribe("billing:notification_event:*")
    async with billing.consumer:
        await broker.send_message(MessageCodec.to_message(Paid(order_id=6)))
        await wait_until(billing.consumer, lambda stats: stats.handled == 1)
    # The failed call wrote a row and raised: its savepoint took the row back.
    expected = [6] if isinstance(policy, Retry) else []
    assert await payments(db, table) == expected


async def test_follow_up_events_commit_with_the_delivery_through_the_outbox(
    db: Database,
) -> None:
    from brokers.memory import InMemoryMessageBroker
    from tests.test_outbox import Ping

    table = await payments_table(db)
    broker = InMemoryMessageBroker(channel_prefix="billing")
    events = EventMap()

    @events.bind(Paid)
    async def record_and_announce(paid: Paid) -> list[Ping]:
        await current_session().execute(
            text(f"INSERT INTO {table} (order_id) VALUES (:order_id)"), {"order_id": paid.order_id}
        )
        return [Ping(n=paid.order_id)]

    consumer = EventConsumer(
        broker=broker,
        event_map=events,
        event_emitter=EventEmitter(event_map=events, message_broker=db.outbox),
        inbox=Inbox(db.outbox, consumer="billing"),
    )
    await consumer.subscribe("billing:notification_event:Paid")
    async with consumer:
        await broker.send_message(MessageCodec.to_message(Paid(order_id=8)))
        await wait_until(consumer, lambda stats: stats.handled == 1)
    assert await payments(db, table) == [8]
    [ping_id] = await db.outbox.message_ids()
    published = CapturingBroker(InMemoryMessageBroker())
    from mediator.outbox import OutboxRelay

    await OutboxRelay(db.outbox, published).run_once()
    [ping] = published.messages
    assert ping.message_id == ping_id
    assert ping.payload["n"] == 8


async def test_records_expire_after_the_window(db: Database) -> None:
    from brokers.memory import InMemoryMessageBroker

    table = await payments_table(db)
    broker = InMemoryMessageBroker(channel_prefix="billing")
    billing = Billing(db, table, broker, inbox={"window": 0.0})
    await billing.consumer.subscribe("billing:notification_event:*")
    message = MessageCodec.to_message(Paid(order_id=9))
    async with billing.consumer:
        await broker.send_message(message)
        await wait_until(billing.consumer, lambda stats: stats.handled == 1)
        await billing.inbox.expire()
        assert not await billing.inbox.seen(message.message_id)
        # Past the window a copy is a new message: handled again.
        await broker.send_message(message)
        stats = await wait_until(billing.consumer, lambda stats: stats.handled == 2)
    assert stats.duplicates == 0
    assert await payments(db, table) == [9, 9]


async def test_expiring_old_records_runs_beside_the_deliveries_not_in_their_path(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deletes of expired records (up to 10 x 1,000 rows) run in a task of
    their own: a delivery is settled without waiting for them."""
    from brokers.memory import InMemoryMessageBroker

    table = await payments_table(db)
    broker = InMemoryMessageBroker(channel_prefix="billing")
    billing = Billing(db, table, broker)
    expiring = asyncio.Event()
    may_finish = asyncio.Event()

    cancelled = asyncio.Event()

    async def slow_expire(self: Inbox) -> int:
        expiring.set()
        try:
            await may_finish.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 0

    monkeypatch.setattr(Inbox, "expire", slow_expire)
    await billing.consumer.subscribe("billing:notification_event:*")
    try:
        async with billing.consumer:
            await broker.send_message(MessageCodec.to_message(Paid(order_id=1)))
            async with asyncio.timeout(10):
                await expiring.wait()
            # The expiry hangs, and the delivery that started it is settled.
            stats = await wait_until(billing.consumer, lambda stats: stats.handled == 1)
            assert stats.in_flight == 0
        # Stopping the consumer ended the expiry too: nothing of it outlives the
        # consumer to use an engine the application disposes next.
        assert cancelled.is_set()
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("expire <Inbox")]
    finally:
        may_finish.set()
    assert await payments(db, table) == [1]


def test_an_inbox_refuses_a_consumer_name_it_cannot_store(tmp_path: Path) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from mediator.outbox import Outbox

    outbox = Outbox(create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}"))
    with pytest.raises(ValueError, match="name the consumer"):
        Inbox(outbox, consumer="")
    with pytest.raises(ValueError, match="must be 0 or more"):
        Inbox(outbox, consumer="billing", window=-1.0)


async def test_a_delivery_inside_a_unit_of_work_is_refused(db: Database) -> None:
    inbox = Inbox(db.outbox, consumer="billing")
    async with db.outbox.unit_of_work():
        with pytest.raises(OutboxError, match="a delivery is handled in a transaction of its own"):
            await inbox.handling(MessageCodec.to_message(Paid(order_id=1))).__aenter__()


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
@pytest.mark.parametrize("where", ["in the handler", "at the commit"])
async def test_a_database_connection_lost_releases_the_delivery_and_its_retry_is_clean(
    db: Database, where: str
) -> None:
    # A backend terminated while a delivery's transaction is open: the retry
    # policy must not run again inside that broken transaction (every attempt
    # would fail and the message be dead-lettered as handler_failed); the
    # delivery is given back, and its redelivery, in a fresh transaction, pays once.
    from brokers.memory import InMemoryMessageBroker

    table = await payments_table(db)
    broker = InMemoryMessageBroker(channel_prefix="billing")
    events = EventMap()
    calls: list[int] = []
    inbox = Inbox(db.outbox, consumer="billing")

    @events.bind(Paid, policy=Retry(attempts=3, then=DeadLetter()))
    async def record_payment(paid: Paid) -> None:
        calls.append(paid.order_id)
        session = current_session()
        await session.execute(
            text(f"INSERT INTO {table} (order_id) VALUES (:order_id)"), {"order_id": paid.order_id}
        )
        if len(calls) == 1:
            if where == "in the handler":
                await session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
            else:
                # Killed from elsewhere, so that the handler returns and the commit fails.
                pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar()
                await db.execute("SELECT pg_terminate_backend(:pid)", pid=pid)

    consumer = EventConsumer(
        broker=broker, event_map=events, inbox=inbox, redelivery_backoff=Backoff(initial=0.01)
    )
    await consumer.subscribe("billing:notification_event:*")
    async with consumer:
        await broker.send_message(MessageCodec.to_message(Paid(order_id=8)))
        stats = await wait_until(consumer, lambda s: s.handled == 1, timeout=15)

    assert stats.dead_lettered == 0
    assert stats.released >= 1
    assert await payments(db, table) == [8]
