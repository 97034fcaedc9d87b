"""What a second and a fourth consumer process buy, on every group transport.

    python bench/bench_scale.py [--quick] [--only redis-streams,rabbitmq,...]

For each transport and each handler, 20,000 events (--quick: 2,000) are
published first, then consumed in one group by 1, 2 and 4 consumer
processes, each with ``max_concurrency=1``, so that what the figure shows is
the group spreading work over its members. Two handlers: one that waits
1 ms on I/O (an ``asyncio.sleep``, as a call to a database would), and one
that does nothing (the transport's and the consumer's own cost).

Printed per row: events/s from the first event handled by any process to the
last, the speed-up over one process (judged against the goal), the speed-up
while every process was handling events ("steady": without the group's
forming at the start and the last stragglers at the end), and the split:
each process's share of the events, and the least share over the most (1.00
is an even split).

Goal with the I/O-bound handler (docs/scaling.md): at least 1.8 x with two
processes and 3.2 x with four. The handler that does nothing is bound by the
machine's cores: on two cores, four processes cannot run four times as fast.

Transports: Redis Streams (REDIS_URL, default redis://127.0.0.1:6379), Redis
Streams on a Redis Cluster (REDIS_CLUSTER_URL, or a private cluster started
from redis-server, as the tests do), RabbitMQ (AMQP_URL, default
amqp://guest:guest@127.0.0.1:5672/) and Kafka (KAFKA_BOOTSTRAP_SERVERS, or
a private Tansu) with 4 partitions; and NATS JetStream (NATS_URL, default
nats://127.0.0.1:4222). One that does not answer is left out
with the reason. Every name made here is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from multiprocessing.sharedctypes import SynchronizedArray
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import brokers
from mediator import EventConsumer, EventEmitter, EventMap, NotificationEvent

PROCESSES = (1, 2, 4)
HANDLERS = ("io-1ms", "nothing")
GOAL = {2: 1.8, 4: 3.2}
"""The speed-up the I/O-bound handler should reach with 2 and 4 processes."""
PARTITIONS = 4
PUBLISH_BATCH = 500


@attrs.frozen(kw_only=True)
class ScaleTick(NotificationEvent):
    n: int


@dataclass
class Target:
    """A transport as the bench uses it: a broker URL and how to clean up."""

    name: str
    url: str
    cleanup: Callable[[str], Any]
    """Removes what a round with this prefix made (awaited)."""


# -- a consumer process ------------------------------------------------------------


@dataclass
class Member:
    """What one consumer process is given (its shared arrays passed at start)."""

    url: str
    prefix: str
    index: int
    handler: str
    counts: SynchronizedArray[int]
    stamps: SynchronizedArray[float]
    """When each event was handled, written by this process only."""
    ready: Barrier
    stop: Event


def _worker(member: Member) -> None:
    asyncio.run(_consume(member))


async def _consume(member: Member) -> None:
    url, prefix, index, handler = member.url, member.prefix, member.index, member.handler
    counts, stamps, ready, stop = member.counts, member.stamps, member.ready, member.stop
    wait = handler == "io-1ms"
    total = len(stamps)

    async def handle(event: ScaleTick) -> None:
        if wait:
            await asyncio.sleep(0.001)  # the handler's I/O
        handled = counts[index]
        if handled < total:  # a redelivery beyond the total is not timed
            stamps[handled] = time.time()
        counts[index] = handled + 1

    events = EventMap()
    events.bind(ScaleTick, handle)
    broker = brokers.from_url(url, channel_prefix=prefix)
    consumer = EventConsumer(broker=broker, event_map=events, max_concurrency=1)
    await consumer.subscribe(f"{prefix}:notification_event:*", "scale")
    # Every member is built and connected before any starts to read.
    await asyncio.to_thread(ready.wait)
    try:
        async with consumer:
            await asyncio.to_thread(stop.wait)
    finally:
        await broker.stop()


# -- one round: publish, then consume with `processes` members -----------------------


async def _prepare(url: str, prefix: str, total: int) -> None:
    """Make the group (so that nothing published is unroutable), then publish."""
    broker = brokers.from_url(url, channel_prefix=prefix)
    try:
        consumer = EventConsumer(broker=broker, event_map=EventMap(), max_concurrency=1)
        await consumer.subscribe(f"{prefix}:notification_event:*", "scale")
        async with consumer:
            pass
        emitter = EventEmitter(message_broker=broker)
        for start in range(0, total, PUBLISH_BATCH):
            await emitter.emit_all(
                [ScaleTick(n=n) for n in range(start, min(total, start + PUBLISH_BATCH))]
            )
    finally:
        await broker.stop()


@dataclass
class Round:
    rate: float
    """Events over the time from the first event handled to the last."""
    steady: float | None
    """Events per second while every process was handling events."""
    shares: list[int]


async def _round(target: Target, processes: int, handler: str, total: int) -> Round:
    prefix = f"bench-scale-{uuid.uuid4().hex[:10]}"
    try:
        await _prepare(target.url, prefix, total)
        context = multiprocessing.get_context("spawn")
        counts = context.Array("q", processes)
        # When each event was handled, per process (written by that process only).
        stamps = [context.Array("d", total, lock=False) for _ in range(processes)]
        ready = context.Barrier(processes + 1)
        stop = context.Event()
        members = [
            context.Process(
                target=_worker,
                args=(Member(target.url, prefix, i, handler, counts, stamps[i], ready, stop),),
            )
            for i in range(processes)
        ]
        for member in members:
            member.start()
        try:
            await asyncio.to_thread(ready.wait, 120)
            deadline = time.monotonic() + max(60.0, total / 100)
            while sum(counts[:]) < total:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{target.name}: {sum(counts[:])} of {total} handled")
                if not all(member.is_alive() for member in members):
                    raise RuntimeError(f"{target.name}: a consumer process exited")
                await asyncio.sleep(0.05)  # the bench polls the shared counters
        finally:
            stop.set()
            for member in members:
                await asyncio.to_thread(member.join, 30)
                if member.is_alive():
                    member.kill()
        shares = list(counts[:])
        times = [list(stamps[i][: min(shares[i], total)]) for i in range(processes)]
        handled = [t for t in times if t]
        began = min(t[0] for t in handled)
        ended = max(t[-1] for t in handled)
        # The steady part: while every process was handling events (after the
        # last one's first event, before the first one's last).
        steady_from = max(t[0] for t in handled)
        steady_to = min(t[-1] for t in handled)
        within = sum(steady_from <= x <= steady_to for t in handled for x in t)
        steady = within / (steady_to - steady_from) if steady_to > steady_from else None
        return Round(rate=total / (ended - began), steady=steady, shares=shares)
    finally:
        await target.cleanup(prefix)


def _row(name: str, handler: str, processes: int, result: Round, one: float) -> str:
    total = sum(result.shares)
    speedup = result.rate / one
    goal = GOAL.get(processes) if handler == "io-1ms" else None
    verdict = "" if goal is None else (" ok" if speedup >= goal else f" (goal {goal}) MISSED")
    split = "/".join(f"{share * 100 / total:.0f}" for share in result.shares)
    evenness = min(result.shares) / max(result.shares) if max(result.shares) else 0.0
    steady = "    -" if result.steady is None else f"{result.steady / one:5.2f}"
    return (
        f"{name:<22} {handler:<8} {processes} proc  {result.rate:9.0f} ev/s  "
        f"x{speedup:5.2f}{verdict:<18} steady x{steady}  "
        f"split % {split:<14} even {evenness:4.2f}"
    )


async def bench(target: Target, total: int) -> None:
    for handler in HANDLERS:
        one = 0.0
        for processes in PROCESSES:
            result = await _round(target, processes, handler, total)
            if processes == 1:
                one = result.rate
            print(_row(target.name, handler, processes, result, one), flush=True)


# -- the transports ------------------------------------------------------------------


async def _redis_cleanup(url: str, prefix: str, *, cluster: bool = False) -> None:
    if cluster:
        from redis.asyncio.cluster import RedisCluster

        client: Any = RedisCluster.from_url(url)
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        for key in keys:
            await client.delete(key)
    else:
        from redis.asyncio import Redis

        client = Redis.from_url(url)
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    await client.aclose()


async def _ping_redis(url: str) -> str | None:
    from redis.asyncio import Redis

    client = Redis.from_url(url, socket_connect_timeout=2)
    try:
        await client.ping()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def redis_streams() -> AsyncIterator[Target | str]:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
    why = await _ping_redis(url)
    if why is not None:
        yield f"no Redis at {url} ({why})"
        return
    streams = url.replace("redis://", "redis+streams://", 1) + "?start_from=beginning"

    async def cleanup(prefix: str) -> None:
        await _redis_cleanup(url, prefix)

    yield Target("redis-streams", streams, cleanup)


@contextlib.asynccontextmanager
async def redis_cluster_streams() -> AsyncIterator[Target | str]:
    given = os.environ.get("REDIS_CLUSTER_URL")
    with tempfile.TemporaryDirectory(prefix="bench-scale-cluster-") as workdir:
        cluster = None
        if given:
            url = given
        else:
            from tests.redis_cluster_support import LocalCluster

            try:
                cluster = LocalCluster(Path(workdir))
                await asyncio.to_thread(cluster.start)
            except BaseException as exc:  # the tests' helper skips or fails
                yield f"no REDIS_CLUSTER_URL and a local cluster did not start ({exc})"
                return
            url = cluster.url

        async def cleanup(prefix: str) -> None:
            await _redis_cleanup(url, prefix, cluster=True)

        streams = url.replace("redis://", "redis+cluster+streams://", 1)
        try:
            yield Target("redis-cluster-streams", streams + "?start_from=beginning", cleanup)
        finally:
            if cluster is not None:
                await asyncio.to_thread(cluster.stop)


@contextlib.asynccontextmanager
async def rabbitmq() -> AsyncIterator[Target | str]:
    import aio_pika

    from tests.rabbitmq_support import _probe, amqp_url_setting, delete_everything

    url = amqp_url_setting()
    why = _probe(url)
    if why is not None:
        yield f"no RabbitMQ ({why})"
        return
    from brokers.rabbitmq import RabbitMQMessageBroker

    async def cleanup(prefix: str) -> None:
        connection = await aio_pika.connect_robust(url)
        try:
            names = RabbitMQMessageBroker(connection, channel_prefix=prefix)
            await delete_everything(
                connection,
                exchanges=[names.exchange, names.dead_letter_exchange],
                queues=[names.group_queue("scale"), names.dead_letter_queue],
            )
        finally:
            await connection.close()

    yield Target("rabbitmq", url, cleanup)


@contextlib.asynccontextmanager
async def kafka() -> AsyncIterator[Target | str]:
    from tests.kafka_support import start_tansu

    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as workdir:
        tansu = None
        if configured:
            servers, options = configured, ""
        else:
            started = await asyncio.to_thread(start_tansu, Path(workdir))
            if isinstance(started, str):
                yield f"no KAFKA_BOOTSTRAP_SERVERS and Tansu did not start: {started}"
                return
            tansu = started
            servers = tansu.bootstrap_servers
            # Tansu: no idempotent producer; it holds a join for half the session timeout.
            options = "&idempotence=false&session_timeout_ms=2000&heartbeat_interval_ms=300"

        async def cleanup(prefix: str) -> None:
            from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

            admin = AIOKafkaAdminClient(bootstrap_servers=servers)
            await admin.start()
            try:
                topics = [t for t in await admin.list_topics() if t.startswith(f"{prefix}.")]
                if topics:
                    await admin.delete_topics(topics)
            finally:
                await admin.close()

        url = f"kafka://{servers}?partitions={PARTITIONS}&start_from=beginning{options}"
        try:
            yield Target("kafka", url, cleanup)
        finally:
            if tansu is not None:
                await asyncio.to_thread(tansu.stop)


@contextlib.asynccontextmanager
async def nats() -> AsyncIterator[Target | str]:
    import nats as nats_py

    from tests.nats_support import delete_stream

    url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    try:
        client = await nats_py.connect(url, allow_reconnect=False, connect_timeout=2)
        await client.close()
    except Exception as exc:
        yield f"no NATS at {url} ({type(exc).__name__}: {exc})"
        return

    async def cleanup(prefix: str) -> None:
        await delete_stream(url, prefix.replace(".", "_"))

    yield Target("nats", url + "?start_from=beginning", cleanup)


TARGETS = {
    "redis-streams": redis_streams,
    "redis-cluster-streams": redis_cluster_streams,
    "rabbitmq": rabbitmq,
    "kafka": kafka,
    "nats": nats,
}


async def main(quick: bool, only: list[str]) -> None:
    total = 2_000 if quick else 20_000
    print(
        f"{total} events published first, then consumed in one group by "
        f"{', '.join(map(str, PROCESSES))} processes (max_concurrency=1 each); "
        f"{os.cpu_count()} cores here"
    )
    for name in only:
        async with TARGETS[name]() as target:
            if isinstance(target, str):
                print(f"{name}: left out, {target}")
                continue
            await bench(target, total)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 events, for CI")
    parser.add_argument("--only", default=",".join(TARGETS), help="transports, comma-separated")
    arguments = parser.parse_args()
    names = [name.strip() for name in arguments.only.split(",") if name.strip()]
    unknown = sorted(set(names) - set(TARGETS))
    if unknown:
        parser.error(f"unknown transports {unknown}; known: {', '.join(TARGETS)}")
    asyncio.run(main(arguments.quick, names))
