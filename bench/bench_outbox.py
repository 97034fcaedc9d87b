"""The outbox against the same work by hand, the relay's throughput, and the
time from a commit to its publish; on SQLite and PostgreSQL, in one run.

    python bench/bench_outbox.py [--quick] [--soak SENDS]

Budget (README.md, "Benchmarks"): a send that writes a row and one broker-bound
event through the outbox costs at most 1.3 x the same send written by hand:
one transaction inserting the row and the event's envelope into the outbox
table. Reported, with no budget: relay throughput (rows claimed, published to
the in-memory broker and marked sent, per second) and commit-to-publish
latency p50/p99, woken in-process (relay next to the mediator), by
LISTEN/NOTIFY (PostgreSQL, a relay in another process) and by polling.

``--soak SENDS`` runs the kill -9 soak of the test suite at size SENDS (20
kills) against Redis Streams and prints lost and duplicate counts.

PostgreSQL is the server at DATABASE_URL (default
postgresql+asyncpg://postgres@127.0.0.1:5432/test), left out with the reason
when it does not answer; tables are made and dropped per run.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _timing import compare

from brokers.memory import InMemoryMessageBroker
from mediator import (
    EventEmitter,
    EventMap,
    Mediator,
    Message,
    MessageCodec,
    NotificationEvent,
    Request,
    RequestHandler,
    RequestMap,
)
from mediator.outbox import Outbox, OutboxRelay, current_session
from mediator.transport import encode_message
from tests.outbox_support import Database, _probe, database_url, open_database, soak

BUDGET = 1.3


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class PlaceOrder(Request[int]):
    order_id: int


def place_order_handler(orders: str) -> type[RequestHandler[PlaceOrder, int]]:
    insert = text(f"INSERT INTO {orders} (id, total) VALUES (:id, 42)")

    class PlaceOrderHandler(RequestHandler[PlaceOrder, int]):
        async def handle(self, request: PlaceOrder) -> int:
            await current_session().execute(insert, {"id": request.order_id})
            self.events.append(OrderPlaced(order_id=request.order_id))
            return request.order_id

    return PlaceOrderHandler


async def bench_send(db: Database, n: int, repeats: int) -> None:
    orders = await db.table("orders", "id INTEGER PRIMARY KEY, total INTEGER NOT NULL")
    outbox = db.outbox
    requests = RequestMap()
    requests.bind(PlaceOrder, place_order_handler(orders))
    mediator = Mediator(
        request_map=requests,
        event_emitter=EventEmitter(event_map=EventMap(), message_broker=outbox),
        unit_of_work=outbox.unit_of_work,
    )
    insert_order = text(f"INSERT INTO {orders} (id, total) VALUES (:id, 42)")
    insert_event = outbox.tables.outbox.insert()
    # SQLite: the same BEGIN IMMEDIATE the unit of work takes.
    options = {"sqlite_begin": "IMMEDIATE"} if db.kind == "sqlite" else None
    ids = iter(range(10**9))

    async def by_hand(count: int) -> None:
        for _ in range(count):
            order_id = next(ids)
            async with outbox.sessions() as session:
                connection = await session.connection(execution_options=options)
                # The row as the handler writes it (through the session), the
                # event row as the outbox does (through its connection).
                await session.execute(insert_order, {"id": order_id})
                # The envelope as the emitter writes it: a correlation id header.
                message = MessageCodec.to_message(
                    OrderPlaced(order_id=order_id), {"correlation_id": os.urandom(16).hex()}
                )
                stamp = message.payload["event_timestamp"]
                await connection.execute(
                    insert_event,
                    {
                        "message_id": message.message_id,
                        "message_name": message.message_name,
                        "partition_key": None,
                        "body": encode_message(message).decode(),
                        "created_at": stamp,
                        "next_attempt_at": stamp,
                    },
                )
                await session.commit()

    async def through_the_outbox(count: int) -> None:
        send = mediator.send
        for _ in range(count):
            await send(PlaceOrder(order_id=next(ids)))

    await compare(
        f"{db.kind}: send writing a row + one event, vs by hand",
        by_hand,
        through_the_outbox,
        BUDGET,
        n,
        repeats,
    )


async def fill(outbox: Outbox, count: int) -> list[uuid.UUID]:
    emitter = EventEmitter(event_map=EventMap(), message_broker=outbox)
    events = [OrderPlaced(order_id=n) for n in range(count)]
    for start in range(0, count, 500):
        async with outbox.unit_of_work():
            await emitter.emit_all(events[start : start + 500])
    return [event.event_id for event in events]


async def bench_relay_throughput(db: Database, rows: int) -> None:
    await relay_through(db, rows, InMemoryMessageBroker(history=10), "in-memory broker")
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379"
    from redis.asyncio import Redis

    from brokers.redis import RedisStreamMessageBroker

    client = Redis.from_url(redis_url)
    prefix = f"mtk-bench-{uuid.uuid4().hex[:8]}"
    try:
        await client.ping()
    except Exception as exc:
        print(f"{db.kind}: relay throughput to Redis Streams: left out, no Redis ({exc})")
        await client.aclose()
        return
    try:
        broker = RedisStreamMessageBroker(client=client, channel_prefix=prefix)
        await relay_through(db, rows, broker, "Redis Streams")
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def relay_through(db: Database, rows: int, broker: Any, name: str) -> None:
    await fill(db.outbox, rows)
    relay = OutboxRelay(db.outbox, broker, batch_size=100)
    started = time.perf_counter()
    while (await relay.run_once()).claimed:
        pass
    elapsed = time.perf_counter() - started
    print(
        f"{db.kind}: relay throughput, batch 100, {name + ':':<18} "
        f"{rows / elapsed:9.0f} rows/s ({rows} rows in {elapsed:.2f} s)"
    )


class Stamping(InMemoryMessageBroker):
    """Notes when each message id was handed to it."""

    def __init__(self) -> None:
        super().__init__(history=10)
        self.waiting: dict[uuid.UUID, asyncio.Future[float]] = {}

    async def send_messages(self, messages: Sequence[Message]) -> None:
        now = time.perf_counter()
        for message in messages:
            waiter = self.waiting.pop(message.message_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(now)

    async def send_message(self, message: Message) -> None:
        await self.send_messages((message,))


async def latency(
    db: Database, title: str, samples: int, *, same_process: bool, **relay_options: float | bool
) -> None:
    broker = Stamping()
    relay = OutboxRelay(db.outbox, broker, **relay_options)  # type: ignore[arg-type]
    poll = float(relay_options["poll_interval"]) if not relay.listen else 0.0
    if same_process:
        poll = 0.0
    writer = db.outbox if same_process else Outbox(db.new_engine(), prefix=db.prefix)
    emitter = EventEmitter(event_map=EventMap(), message_broker=writer)
    loop = asyncio.get_running_loop()
    delays: list[float] = []
    async with relay:
        for n in range(samples):
            event = OrderPlaced(order_id=n)
            published = broker.waiting[event.event_id] = loop.create_future()
            async with writer.unit_of_work():
                await emitter.emit(event)
            committed = time.perf_counter()
            delays.append(await asyncio.wait_for(published, 30) - committed)
            # Let the relay go idle before the next commit, at a random point
            # of its poll (a commit right after a publish would find it awake).
            await asyncio.sleep(random.uniform(0.02, 0.02 + poll))
    delays.sort()
    p50 = statistics.median(delays)
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    print(
        f"{db.kind}: commit-to-publish, {title:<44} p50 {p50 * 1e3:7.2f} ms  "
        f"p99 {p99 * 1e3:7.2f} ms  ({samples} sends)"
    )


async def bench_database(kind: str, quick: bool) -> None:
    with tempfile.TemporaryDirectory() as directory:
        db = await open_database(kind, Path(directory))
        try:
            await bench_send(db, n=300 if quick else 3000, repeats=3 if quick else 5)
            await bench_relay_throughput(db, rows=2000 if quick else 20000)
            samples = 30 if quick else 300
            await latency(db, "woken in-process", samples, same_process=True, poll_interval=60.0)
            if kind == "postgresql":
                await latency(
                    db,
                    "another process, LISTEN/NOTIFY",
                    samples,
                    same_process=False,
                    poll_interval=60.0,
                )
            await latency(
                db,
                "another process, polling every 100 ms",
                samples,
                same_process=False,
                poll_interval=0.1,
                listen=False,
            )
        finally:
            await db.close()


async def main(quick: bool) -> None:
    await bench_database("sqlite", quick)
    why = await _probe(database_url())
    if why is None:
        await bench_database("postgresql", quick)
    else:
        print(f"postgresql: left out, no server at {database_url()} ({why})")


async def soak_main(sends: int) -> None:
    from redis.asyncio import Redis

    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379"
    kinds = ["sqlite"]
    why = await _probe(database_url())
    if why is None:
        kinds.append("postgresql")
    else:
        print(f"postgresql: left out, no server at {database_url()} ({why})")
    for kind in kinds:
        with tempfile.TemporaryDirectory() as directory:
            db = await open_database(kind, Path(directory))
            prefix = f"mtk-soak-{uuid.uuid4().hex[:8]}"
            try:
                result = await soak(
                    db, redis_url, prefix, sends=sends, kills=20, log=Path(directory) / "relay.log"
                )
                print(f"{kind}: soak: {result}")
            finally:
                await db.close()
                client = Redis.from_url(redis_url)
                keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
                if keys:
                    await client.delete(*keys)
                await client.aclose()


if __name__ == "__main__":
    if "--soak" in sys.argv:
        asyncio.run(soak_main(int(sys.argv[sys.argv.index("--soak") + 1])))
    else:
        asyncio.run(main(quick="--quick" in sys.argv))
