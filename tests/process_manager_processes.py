"""The consumer the process-manager concurrency test runs twice: ``python -m
tests.process_manager_processes DB_URL TABLE_PREFIX REDIS_URL CHANNEL_PREFIX``.

A Redis Streams consumer in the group "tally" whose process manager counts
the `Tallied` events of each key in ``{prefix}_processes``; it prints
"ready" once it consumes, and on SIGTERM stops and prints
``conflicts N`` (the saves its version check refused, each event then
handled again).
"""

from __future__ import annotations

import asyncio
import signal
import sys

import attrs

from mediator import EventConsumer, EventMap, NotificationEvent
from mediator.outbox import Outbox
from mediator.sagas import Process, ProcessManager, SqlProcessStore, handles
from tests.outbox_processes import engine_for, stream_broker


@attrs.frozen(kw_only=True)
class Tallied(NotificationEvent):
    key: int


@attrs.define
class Tally:
    count: int = 0


class Tallies(ProcessManager[Tally]):
    @handles(Tallied, key="key", starts=True)
    async def tallied(self, process: Process[Tally], event: Tallied) -> None:
        tally = process.state or Tally()
        await asyncio.sleep(0.001)  # the other process handles the same key meanwhile
        process.state = attrs.evolve(tally, count=tally.count + 1)


async def main(db_url: str, prefix: str, redis_url: str, channel_prefix: str) -> None:
    engine = engine_for(db_url)
    store = SqlProcessStore(Outbox(engine, prefix=prefix))
    broker = stream_broker(redis_url, channel_prefix)
    events = EventMap()
    Tallies().bind(events, store)
    consumer = EventConsumer(broker=broker, event_map=events, max_concurrency=16)
    await consumer.subscribe(f"{channel_prefix}:notification_event:*", group="tally")
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    try:
        async with consumer:
            print("ready", flush=True)
            await stopping.wait()
        print(f"conflicts {store.conflicts}", flush=True)
    finally:
        await broker.stop()
        await broker.client.aclose()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
