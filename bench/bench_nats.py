"""NATS JetStream: the broker and EventConsumer against raw nats-py and
against FastStream's NatsBroker, doing the same work on the same server, in
one run.

    python bench/bench_nats.py [--quick]

NATS's address comes from ``NATS_URL`` (default ``nats://127.0.0.1:4222``).
Every stream is named under a prefix unique to the run (``bench-<hex>``)
and deleted at the end.

Budgets (README.md, "Benchmarks"):

- publishing: at least 0.9x raw nats-py doing the same work: the same bytes
  to the same subject with the same headers (``Nats-Msg-Id`` the message
  id), a JetStream publish whose acknowledgement is awaited, one message at
  a time, and the ten events of one send as one batch (published
  concurrently, every acknowledgement awaited);
- consuming in a group (a durable pull consumer, pulls of 64, one ack per
  message after the handler): at least 0.8x a raw nats-py consumer that
  fetches 64 at a time with nats-py's pull API (``PullSubscription.fetch``),
  ``orjson.loads`` each body, calls a plain handler and acks. (The broker
  pulls with one request per batch to an inbox whose callback takes each
  message, where ``fetch`` waits on a task per message: so it can come out
  ahead.)
- ahead of FastStream's NatsBroker doing the same work: publishing the same
  bytes with the same headers through JetStream; consuming a durable pull
  consumer (batch 64) with a typed (pydantic) handler, ``AckPolicy.ACK``.

Publishing sides take turns in short rounds (see `interleaved`), every
message a new one (the duplicate window would drop a repeat), the stream
purged between rounds. Consumption is timed from the first handled message
to the last over a stream filled beforehand (one stream per side and
round). Each line prints the median seconds per message of each side and
our rate as a multiple of the other's (higher is better).
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import nats
import orjson
import pydantic
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from nats.aio.client import Client
from nats.js import JetStreamContext, api

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import Body, Progress, interleaved, rate_line

from brokers.nats import NatsMessageBroker
from mediator import EventConsumer, EventMap, Message, MessageCodec, NotificationEvent
from mediator.transport import encode_message

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
HEADERS = {"correlation_id": uuid.uuid4().hex}
PREFETCH = 64
CONCURRENCY = PREFETCH
"""The consumer's slots: one per message of a fetch."""
BATCH = 10
"""Events in one send: one batch."""


@attrs.frozen(kw_only=True)
class Tick(NotificationEvent):
    number: int


class TickPayload(pydantic.BaseModel):
    event_id: uuid.UUID
    event_timestamp: datetime
    number: int


class TickEnvelope(pydantic.BaseModel):
    """The envelope as FastStream decodes it: the same fields, typed."""

    message_type: str
    message_name: str
    message_id: uuid.UUID
    payload: TickPayload
    headers: dict[str, str] = {}


def envelope(number: int) -> Message:
    return MessageCodec.to_message(Tick(number=number), HEADERS)


def pool(count: int) -> Iterator[Message]:
    """`count` envelopes, each with a message id of its own, made beforehand."""
    return iter([envelope(number) for number in range(count)])


def raw_headers(message: Message) -> dict[str, str]:
    return {"Nats-Msg-Id": str(message.message_id), **message.headers}


async def make_stream(js: JetStreamContext, prefix: str) -> None:
    await js.add_stream(
        name=prefix.replace(".", "_"),
        subjects=[f"{prefix}.>"],
        storage=api.StorageType.FILE,
        duplicate_window=120.0,
    )


# -- publishing ------------------------------------------------------------------


async def publishing(client: Client, prefix: str, n: int, batches: int, repeats: int) -> None:
    js = client.jetstream()
    broker = NatsMessageBroker(client, channel_prefix=prefix)
    await broker.start()
    faststream = NatsBroker(NATS_URL, logger=None)
    await faststream.connect()
    subject = f"{prefix}.notification_event.Tick"
    singles = pool((repeats + 1) * n * 3 + n)

    async def raw_publish(n: int) -> None:
        publish = js.publish
        for message in [next(singles) for _ in range(n)]:
            await publish(subject, encode_message(message), headers=raw_headers(message))

    async def send_message(n: int) -> None:
        send = broker.send_message
        for message in [next(singles) for _ in range(n)]:
            await send(message)

    async def fs_publish(n: int) -> None:
        for message in [next(singles) for _ in range(n)]:
            await faststream.publish(
                encode_message(message), subject, headers=raw_headers(message), stream=prefix
            )

    def purged(body: Body) -> Body:
        async def run(n: int) -> None:
            await body(n)
            await js.purge_stream(prefix)

        return run

    bodies = [purged(b) for b in (raw_publish, send_message, fs_publish)]
    raw, ours, fs = await interleaved(bodies, n, repeats)
    rate_line("publish one event, acknowledged: send_message", raw, ours, 0.9, "raw")
    rate_line("", fs, ours, 1.0, "FastStream")

    batched = pool((repeats + 1) * batches * BATCH * 3 + batches * BATCH)

    def next_batch() -> list[Message]:
        return [next(batched) for _ in range(BATCH)]

    async def raw_batch(n: int) -> None:
        for messages in [next_batch() for _ in range(n)]:
            await asyncio.gather(
                *(js.publish(subject, encode_message(m), headers=raw_headers(m)) for m in messages)
            )

    async def send_messages(n: int) -> None:
        for messages in [next_batch() for _ in range(n)]:
            await broker.send_messages(messages)

    async def fs_batch(n: int) -> None:
        for messages in [next_batch() for _ in range(n)]:
            await asyncio.gather(
                *(
                    faststream.publish(
                        encode_message(m), subject, headers=raw_headers(m), stream=prefix
                    )
                    for m in messages
                )
            )

    bodies = [purged(b) for b in (raw_batch, send_messages, fs_batch)]
    raw, ours, fs = await interleaved(bodies, batches, repeats)
    per_message = [[t / BATCH for t in side] for side in (raw, ours, fs)]
    rate_line(
        f"publish the {BATCH} events of one send: send_messages",
        per_message[0],
        per_message[1],
        0.9,
        "raw",
    )
    rate_line("", per_message[2], per_message[1], 1.0, "FastStream")
    await faststream.stop()
    await broker.stop()


# -- consuming in a group ----------------------------------------------------------


async def fill(js: JetStreamContext, prefix: str, datas: list[bytes], m: int) -> None:
    """Make the stream of `prefix` and publish `m` of `datas` to it, 500 at a time."""
    await make_stream(js, prefix)
    subject = f"{prefix}.notification_event.Tick"
    for start in range(0, m, 500):
        await asyncio.gather(
            *(
                js.publish(
                    subject,
                    datas[i % len(datas)],
                    headers={"Nats-Msg-Id": uuid.uuid4().hex, **HEADERS},
                )
                for i in range(start, min(m, start + 500))
            )
        )


async def raw_consume(client: Client, prefix: str, m: int) -> float:
    """A durable pull consumer: fetch 64, orjson.loads, a plain handler call, one ack each."""
    progress = Progress(m)
    tick = progress.tick

    async def handler(envelope: dict[str, Any]) -> None:
        tick()

    js = client.jetstream()
    pull = await js.pull_subscribe(
        f"{prefix}.*.>",
        durable="bench",
        stream=prefix,
        config=api.ConsumerConfig(ack_wait=30.0, max_deliver=-1),
    )
    loads = orjson.loads
    while not progress.done.is_set():
        try:
            messages = await pull.fetch(PREFETCH, timeout=2.0)
        except TimeoutError:
            continue
        for message in messages:
            await handler(loads(message.data))
            await message.ack()
    await pull.unsubscribe()
    return progress.per_message()


async def through_consumer(client: Client, prefix: str, m: int) -> float:
    """EventConsumer in group "bench": decode to Tick, call its handler, ack after it."""
    progress = Progress(m)
    tick = progress.tick
    events = EventMap()

    @events.bind(Tick)
    async def handler(event: Tick) -> None:
        tick()

    broker = NatsMessageBroker(
        client, channel_prefix=prefix, prefetch=PREFETCH, start_from="beginning"
    )
    consumer = EventConsumer(broker=broker, event_map=events, max_concurrency=CONCURRENCY)
    await consumer.subscribe(f"{prefix}:notification_event:*", group="bench")
    async with consumer:
        await progress.done.wait()
    await broker.stop()
    assert consumer.stats.handled == m, consumer.stats
    return progress.per_message()


async def faststream_consume(prefix: str, m: int) -> float:
    """NatsBroker: a durable pull consumer (batch 64), a typed (pydantic)
    handler, AckPolicy.ACK."""
    progress = Progress(m)
    tick = progress.tick
    broker = NatsBroker(NATS_URL, logger=None)

    @broker.subscriber(
        f"{prefix}.*.>",
        stream=JStream(prefix, declare=False),
        durable="bench",
        pull_sub=PullSub(batch_size=PREFETCH, timeout=2.0),
        ack_policy=AckPolicy.ACK,
    )
    async def handler(envelope: TickEnvelope) -> None:
        tick()

    await broker.start()
    await progress.done.wait()
    await broker.stop()
    return progress.per_message()


async def consuming(client: Client, prefix: str, m: int, repeats: int) -> None:
    js = client.jetstream()
    datas = [encode_message(envelope(number)) for number in range(min(m, 5_000))]
    raw_times: list[float] = []
    our_times: list[float] = []
    fs_times: list[float] = []
    for run in range(repeats + 1):  # the first round warms up
        names = {side: f"{prefix}-{side}{run}" for side in ("raw", "ours", "fs")}
        for name in names.values():
            await fill(js, name, datas, m)
        sides: list[Callable[[], Awaitable[float]]] = [
            functools.partial(raw_consume, client, names["raw"], m),
            functools.partial(through_consumer, client, names["ours"], m),
            functools.partial(faststream_consume, names["fs"], m),
        ]
        order = list(range(3)) if run % 2 else list(reversed(range(3)))
        results = {index: await sides[index]() for index in order}
        for name in names.values():
            await js.delete_stream(name)
        if run:
            raw_times.append(results[0])
            our_times.append(results[1])
            fs_times.append(results[2])
    rate_line(
        f"consume {m} in a group: EventConsumer, typed, ack", raw_times, our_times, 0.8, "raw"
    )
    rate_line("", fs_times, our_times, 1.0, "FastStream")


async def main(quick: bool) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    client = await nats.connect(NATS_URL)
    try:
        await make_stream(client.jetstream(), prefix)
        if quick:
            await publishing(client, prefix, n=100, batches=20, repeats=5)
            await consuming(client, prefix, m=2_000, repeats=2)
        else:
            await publishing(client, prefix, n=500, batches=100, repeats=15)
            await consuming(client, prefix, m=20_000, repeats=7)
    finally:
        js = client.jetstream()
        streams = await js.streams_info()
        for info in streams:
            if info.config.name and info.config.name.startswith(prefix):
                await js.delete_stream(info.config.name)
        await client.close()


if __name__ == "__main__":
    asyncio.run(main(quick="--quick" in sys.argv))
