"""RabbitMQ: the broker and EventConsumer against raw aio-pika and against
FastStream's RabbitBroker, doing the same work on the same server, in one run.

    python bench/bench_rabbitmq.py [--quick]

RabbitMQ's address comes from ``AMQP_URL`` (default
``amqp://guest:guest@127.0.0.1:5672/``). Every exchange and queue is named
under a prefix unique to the run (``bench-<hex>``) and deleted at the end.

Budgets (README.md, "Benchmarks"):

- publishing: at least 0.9x raw aio-pika doing the same work: the same
  bytes to the same topic exchange, persistent, mandatory, with publisher
  confirms, one message at a time (each confirm awaited) and the ten events
  of one send as one batch (all published, then all confirms awaited);
- consuming in a group (a quorum queue, prefetch 16, one acknowledgement
  per message after the handler): at least 0.8x a raw aio-pika consumer
  that ``orjson.loads`` each body, calls a plain handler and acks;
- ahead of FastStream's RabbitBroker doing the same work: publishing the
  same bytes with the same properties, persistent and mandatory with
  confirms; consuming with a typed (pydantic) handler, prefetch 16,
  ``AckPolicy.ACK`` (acknowledged after the handler).

Publishing sides take turns in short rounds (see `interleaved`), every
message landing in one quorum queue, purged between rounds. Consumption is
timed from the first handled message to the last over a quorum queue filled
beforehand with the same bytes (one queue per side and round). Each line
prints the median seconds per message of each side and our rate as a
multiple of the other's (higher is better): the median of the ratios of
rounds run side by side.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
import attrs
import orjson
import pydantic
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from faststream import AckPolicy
from faststream.rabbit import Channel, ExchangeType, QueueType, RabbitBroker
from faststream.rabbit import RabbitExchange as FSExchange
from faststream.rabbit import RabbitQueue as FSQueue

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import Body, Progress, interleaved, rate_line

from brokers.rabbitmq import RabbitMQMessageBroker
from mediator import EventConsumer, EventMap, Message, MessageCodec, NotificationEvent
from mediator.transport import encode_message

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
HEADERS = {"correlation_id": uuid.uuid4().hex}
PREFETCH = 16
BATCH = 10
"""Events in one send: one batch."""
QUORUM = {"x-queue-type": "quorum"}


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


def raw_message(message: Message) -> aio_pika.Message:
    """What the broker sends for `message`, built by hand."""
    return aio_pika.Message(
        encode_message(message),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(message.message_id),
        type=message.message_name,
        headers=dict(message.headers),
    )


# -- publishing ------------------------------------------------------------------


async def publishing(
    connection: AbstractRobustConnection, prefix: str, n: int, batches: int, repeats: int
) -> None:
    broker = RabbitMQMessageBroker(connection, channel_prefix=prefix)
    await broker.start()
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await channel.get_exchange(prefix)
    sink = await channel.declare_queue(f"{prefix}.sink", durable=True, arguments=QUORUM)
    await sink.bind(exchange, "#")
    faststream = RabbitBroker(AMQP_URL, logger=None)
    await faststream.connect()
    fs_exchange = FSExchange(prefix, type=ExchangeType.TOPIC, durable=True, declare=False)

    message = envelope(1)
    key = broker.routing_key(message)
    body = encode_message(message)

    async def raw_publish(n: int) -> None:
        publish = exchange.publish
        for _ in range(n):
            await publish(raw_message(message), key, mandatory=True)

    async def send_message(n: int) -> None:
        send = broker.send_message
        for _ in range(n):
            await send(message)

    async def fs_publish(n: int) -> None:
        for _ in range(n):
            await faststream.publish(
                body,
                exchange=fs_exchange,
                routing_key=key,
                mandatory=True,
                persist=True,
                content_type="application/json",
                message_id=str(message.message_id),
                message_type=message.message_name,
                headers=HEADERS,
            )

    async def purged(body: Body) -> Body:
        async def run(n: int) -> None:
            await body(n)
            await sink.purge()

        return run

    bodies = [await purged(b) for b in (raw_publish, send_message, fs_publish)]
    raw, ours, fs = await interleaved(bodies, n, repeats)
    rate_line("publish one event, confirmed: send_message", raw, ours, 0.9, "raw")
    rate_line("", fs, ours, 1.0, "FastStream")

    messages = [envelope(number) for number in range(BATCH)]
    outgoing = [(broker.routing_key(m), encode_message(m), m) for m in messages]

    async def raw_batch(n: int) -> None:
        for _ in range(n):
            await asyncio.gather(
                *(exchange.publish(raw_message(m), k, mandatory=True) for k, _, m in outgoing)
            )

    async def send_messages(n: int) -> None:
        for _ in range(n):
            await broker.send_messages(messages)

    async def fs_batch(n: int) -> None:
        for _ in range(n):
            await asyncio.gather(
                *(
                    faststream.publish(
                        b,
                        exchange=fs_exchange,
                        routing_key=k,
                        mandatory=True,
                        persist=True,
                        content_type="application/json",
                        message_id=str(m.message_id),
                        message_type=m.message_name,
                        headers=HEADERS,
                    )
                    for k, b, m in outgoing
                )
            )

    bodies = [await purged(b) for b in (raw_batch, send_messages, fs_batch)]
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
    await sink.delete(if_unused=False, if_empty=False)
    await channel.close()
    await broker.stop()


# -- consuming in a group ----------------------------------------------------------


async def fill(
    connection: AbstractRobustConnection,
    exchange: str,
    queue: str,
    arguments: dict[str, Any],
    datas: list[bytes],
    m: int,
) -> None:
    """Declare `queue` bound to the topic `exchange` with "#", and publish `m`
    of `datas` through the exchange, confirmed, 500 at a time."""
    async with connection.channel() as channel:
        topic = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        declared = await channel.declare_queue(queue, durable=True, arguments=arguments)
        await declared.bind(topic, "#")
        for start in range(0, m, 500):
            await asyncio.gather(
                *(
                    topic.publish(
                        aio_pika.Message(
                            datas[i % len(datas)],
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            message_id=uuid.uuid4().hex,
                            type="Tick",
                            headers=HEADERS,
                        ),
                        "notification_event.Tick",
                    )
                    for i in range(start, min(m, start + 500))
                )
            )


async def drop(
    connection: AbstractRobustConnection, exchanges: list[str], queues: list[str]
) -> None:
    """Delete what a run declared; with each exchange go the unroutable
    exchanges and queue our broker declares beside its own (deleting what
    does not exist is not an error)."""
    for exchange in [e for e in exchanges if not e.endswith(".dead-letter")]:
        exchanges += [f"{exchange}.unroutable", f"{exchange}.unroutable.keep"]
        queues.append(f"{exchange}.unroutable")
    async with connection.channel() as channel:
        for queue in queues:
            await channel.queue_delete(queue, if_unused=False, if_empty=False)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)


async def raw_consume(connection: AbstractRobustConnection, queue: str, m: int) -> float:
    """prefetch 16, orjson.loads, a plain handler call, one ack per message."""
    progress = Progress(m)
    tick = progress.tick

    async def handler(envelope: dict[str, Any]) -> None:
        tick()

    async with connection.channel() as channel:
        await channel.set_qos(prefetch_count=PREFETCH)
        declared = await channel.get_queue(queue, ensure=False)
        loads = orjson.loads

        async def on_message(message: AbstractIncomingMessage) -> None:
            await handler(loads(message.body))
            await message.ack()

        tag = await declared.consume(on_message)
        await progress.done.wait()
        await declared.cancel(tag)
    return progress.per_message()


async def through_consumer(
    connection: AbstractRobustConnection, prefix: str, m: int
) -> tuple[float, EventConsumer]:
    """EventConsumer in group "bench": decode to Tick, call its handler, ack after it."""
    progress = Progress(m)
    tick = progress.tick
    events = EventMap()

    @events.bind(Tick)
    async def handler(event: Tick) -> None:
        tick()

    broker = RabbitMQMessageBroker(connection, channel_prefix=prefix, prefetch=PREFETCH)
    consumer = EventConsumer(broker=broker, event_map=events, max_concurrency=PREFETCH)
    await consumer.subscribe(f"{prefix}:notification_event:*", group="bench")
    async with consumer:
        await progress.done.wait()
    await broker.stop()
    assert consumer.stats.handled == m, consumer.stats
    return progress.per_message(), consumer


async def faststream_consume(exchange: str, queue: str, m: int) -> float:
    """RabbitBroker: a typed (pydantic) handler, prefetch 16, AckPolicy.ACK."""
    progress = Progress(m)
    tick = progress.tick
    broker = RabbitBroker(AMQP_URL, logger=None)

    @broker.subscriber(
        FSQueue(queue, queue_type=QueueType.QUORUM, durable=True, routing_key="#"),
        FSExchange(exchange, type=ExchangeType.TOPIC, durable=True),
        channel=Channel(prefetch_count=PREFETCH),
        ack_policy=AckPolicy.ACK,
    )
    async def handler(envelope: TickEnvelope) -> None:
        tick()

    await broker.start()
    await progress.done.wait()
    await broker.stop()
    return progress.per_message()


async def consuming(
    connection: AbstractRobustConnection, prefix: str, m: int, repeats: int
) -> None:
    datas = [encode_message(envelope(number)) for number in range(min(m, 5_000))]
    raw_times: list[float] = []
    our_times: list[float] = []
    fs_times: list[float] = []
    for run in range(repeats + 1):  # the first round warms up
        names = {side: f"{prefix}-{side}{run}" for side in ("raw", "ours", "fs")}
        ours_arguments = {**QUORUM, "x-dead-letter-exchange": f"{names['ours']}.dead-letter"}
        await fill(connection, names["raw"], f"{names['raw']}.q", QUORUM, datas, m)
        await fill(connection, names["ours"], f"{names['ours']}.bench", ours_arguments, datas, m)
        await fill(connection, names["fs"], f"{names['fs']}.q", QUORUM, datas, m)
        sides: list[Callable[[], Awaitable[float]]] = [
            functools.partial(raw_consume, connection, f"{names['raw']}.q", m),
            functools.partial(_ours, connection, names["ours"], m),
            functools.partial(faststream_consume, names["fs"], f"{names['fs']}.q", m),
        ]
        order = list(range(3)) if run % 2 else list(reversed(range(3)))
        results = {index: await sides[index]() for index in order}
        await drop(
            connection,
            [names["raw"], names["ours"], f"{names['ours']}.dead-letter", names["fs"]],
            [
                f"{names['raw']}.q",
                f"{names['ours']}.bench",
                f"{names['ours']}.dead-letter",
                f"{names['fs']}.q",
            ],
        )
        if run:
            raw_times.append(results[0])
            our_times.append(results[1])
            fs_times.append(results[2])
    rate_line(
        f"consume {m} in a group: EventConsumer, typed, ack", raw_times, our_times, 0.8, "raw"
    )
    rate_line("", fs_times, our_times, 1.0, "FastStream")


async def _ours(connection: AbstractRobustConnection, prefix: str, m: int) -> float:
    per_message, _ = await through_consumer(connection, prefix, m)
    return per_message


async def main(quick: bool) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    connection = await aio_pika.connect_robust(AMQP_URL)
    try:
        if quick:
            await publishing(connection, prefix, n=50, batches=10, repeats=5)
            await consuming(connection, prefix, m=1_000, repeats=2)
        else:
            await publishing(connection, prefix, n=300, batches=60, repeats=15)
            await consuming(connection, prefix, m=10_000, repeats=7)
    finally:
        await drop(connection, [prefix, f"{prefix}.dead-letter"], [f"{prefix}.dead-letter"])
        await connection.close()


if __name__ == "__main__":
    asyncio.run(main(quick="--quick" in sys.argv))
