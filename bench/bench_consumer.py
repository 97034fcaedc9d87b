"""Publish then consume N events by pattern through the in-memory broker,
typed and dispatched, against a hand-written loop doing the same work.

    python bench/bench_consumer.py [--quick]

The hand-written side: encode each envelope with orjson, pass the bytes
through a bounded asyncio.Queue, decode with orjson + msgspec.convert into the
event class and await the handler. No budget is set for this transport; the
ratio shows what the consumer's bookkeeping costs (pattern match, settlement,
counters, a task per delivery for the concurrency limit).
"""

from __future__ import annotations

import asyncio
import sys
import time

import attrs
import msgspec
import orjson

from brokers.memory import InMemoryMessageBroker
from mediator import EventConsumer, EventEmitter, EventMap, NotificationEvent


@attrs.frozen(kw_only=True)
class Tick(NotificationEvent):
    number: int


async def hand_written(n: int) -> float:
    queue: asyncio.Queue[bytes] = asyncio.Queue(1000)
    seen = 0
    done = asyncio.Event()

    async def handler(event: Tick) -> None:
        nonlocal seen
        seen += 1
        if seen == n:
            done.set()

    async def consume() -> None:
        while True:
            data = await queue.get()
            envelope = orjson.loads(data)
            await handler(msgspec.convert(envelope["payload"], Tick))

    reader = asyncio.create_task(consume())
    started = time.perf_counter()
    for number in range(n):
        event = Tick(number=number)
        payload = {
            "event_id": event.event_id,
            "event_timestamp": event.event_timestamp,
            "number": number,
        }
        await queue.put(
            orjson.dumps(
                {
                    "message_type": "notification_event",
                    "message_name": "Tick",
                    "message_id": event.event_id,
                    "payload": payload,
                    "headers": {},
                }
            )
        )
    await done.wait()
    elapsed = time.perf_counter() - started
    reader.cancel()
    return elapsed


async def through_consumer(n: int) -> float:
    broker = InMemoryMessageBroker(channel_prefix="bench", history=100)
    seen = 0
    done = asyncio.Event()
    events = EventMap()

    @events.bind(Tick)
    async def handler(event: Tick) -> None:
        nonlocal seen
        seen += 1
        if seen == n:
            done.set()

    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe("bench:notification_event:*")
    emitter = EventEmitter(message_broker=broker)
    async with consumer:
        started = time.perf_counter()
        for number in range(n):
            await emitter.emit(Tick(number=number))
        await done.wait()
        return time.perf_counter() - started


async def main(n: int, repeats: int) -> None:
    base = cand = float("inf")
    for _ in range(repeats):
        base = min(base, await hand_written(n))
        cand = min(cand, await through_consumer(n))
    print(
        f"{'memory broker: publish + consume by pattern, typed':<58} "
        f"baseline {base / n * 1e6:7.2f} us  consumer {cand / n * 1e6:7.2f} us  "
        f"ratio {cand / base:5.2f} (no budget; lower is better)"
    )


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    asyncio.run(main(n=5_000 if quick else 50_000, repeats=3 if quick else 5))
