"""Processes the outbox and inbox tests kill: run as ``python -m tests.outbox_processes``.

``relay DB_URL TABLE_PREFIX REDIS_URL CHANNEL_PREFIX``
    An OutboxRelay publishing to Redis Streams until SIGTERM (then it stops
    gracefully and exits 0). The soak kills it with SIGKILL instead.

``crashing-consumer DB_URL TABLE_PREFIX REDIS_URL CHANNEL_PREFIX``
    An EventConsumer with an Inbox in the group "billing" whose first
    delivery commits its side effect and then kills the process (SIGKILL)
    before the delivery is acknowledged: the crash an inbox is for.

Both print "ready" once they run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import attrs
from redis.asyncio import Redis
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session

from brokers.redis import RedisStreamMessageBroker
from mediator import EventConsumer, EventMap, NotificationEvent
from mediator.outbox import Inbox, Outbox, OutboxRelay, current_session, sqlite_engine

RELAY_LEASE = 0.5
"""Seconds a killed relay's rows stay leased before another takes them."""


@attrs.frozen(kw_only=True)
class Paid(NotificationEvent):
    order_id: int


def engine_for(url: str) -> AsyncEngine:
    return sqlite_engine(url) if url.startswith("sqlite") else create_async_engine(url)


def stream_broker(redis_url: str, channel_prefix: str) -> RedisStreamMessageBroker:
    return RedisStreamMessageBroker(
        client=Redis.from_url(redis_url),
        channel_prefix=channel_prefix,
        discovery_interval=0.05,
        claim_interval=0.1,
        claim_idle=0.5,
        block_ms=50,
    )


async def relay(db_url: str, prefix: str, redis_url: str, channel_prefix: str) -> None:
    engine = engine_for(db_url)
    broker = stream_broker(redis_url, channel_prefix)
    outbox = Outbox(engine, prefix=prefix)
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    try:
        async with OutboxRelay(
            outbox, broker, lease=RELAY_LEASE, batch_size=50, poll_interval=0.05
        ):
            print("ready", flush=True)
            await stopping.wait()
    finally:
        await broker.stop()
        await broker.client.aclose()
        await engine.dispose()


def handler_for(effects: str) -> Any:
    async def record_payment(paid: Paid) -> None:
        await current_session().execute(
            text(f"INSERT INTO {effects} (order_id) VALUES (:order_id)"),
            {"order_id": paid.order_id},
        )

    return record_payment


async def crashing_consumer(db_url: str, prefix: str, redis_url: str, channel_prefix: str) -> None:
    engine = engine_for(db_url)
    broker = stream_broker(redis_url, channel_prefix)
    outbox = Outbox(engine, prefix=prefix)

    def crash(session: Any) -> None:
        if session.in_nested_transaction():
            return  # a handler's savepoint, released
        # The delivery's transaction committed; it is not acknowledged yet.
        os.kill(os.getpid(), signal.SIGKILL)

    event.listen(Session, "after_commit", crash)
    events = EventMap()
    events.bind(Paid, handler_for(f"{prefix}_payments"))
    consumer = EventConsumer(
        broker=broker, event_map=events, inbox=Inbox(outbox, consumer="billing")
    )
    await consumer.subscribe(f"{channel_prefix}:notification_event:*", group="billing")
    async with consumer:
        print("ready", flush=True)
        await asyncio.Event().wait()  # until the first delivery kills it


def main(argv: list[str]) -> None:
    if len(argv) != 5 or argv[0] not in ("relay", "crashing-consumer"):
        sys.exit(__doc__)
    command, *arguments = argv
    asyncio.run((relay if command == "relay" else crashing_consumer)(*arguments))


if __name__ == "__main__":
    main(sys.argv[1:])
