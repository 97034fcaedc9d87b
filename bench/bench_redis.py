"""Redis Pub/Sub and Streams: the brokers and EventConsumer against raw
redis-py, measured in one run on the same Redis.

    python bench/bench_redis.py [--quick]

Redis's address comes from ``REDIS_URL`` (default ``redis://127.0.0.1:6379``).
Every channel is under a prefix unique to the run (``bench-<hex>``); the keys
left under it (dead letters) are deleted at the end.

Budgets (the project's; this script prints each verdict):

- publishing a NotificationEvent: at least 0.9x the rate of a raw redis-py
  ``await client.publish(channel, data)`` loop sending the same bytes
  (pre-encoded); the events of one request go out in one round trip, so
  ``send_messages`` is held to the same 0.9x against a raw pipeline and must
  write to Redis once per batch;
- consuming by pattern, decoding to the typed event and calling its handler:
  at least 0.8x a raw ``psubscribe`` + ``get_message`` + ``orjson.loads`` +
  handler-call loop;
- consuming from Redis Streams in a group, typed and handled, acknowledged
  after the handler: at least 0.7x a raw ``XREADGROUP COUNT 100`` +
  ``orjson.loads`` + handler-call loop sending one ``XACK`` per batch;
- memory stays flat under sustained load.

Consumption is timed from the first publish to the last handled message. Both
sides subscribe first (live once Redis confirmed), then the same publisher
task sends the same pre-encoded bytes from a client of its own, CHUNK
messages per EVAL whose script PUBLISHes each (Redis does the publishing, so
the publisher costs ~3 us a message in this process where a redis-py pipeline
costs ~14, which would be added to both sides and flatter the ratio), and
waits while more than WINDOW messages are unhandled: Pub/Sub keeps no backlog
beyond the subscriber's output buffer, which Redis cuts at 32 MiB
(``client-output-buffer-limit pubsub``).

Streams consumption is timed from the start of reading to the last handled
message, over a stream filled beforehand (one per side and round, so both
read the same entries from a group created at its first entry); after each
round the group's pending list must be empty: everything was acknowledged.

Each side runs many short rounds, taking turns with the other (see
`interleaved`); a line prints the median time per operation of each and our
rate as a multiple of the raw rate (higher is better): the median of the
ratios of rounds run side by side, three decimals so that rounding never hides
a verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import orjson
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import interleaved, rate_line

from brokers.redis import RedisPubSubMessageBroker, RedisStreamMessageBroker
from mediator import EventConsumer, EventEmitter, EventMap, Message, MessageCodec, NotificationEvent
from mediator.transport import encode_message

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
HEADERS = {"correlation_id": uuid.uuid4().hex}
CHUNK = 500
"""Messages per EVAL in the consumption runs."""
WINDOW = 5_000
"""Unhandled messages at most before the publisher waits (~2 MiB in Redis)."""
FLAT_MIB = 4.0
"""RSS growth from the 10% to the 100% sample below which memory counts as flat."""


@attrs.frozen(kw_only=True)
class Tick(NotificationEvent):
    number: int


def envelope(number: int) -> Message:
    return MessageCodec.to_message(Tick(number=number), HEADERS)


def rss_mib() -> float:
    """Current resident set size in MiB (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


@contextlib.contextmanager
def counting_writes() -> Iterator[list[int]]:
    """Count the command writes redis-py makes (one per round trip) in the block."""
    original = AbstractConnection.send_packed_command
    count = [0]

    async def counted(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        count[0] += 1
        await original(self, *args, **kwargs)

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    try:
        yield count
    finally:
        AbstractConnection.send_packed_command = original  # type: ignore[method-assign]


# -- 1 and 2: publishing --------------------------------------------------------


async def publishing(client: Redis, prefix: str, n: int, batches: int, repeats: int) -> None:
    broker = RedisPubSubMessageBroker(client, channel_prefix=prefix)
    message = envelope(1)
    channel, data = broker.channel(message), encode_message(message)
    event = Tick(number=1)
    emitter = EventEmitter(message_broker=broker)

    async def raw_publish(n: int) -> None:
        publish = client.publish
        for _ in range(n):
            await publish(channel, data)

    async def send_message(n: int) -> None:
        send = broker.send_message
        for _ in range(n):
            await send(message)

    async def emit(n: int) -> None:
        for _ in range(n):
            await emitter.emit(event)

    raw, ours, emitted = await interleaved([raw_publish, send_message, emit], n, repeats)
    rate_line("publish one NotificationEvent: send_message", raw, ours, 0.9)
    rate_line("  EventEmitter.emit(event): envelope, headers, encode", raw, emitted, None)

    k = 10
    messages = [envelope(number) for number in range(k)]
    pairs = [(broker.channel(m), encode_message(m)) for m in messages]

    async def raw_pipeline(n: int) -> None:
        for _ in range(n):
            async with client.pipeline(transaction=False) as pipe:
                for channel, data in pairs:
                    pipe.publish(channel, data)
                await pipe.execute()

    async def send_messages(n: int) -> None:
        send = broker.send_messages
        for _ in range(n):
            await send(messages)

    raw_batch, ours_batch = await interleaved([raw_pipeline, send_messages], batches, repeats)
    rate_line(f"publish the {k} events of one send: send_messages", raw_batch, ours_batch, 0.9)

    with counting_writes() as batch_writes:
        await broker.send_messages(messages)
    with counting_writes() as single_writes:
        for m in messages:
            await broker.send_message(m)
    one_trip = batch_writes[0] == 1
    singles = statistics.median(ours_batch) / statistics.median(ours)
    print(
        f"  {k} events in one batch: {batch_writes[0]} write(s) to Redis "
        f"({k} send_message calls: {single_writes[0]}); the batch takes as long as "
        f"{singles:4.2f} single publishes (budget: 1 round trip) "
        + ("ok" if one_trip else "OVER BUDGET")
    )


# -- 3 and 4: consuming by pattern ------------------------------------------------


class Progress:
    """Handled-message count shared by a handler and the publisher."""

    __slots__ = ("count", "done", "sample_at", "samples", "total", "wake", "wake_at")

    def __init__(self, total: int, sample_at: tuple[int, ...] = ()) -> None:
        self.total = total
        self.count = 0
        self.done = asyncio.Event()
        self.wake = asyncio.Event()
        self.wake_at = -1
        self.sample_at = frozenset(sample_at)
        self.samples: list[float] = []

    def tick(self) -> None:
        count = self.count = self.count + 1
        if count == self.wake_at:
            self.wake.set()
        if count in self.sample_at:
            self.samples.append(rss_mib())
        if count == self.total:
            self.done.set()


PUBLISH_ALL = "for i = 1, #ARGV do redis.call('PUBLISH', KEYS[1], ARGV[i]) end"


async def publish_all(
    publisher: Redis, channel: str, datas: list[bytes], progress: Progress
) -> None:
    """Publish `progress.total` messages on `channel`, cycling through `datas`, CHUNK at a
    time in one EVAL each (Redis runs the PUBLISHes, the client packs one command), and
    wait while more than WINDOW of them are unhandled."""
    publish_chunk = publisher.register_script(PUBLISH_ALL)
    total, pool = progress.total, len(datas)
    sent = 0
    while sent < total:
        if sent - progress.count > WINDOW:
            progress.wake.clear()
            progress.wake_at = sent - WINDOW // 2
            await progress.wake.wait()
        size = min(CHUNK, total - sent)
        await publish_chunk(
            keys=[channel], args=[datas[i % pool] for i in range(sent, sent + size)]
        )
        sent += size


async def raw_consume(
    client: Redis, publisher: Redis, prefix: str, datas: list[bytes], m: int
) -> float:
    """psubscribe + get_message + orjson.loads + a plain handler call."""
    progress = Progress(m)
    tick = progress.tick

    async def handler(envelope: dict[str, Any]) -> None:
        tick()

    pubsub = client.pubsub()
    await pubsub.psubscribe(f"{prefix}:notification_event:*")
    while True:  # live once Redis confirmed the subscription
        reply = await pubsub.get_message(timeout=None)
        if reply is not None and reply["type"] == "psubscribe":
            break

    async def read() -> None:
        get_message, loads = pubsub.get_message, orjson.loads
        while True:
            reply = await get_message(timeout=None)
            if reply is not None and reply["type"] == "pmessage":
                await handler(loads(reply["data"]))

    reader = asyncio.create_task(read())
    started = time.perf_counter()
    await publish_all(publisher, f"{prefix}:notification_event:Tick", datas, progress)
    await progress.done.wait()
    elapsed = time.perf_counter() - started
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    return elapsed


async def through_consumer(
    client: Redis,
    publisher: Redis,
    prefix: str,
    datas: list[bytes],
    m: int,
    sample_at: tuple[int, ...] = (),
) -> tuple[float, list[float]]:
    """EventConsumer subscribed by pattern: decode to Tick and call its handler."""
    progress = Progress(m, sample_at)
    tick = progress.tick
    events = EventMap()

    @events.bind(Tick)
    async def handler(event: Tick) -> None:
        tick()

    broker = RedisPubSubMessageBroker(client, channel_prefix=prefix)
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe(f"{prefix}:notification_event:*")
    async with consumer:  # every subscription is live here
        started = time.perf_counter()
        await publish_all(publisher, f"{prefix}:notification_event:Tick", datas, progress)
        await progress.done.wait()
        elapsed = time.perf_counter() - started
    assert consumer.stats.handled == m, consumer.stats
    return elapsed, progress.samples


async def consuming(
    client: Redis, publisher: Redis, prefix: str, m: int, long_m: int, repeats: int
) -> None:
    datas = [encode_message(envelope(number)) for number in range(min(m, 20_000))]
    base: list[float] = []
    cand: list[float] = []
    for run in range(repeats + 1):  # the first round warms up, then the order alternates
        raw_prefix, ours_prefix = f"{prefix}-{2 * run}", f"{prefix}-{2 * run + 1}"
        if run % 2:
            ours, _ = await through_consumer(client, publisher, ours_prefix, datas, m)
            raw = await raw_consume(client, publisher, raw_prefix, datas, m)
        else:
            raw = await raw_consume(client, publisher, raw_prefix, datas, m)
            ours, _ = await through_consumer(client, publisher, ours_prefix, datas, m)
        if run:
            base.append(raw / m)
            cand.append(ours / m)
    rate_line(f"consume {m} by pattern: EventConsumer, typed handler", base, cand, 0.8)

    points = (long_m // 10, long_m // 2, long_m)
    _, samples = await through_consumer(client, publisher, f"{prefix}-long", datas, long_m, points)
    growth = samples[-1] - samples[0]
    print(
        f"{f'memory, {long_m} consumed: RSS at 10/50/100%':<58} "
        f"{samples[0]:.1f} / {samples[1]:.1f} / {samples[2]:.1f} MiB  "
        f"growth 10%->100% {growth:+.2f} MiB (budget < {FLAT_MIB} MiB) "
        + ("flat" if growth < FLAT_MIB else "GROWING: OVER BUDGET")
    )


# -- 5: consuming from Redis Streams in a group -------------------------------------

STREAM_GROUP = "bench"
XADD_ALL = "for i = 1, #ARGV do redis.call('XADD', KEYS[1], '*', 'data', ARGV[i]) end"


async def fill_stream(publisher: Redis, key: str, datas: list[bytes], m: int) -> None:
    """Append `m` entries to `key`, cycling through `datas`, CHUNK per EVAL."""
    xadd_chunk = publisher.register_script(XADD_ALL)
    for sent in range(0, m, CHUNK):
        size = min(CHUNK, m - sent)
        await xadd_chunk(keys=[key], args=[datas[i % len(datas)] for i in range(sent, sent + size)])


async def assert_all_acknowledged(client: Redis, key: str) -> None:
    pending = await client.xpending(key, STREAM_GROUP)
    assert pending["pending"] == 0, f"{pending['pending']} entries of {key} left unacknowledged"


async def raw_stream_consume(
    client: Redis, publisher: Redis, key: str, datas: list[bytes], m: int
) -> float:
    """XREADGROUP COUNT 100 + orjson.loads + a plain handler call, one XACK per batch."""
    await fill_stream(publisher, key, datas, m)
    await client.xgroup_create(key, STREAM_GROUP, id="0")
    progress = Progress(m)
    tick = progress.tick

    async def handler(envelope: dict[str, Any]) -> None:
        tick()

    started = time.perf_counter()
    xreadgroup, xack, loads = client.xreadgroup, client.xack, orjson.loads
    while progress.count < m:
        replies: Any = await xreadgroup(STREAM_GROUP, "raw", {key: ">"}, count=100, block=1000)
        for stream, entries in replies:
            for _, fields in entries:
                await handler(loads(fields[b"data"]))
            await xack(stream, STREAM_GROUP, *(entry_id for entry_id, _ in entries))
    elapsed = time.perf_counter() - started
    await assert_all_acknowledged(client, key)
    return elapsed


async def stream_through_consumer(
    client: Redis, publisher: Redis, prefix: str, datas: list[bytes], m: int
) -> float:
    """EventConsumer in a group on RedisStreamMessageBroker: decode to Tick, call its
    handler, acknowledge after it."""
    key = f"{prefix}:notification_event:Tick"
    await fill_stream(publisher, key, datas, m)
    await publisher.sadd(f"{prefix}:streams", key)
    progress = Progress(m)
    tick = progress.tick
    events = EventMap()

    @events.bind(Tick)
    async def handler(event: Tick) -> None:
        tick()

    broker = RedisStreamMessageBroker(client, channel_prefix=prefix, start_from="beginning")
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe(f"{prefix}:notification_event:*", group=STREAM_GROUP)
    async with consumer:  # the group exists here; reading starts
        started = time.perf_counter()
        await progress.done.wait()
        elapsed = time.perf_counter() - started
    assert consumer.stats.handled == m, consumer.stats
    await assert_all_acknowledged(client, key)
    return elapsed


async def stream_consuming(
    client: Redis, publisher: Redis, prefix: str, m: int, repeats: int
) -> None:
    datas = [encode_message(envelope(number)) for number in range(min(m, 20_000))]
    base: list[float] = []
    cand: list[float] = []
    for run in range(repeats + 1):  # the first round warms up, then the order alternates
        raw_prefix, ours_prefix = f"{prefix}-s{2 * run}", f"{prefix}-s{2 * run + 1}"
        raw_key = f"{raw_prefix}:notification_event:Tick"
        if run % 2:
            ours = await stream_through_consumer(client, publisher, ours_prefix, datas, m)
            raw = await raw_stream_consume(client, publisher, raw_key, datas, m)
        else:
            raw = await raw_stream_consume(client, publisher, raw_key, datas, m)
            ours = await stream_through_consumer(client, publisher, ours_prefix, datas, m)
        for key_prefix in (raw_prefix, ours_prefix):  # a round's streams are not needed again
            keys = [key async for key in client.scan_iter(match=f"{key_prefix}:*")]
            await client.delete(*keys)
        if run:
            base.append(raw / m)
            cand.append(ours / m)
    rate_line(f"consume {m} from Streams in a group: EventConsumer, typed", base, cand, 0.7)


async def main(quick: bool) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    client = Redis.from_url(REDIS_URL)
    publisher = Redis.from_url(REDIS_URL)
    try:
        await client.ping()
        if quick:
            await publishing(client, prefix, n=100, batches=20, repeats=100)
            await consuming(client, publisher, prefix, m=5_000, long_m=20_000, repeats=6)
            await stream_consuming(client, publisher, prefix, m=5_000, repeats=6)
        else:
            await publishing(client, prefix, n=100, batches=20, repeats=400)
            await consuming(client, publisher, prefix, m=10_000, long_m=200_000, repeats=12)
            await stream_consuming(client, publisher, prefix, m=10_000, repeats=12)
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await publisher.aclose()
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(main(quick="--quick" in sys.argv))
