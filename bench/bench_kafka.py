"""Kafka: the broker and EventConsumer against raw aiokafka and against
FastStream's KafkaBroker, doing the same work on the same broker, in one run.

    python bench/bench_kafka.py [--quick]

Kafka is the cluster at ``KAFKA_BOOTSTRAP_SERVERS``, or a private Tansu
(memory storage) this run starts on a free port and stops. Every topic is
named under a prefix unique to the run (``bench-<hex>``) and deleted at
the end. Tansu has no idempotent producer: there, no side uses one; on a
cluster, every side does.

Budgets (README.md, "Benchmarks"):

- publishing: at least 0.9x raw aiokafka doing the same work: the same
  bytes, key and headers to the same topic with ``acks="all"``, one event
  at a time (each acknowledged before the next) and the ten events of one
  send as one batch (all handed to the producer, then all awaited);
- consuming in a group: at least 0.4x (0.5x with the duplicate-key proof
  switched off, ``EventConsumer(strict_json=False)``, for trusted
  producers) a raw aiokafka consumer in a group
  doing the same work by hand: it ``getmany``s, decodes each value into the
  typed event (msgspec, straight into the attrs class, the cheapest typed
  decode there is), calls a plain handler with it and commits after each
  fetched batch (Kafka hands hundreds of records per fetch, so the raw
  loop's per-record cost is a few microseconds). Printed beside it, without
  a budget: the same loop with ``orjson.loads`` into dicts, and the typed
  loop after the codec's proof that a text repeats no key (an orjson parse,
  write and compare), which is what strict decoding alone costs;
- ahead of FastStream's KafkaBroker doing the same work: publishing the
  same bytes with the same key and headers, acknowledged; consuming in a
  group with a typed (pydantic) handler and ``AckPolicy.ACK``, which
  commits after each record's handler.

Publishing sides take turns in short rounds (see `interleaved`).
Consumption is timed from the first handled record to the last over a
topic filled beforehand with the same records (one topic and group per side
and round); our side commits every `commit_interval` below the lowest
unhandled offset. Each line prints the median seconds per record of each
side and our rate as a multiple of the other's (higher is better): the
median of the ratios of rounds run side by side. The raw loop runs twice in
each round, just before and just after our two budgeted sides, and the
round's raw figure is the faster of the two: Tansu's pace drifts within a
round by more than either side's own cost, and a raw run right after ours
may pay for our garbage, which must not flatter our ratio.

Each consuming side starts after a full garbage collection: one takes tens
of milliseconds (more than a raw side's whole window), and without it
whichever side happened to run when the garbage of the fill and of the
sides before it came due paid for it all.

The consume figure is also printed on CPU time (this process, without a
budget): the raw side's window is short (tens of milliseconds), so its wall
time moves with every wait on the broker, while CPU time says what each
side itself spent.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import msgspec
import orjson
import pydantic
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from faststream import AckPolicy
from faststream.kafka import KafkaBroker

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _timing import Progress, interleaved, rate_line

from brokers.kafka import KafkaMessageBroker
from mediator import EventConsumer, EventMap, Message, MessageCodec, NotificationEvent
from mediator.transport import encode_message as encode
from tests.kafka_support import start_tansu

HEADERS = {"correlation_id": uuid.uuid4().hex}
BATCH = 10
"""Events in one send: one batch."""
PARTITIONS = 4
KEYS = 64
"""Distinct partition keys among the records."""


@attrs.frozen(kw_only=True)
class Tick(NotificationEvent, partition_key="key"):
    number: int
    key: int


class RawEnvelope(msgspec.Struct):
    """The envelope as a raw consumer decodes it by hand: the event typed."""

    message_type: str
    message_name: str
    message_id: uuid.UUID
    payload: Tick
    headers: dict[str, str] = {}


class TickPayload(pydantic.BaseModel):
    event_id: uuid.UUID
    event_timestamp: datetime
    number: int
    key: int


class TickEnvelope(pydantic.BaseModel):
    """The envelope as FastStream decodes it: the same fields, typed."""

    message_type: str
    message_name: str
    message_id: uuid.UUID
    payload: TickPayload
    headers: dict[str, str] = {}


@attrs.frozen
class Server:
    bootstrap_servers: str
    idempotence: bool
    group_options: dict[str, int]
    """Consumer options every side's group uses (fast joins on Tansu)."""


def envelope(number: int) -> Message:
    return MessageCodec.to_message(Tick(number=number, key=number % KEYS), HEADERS)


def record_of(message: Message) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Value, key and headers, as the broker writes them."""
    key = (message.partition_key or "").encode()
    return encode(message), key, [(k, v.encode()) for k, v in message.headers.items()]


# -- publishing ------------------------------------------------------------------


async def publishing(server: Server, prefix: str, n: int, batches: int, repeats: int) -> None:
    broker = KafkaMessageBroker(
        server.bootstrap_servers,
        channel_prefix=prefix,
        idempotence=server.idempotence,
        partitions=PARTITIONS,
    )
    message = envelope(1)
    messages = [envelope(number) for number in range(BATCH)]
    await broker.send_messages(messages)  # the topic exists and the producer runs from here
    topic = broker.topic_for(message)
    raw = AIOKafkaProducer(
        bootstrap_servers=server.bootstrap_servers,
        acks="all",
        enable_idempotence=server.idempotence,
    )
    await raw.start()
    faststream = KafkaBroker(
        server.bootstrap_servers,
        acks="all",
        enable_idempotence=server.idempotence,
        logger=None,
    )
    await faststream.connect()
    value, key, headers = record_of(message)

    async def raw_publish(n: int) -> None:
        send = raw.send
        for _ in range(n):
            await (await send(topic, value, key=key, headers=headers))

    async def send_message(n: int) -> None:
        send = broker.send_message
        for _ in range(n):
            await send(message)

    async def fs_publish(n: int) -> None:
        publish = faststream.publish
        for _ in range(n):
            await publish(value, topic, key=key, headers=HEADERS)

    raw_times, ours, fs = await interleaved([raw_publish, send_message, fs_publish], n, repeats)
    rate_line("publish one event, acknowledged: send_message", raw_times, ours, 0.9, "raw")
    rate_line("", fs, ours, 1.0, "FastStream")

    outgoing = [record_of(m) for m in messages]

    async def raw_batch(n: int) -> None:
        for _ in range(n):
            futures = [await raw.send(topic, v, key=k, headers=h) for v, k, h in outgoing]
            await asyncio.gather(*futures)

    async def send_messages(n: int) -> None:
        for _ in range(n):
            await broker.send_messages(messages)

    async def fs_batch(n: int) -> None:
        for _ in range(n):
            await asyncio.gather(
                *(faststream.publish(v, topic, key=k, headers=HEADERS) for v, k, _ in outgoing)
            )

    raw_times, ours, fs = await interleaved([raw_batch, send_messages, fs_batch], batches, repeats)
    per_record = [[t / BATCH for t in side] for side in (raw_times, ours, fs)]
    rate_line(
        f"publish the {BATCH} events of one send: send_messages",
        per_record[0],
        per_record[1],
        0.9,
        "raw",
    )
    rate_line("", per_record[2], per_record[1], 1.0, "FastStream")

    await faststream.stop()
    await raw.stop()
    await broker.stop()


# -- consuming in a group ----------------------------------------------------------


async def fill(server: Server, admin: Any, topic: str, m: int) -> None:
    """Create `topic` and write `m` records to it, 500 handed over at a time."""
    await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    producer = AIOKafkaProducer(
        bootstrap_servers=server.bootstrap_servers,
        acks="all",
        enable_idempotence=server.idempotence,
    )
    await producer.start()
    try:
        for start in range(0, m, 500):
            futures = []
            for number in range(start, min(m, start + 500)):
                value, key, headers = record_of(envelope(number))
                futures.append(await producer.send(topic, value, key=key, headers=headers))
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def raw_consume(server: Server, topic: str, m: int, decoding: str = "typed") -> Progress:
    """A group member: getmany, decode each value, a plain handler call, one
    commit per batch. `decoding`: "typed" (msgspec into the event class),
    "dicts" (`orjson.loads`) or "checked" (typed, after proving the text
    repeats no key as the codec does: an orjson parse, write and compare)."""
    progress = Progress(m)
    tick = progress.tick

    async def handler(event: Any) -> None:
        tick()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=server.bootstrap_servers,
        group_id=f"{topic}.raw",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **server.group_options,
    )
    await consumer.start()
    try:
        decode = msgspec.json.Decoder(RawEnvelope).decode
        loads, dumps = orjson.loads, orjson.dumps
        while progress.count < m:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                if decoding == "typed":
                    for record in records:
                        await handler(decode(record.value).payload)
                elif decoding == "dicts":
                    for record in records:
                        await handler(loads(record.value))
                else:
                    for record in records:
                        value = record.value
                        if dumps(loads(value)) != value:
                            raise AssertionError("the bench writes only orjson text")
                        await handler(decode(value).payload)
            if batches:
                await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batches.items()})
    finally:
        await consumer.stop()
    return progress


async def through_consumer(
    server: Server, prefix: str, m: int, ordered: bool, *, proof: bool = True
) -> Progress:
    """EventConsumer in group "bench": decode to Tick, call its handler, commit after it;
    `proof` False switches the duplicate-key proof off."""
    progress = Progress(m)
    tick = progress.tick
    events = EventMap()

    @events.bind(Tick)
    async def handler(event: Tick) -> None:
        tick()

    broker = KafkaMessageBroker(
        server.bootstrap_servers,
        channel_prefix=prefix,
        idempotence=server.idempotence,
        start_from="beginning",
        ordered=ordered,
        prefetch=500,
        consumer_options=server.group_options,
    )
    consumer = EventConsumer(broker=broker, event_map=events, strict_json=proof)
    await consumer.subscribe(f"{prefix}:notification_event:*", group="bench")
    async with consumer:
        await progress.done.wait()
    await broker.stop()
    assert consumer.stats.handled == m, consumer.stats
    return progress


async def faststream_consume(server: Server, topic: str, m: int) -> Progress:
    """KafkaBroker in a group: a typed (pydantic) handler, AckPolicy.ACK."""
    progress = Progress(m)
    tick = progress.tick
    broker = KafkaBroker(server.bootstrap_servers, logger=None)

    @broker.subscriber(
        topic,
        group_id=f"{topic}.fs",
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.ACK,
        **server.group_options,
    )
    async def handler(envelope: TickEnvelope) -> None:
        tick()

    await broker.start()
    await progress.done.wait()
    await broker.stop()
    return progress


async def consuming(server: Server, admin: Any, prefix: str, m: int, repeats: int) -> None:
    # The raw loop runs twice a round, right before and right after the two
    # budgeted sides: a round's baseline is the faster of the two, measured
    # next to them (Tansu's pace drifts within a round by more than a side's cost).
    sides = ("fs", "dicts", "checked", "unordered", "raw", "ours", "trusting", "raw_after")
    times: dict[str, list[float]] = {side: [] for side in sides}
    cpu: dict[str, list[float]] = {side: [] for side in sides}
    for run in range(repeats + 1):  # the first round warms up
        names = {side: f"{prefix}-{side}{run}" for side in sides}
        topics = {side: f"{name}.notification_event.Tick" for side, name in names.items()}
        for topic in topics.values():
            await fill(server, admin, topic, m)
        bodies: dict[str, Callable[[], Awaitable[Progress]]] = {
            "raw": functools.partial(raw_consume, server, topics["raw"], m),
            "raw_after": functools.partial(raw_consume, server, topics["raw_after"], m),
            "dicts": functools.partial(raw_consume, server, topics["dicts"], m, "dicts"),
            "checked": functools.partial(raw_consume, server, topics["checked"], m, "checked"),
            "ours": functools.partial(through_consumer, server, names["ours"], m, True),
            "trusting": functools.partial(
                through_consumer, server, names["trusting"], m, True, proof=False
            ),
            "unordered": functools.partial(through_consumer, server, names["unordered"], m, False),
            "fs": functools.partial(faststream_consume, server, topics["fs"], m),
        }
        order = list(sides) if run % 2 else list(reversed(sides))
        results: dict[str, Progress] = {}
        for side in order:
            # A full collection takes tens of milliseconds, more than the raw
            # side's whole window: each side starts with none due, rather than
            # paying for the garbage of the sides before it and of the fill.
            gc.collect()
            results[side] = await bodies[side]()
        await admin.delete_topics(list(topics.values()))
        if run:
            for side in sides:
                times[side].append(results[side].per_message())
                cpu[side].append(results[side].cpu_per_message())
            for measured in (times, cpu):
                # The faster of the two: a raw run right after ours can pay
                # for our garbage, and the baseline must not gain from that.
                measured["raw"][-1] = min(measured["raw"][-1], measured["raw_after"].pop())
    title = f"consume {m} in a group: EventConsumer, typed, committed"
    rate_line(title, times["raw"], times["ours"], 0.4, "raw")
    rate_line("", times["fs"], times["ours"], 1.0, "FastStream")
    rate_line("", times["dicts"], times["ours"], None, "raw dicts")
    rate_line("", times["checked"], times["ours"], None, "raw+proof")
    rate_line("  the same on CPU time (this process)", cpu["raw"], cpu["ours"], None, "raw")
    rate_line(
        "  strict_json=False (trusted producers)",
        times["raw"],
        times["trusting"],
        0.5,
        "raw",
    )
    rate_line("  the same on CPU time (this process)", cpu["raw"], cpu["trusting"], None, "raw")
    rate_line("  the same, ordered=False", times["raw"], times["unordered"], None, "raw")


async def main(quick: bool) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    tansu = None
    # Tansu's log goes here; removed at the end, and at exit if it never started.
    workdir = tempfile.TemporaryDirectory(prefix="bench-kafka-")
    if configured:
        server = Server(configured, idempotence=True, group_options={})
    else:
        started = start_tansu(Path(workdir.name))
        if isinstance(started, str):
            sys.exit(f"no KAFKA_BOOTSTRAP_SERVERS and Tansu did not start: {started}")
        tansu = started
        # Tansu holds a join for half the session timeout.
        options = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300}
        server = Server(tansu.bootstrap_servers, idempotence=False, group_options=options)
    admin = AIOKafkaAdminClient(bootstrap_servers=server.bootstrap_servers)
    await admin.start()
    try:
        if quick:
            await publishing(server, prefix, n=100, batches=20, repeats=5)
            await consuming(server, admin, prefix, m=2_000, repeats=1)
        else:
            await publishing(server, prefix, n=300, batches=60, repeats=31)
            await consuming(server, admin, prefix, m=20_000, repeats=7)
    finally:
        left = [topic for topic in await admin.list_topics() if topic.startswith(prefix)]
        if left:
            await admin.delete_topics(left)
        await admin.close()
        if tansu is not None:
            tansu.stop()
        workdir.cleanup()


if __name__ == "__main__":
    asyncio.run(main(quick="--quick" in sys.argv))
