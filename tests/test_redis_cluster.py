"""Both Redis transports on a Redis Cluster (docs/redis-cluster.md).

The consumer tests and the fault-compliance suite run on the cluster too,
as the transports "redis-cluster-pubsub" and "redis-cluster-streams"
(tests/transports_cluster.py). Here: what only a cluster has. Streams
spread over the primaries by hash slot and read on each; a primary killed
mid-stream, its replica taking over; a stream's slot moved to another
primary mid-stream; a Pub/Sub subscription whose node dies;
a group member's process killed; dead letters and their replay, whose keys
are in different slots; a broker from a ``redis+cluster`` URL.

The local cluster (three primaries with a replica each) is started once per
session by tests/redis_cluster_support.py; tests that kill a node restart it
afterwards, so the next one finds three primaries with replicas again.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio.cluster import RedisCluster

import brokers
from brokers.redis import RedisPubSubMessageBroker, RedisStreamMessageBroker
from mediator import EventConsumer, EventEmitter, EventMap, NotificationEvent, PublishError
from mediator.testing import wait_until
from tests.examples_runner import assert_handled_the_three_orders, run_ok
from tests.redis_cluster_support import KINDS, Alpha, Beta, Gamma, LocalCluster, spread_prefix
from tests.redis_cluster_support import redis_cluster as redis_cluster  # the fixture
from tests.redis_cluster_support import redis_cluster_url as redis_cluster_url  # the fixture
from tests.seen import Seen
from tests.transports_cluster import RedisClusterPubSubTransport, RedisClusterStreamsTransport

ROOT = Path(__file__).resolve().parent.parent
NAMES = tuple(kind.__name__ for kind in KINDS)


def by_kind() -> Seen:
    """What handlers received, as (event name, n)."""
    return Seen(lambda event: (type(event).__name__, event.n), timeout=60.0)


@pytest.fixture
async def streams(redis_cluster_url: str) -> AsyncIterator[RedisClusterStreamsTransport]:
    transport = RedisClusterStreamsTransport(spread_prefix(redis_cluster_url), redis_cluster_url)
    try:
        yield transport
    finally:
        await transport.close()


def stream(transport: Any, name: str) -> str:
    return f"{transport.prefix}:notification_event:{name}"


async def publish(broker: Any, *events: NotificationEvent) -> None:
    await EventEmitter(message_broker=broker).emit_all(list(events))


async def publish_through_outage(broker: Any, *events: NotificationEvent) -> None:
    """Publish as a producer that retries would, while a failover is under way."""
    async with asyncio.timeout(60):
        while True:
            try:
                await publish(broker, *events)
                return
            except PublishError:
                await asyncio.sleep(0.05)  # the producer's own retry pause


def every(n: int) -> list[NotificationEvent]:
    """`n` events of each of Alpha, Beta, Gamma."""
    return [kind(n=i) for i in range(n) for kind in KINDS]


def wanted(n: int) -> set[tuple[str, int]]:
    return {(name, i) for i in range(n) for name in NAMES}


def seen_map(seen: Seen) -> EventMap:
    events = EventMap()
    for kind in KINDS:
        events.bind(kind, seen)
    return events


# -- layout ---------------------------------------------------------------------


async def test_a_batch_is_routed_stream_by_stream_to_the_primary_of_its_slot(
    streams: RedisClusterStreamsTransport,
) -> None:
    client: RedisCluster = streams.client  # type: ignore[assignment]
    await publish(streams.new_broker(), *every(5))
    nodes = set()
    for name in NAMES:
        key = stream(streams, name)
        node = client.get_node_from_key(key)
        nodes.add(node.name)
        # Asked of that node alone: the stream is there, with its five entries.
        assert await client.execute_command("XLEN", key, target_nodes=node) == 5
    assert len(nodes) == 3, "the three streams are on three primaries"
    registered = await client.smembers(f"{streams.prefix}:streams")
    assert {key.decode() for key in registered} == {stream(streams, n) for n in NAMES}


async def test_a_group_reads_the_streams_of_every_primary_old_and_new(
    streams: RedisClusterStreamsTransport,
) -> None:
    """A stream that existed before the group joined (read from where
    start_from says: new), and two that appear afterwards on the two other
    primaries (read from their first entry): every entry once."""
    await publish(streams.new_broker(), Alpha(n=-1))  # before: not delivered
    seen = by_kind()
    consumer = EventConsumer(broker=streams.broker, event_map=seen_map(seen))
    await consumer.subscribe(f"{streams.prefix}:notification_event:*", "everywhere")
    async with consumer:
        await publish(streams.new_broker(), *every(20))
        await seen.until(wanted(20))
    assert ("Alpha", -1) not in seen.counts
    assert seen.duplicates() == 0


async def test_a_private_group_is_removed_from_every_stream_when_it_closes(
    streams: RedisClusterStreamsTransport,
) -> None:
    client: RedisCluster = streams.client  # type: ignore[assignment]
    seen = by_kind()
    consumer = EventConsumer(broker=streams.broker, event_map=seen_map(seen))
    await consumer.subscribe(f"{streams.prefix}:notification_event:*")
    async with consumer:
        await publish(streams.new_broker(), *every(3))
        await seen.until(wanted(3))
    for name in NAMES:
        assert await client.xinfo_groups(stream(streams, name)) == []


async def test_dead_letters_and_their_replay_cross_slots(
    streams: RedisClusterStreamsTransport,
) -> None:
    """Dead-lettering (a stream's slot and the dead-letter stream's) and a
    replay (the dead letter back to its stream) on keys of different slots."""
    failing = True
    seen = by_kind()

    async def handle(event: Beta) -> None:
        if failing:
            raise RuntimeError("the store refuses it")
        await seen(event)

    events = EventMap()
    events.bind(Beta, handle)
    consumer = EventConsumer(broker=streams.broker, event_map=events, max_deliveries=1)
    await consumer.subscribe(f"{streams.prefix}:notification_event:Beta", "dlq")
    async with consumer:
        await publish(streams.new_broker(), Beta(n=1))
        await wait_until(consumer, lambda s: s.dead_lettered >= 1, timeout=30)
        [record] = await streams.broker.dead_letters()
        assert record.channel == stream(streams, "Beta")
        failing = False
        replayed = [r async for r in streams.broker.replay_dead_letters([record])]
        assert [r.id for r in replayed] == [record.id]
        await seen.until({("Beta", 1)})
    assert await streams.broker.dead_letters() == []


async def test_a_pubsub_dead_letter_is_replayed_whichever_node_the_subscriber_is_on(
    redis_cluster_url: str,
) -> None:
    """PUBLISH counts only its own node's receivers on a cluster: the replay
    still reaches the subscriber, and the dead letter is removed."""
    prefix = f"mtk-r{uuid.uuid4().hex[:8]}"
    transport = RedisClusterPubSubTransport(prefix, redis_cluster_url)
    failing = True
    seen = by_kind()

    async def handle(event: Gamma) -> None:
        if failing:
            raise RuntimeError("the store refuses it")
        await seen(event)

    events = EventMap()
    events.bind(Gamma, handle)
    try:
        consumer = EventConsumer(broker=transport.broker, event_map=events)
        await consumer.subscribe(f"{prefix}:notification_event:*")
        async with consumer:
            await publish(transport.new_broker(), Gamma(n=1))
            await wait_until(consumer, lambda s: s.dead_lettered >= 1, timeout=30)
            failing = False
            [record] = await transport.broker.dead_letters()
            assert [r.id async for r in transport.broker.replay_dead_letters([record])] == [
                record.id
            ]
            await seen.until({("Gamma", 1)})
        assert await transport.broker.dead_letters() == []
    finally:
        await transport.close()


def test_the_example_runs_the_shop_on_the_cluster(redis_cluster_url: str) -> None:
    prefix = f"mtk-e{uuid.uuid4().hex[:8]}"
    lines = run_ok("redis_cluster.py", REDIS_CLUSTER_URL=redis_cluster_url, SHOP_PREFIX=prefix)
    placed = [line for line in lines if " is on the primary " in line]
    assert [line.partition(" ")[0] for line in placed] == [
        f"{prefix}:notification_event:{name}"
        for name in ("NewsletterSigned", "OrderCancelled", "OrderPlaced")
    ]
    assert_handled_the_three_orders(lines[len(placed) :])


# -- topology changes --------------------------------------------------------------


async def test_a_primary_killed_mid_stream_fails_over_and_nothing_replicated_is_lost(
    streams: RedisClusterStreamsTransport, redis_cluster: LocalCluster
) -> None:
    """The primary of a stream is SIGKILLed while a group member is in the
    middle of it (a handler in flight); its replica takes over.

    Asserted: every event is handled at least once. The first 100 were
    confirmed on the replica (``WAIT``) before the kill, so Redis's
    asynchronous replication cannot have lost them; the next 100 are
    published through the failover by a producer that retries. What an
    unconfirmed write may lose is the docs' "What a failover can lose".
    Duplicates (entries whose acknowledgement the replica had not received)
    are allowed and reported."""
    client: RedisCluster = streams.client  # type: ignore[assignment]
    key = stream(streams, "Alpha")
    gate, reached = asyncio.Event(), asyncio.Event()
    seen = by_kind()

    async def handle(event: Alpha) -> None:
        if event.n == 50:
            reached.set()
            await gate.wait()  # in flight, unacknowledged, while the primary dies
        await seen(event)

    events = EventMap()
    events.bind(Alpha, handle)
    consumer = EventConsumer(broker=streams.broker, event_map=events)
    await consumer.subscribe(f"{streams.prefix}:notification_event:*", "failover")
    async with consumer:
        await publish(streams.new_broker(), *(Alpha(n=n) for n in range(100)))
        replicas = await client.execute_command(
            "WAIT", 1, 10_000, target_nodes=client.get_node_from_key(key)
        )
        assert replicas == 1, "the first 100 are on the replica"
        async with asyncio.timeout(30):
            await reached.wait()
        killed = await redis_cluster.kill_primary_of(key)
        gate.set()
        await publish_through_outage(streams.new_broker(), *(Alpha(n=n) for n in range(100, 200)))
        await seen.until({("Alpha", n) for n in range(200)})
        assert consumer.running
    assert redis_cluster.primary_of(key) != killed
    print(f"primary failover mid-stream: lost 0, duplicates {seen.duplicates()}")


async def test_a_slot_moved_mid_stream_to_another_primary_loses_nothing(
    streams: RedisClusterStreamsTransport, redis_cluster: LocalCluster
) -> None:
    """The slot of a stream a group reads is migrated, with the stream and
    its group, to another primary while the group is in the middle of it:
    redis-py follows the MOVED replies, and every event is handled."""
    key = stream(streams, "Beta")
    gate, reached = asyncio.Event(), asyncio.Event()
    seen = by_kind()

    async def handle(event: Beta) -> None:
        if event.n == 50:
            reached.set()
            await gate.wait()  # in flight, unacknowledged, while the slot moves
        await seen(event)

    events = EventMap()
    events.bind(Beta, handle)
    consumer = EventConsumer(broker=streams.broker, event_map=events)
    await consumer.subscribe(f"{streams.prefix}:notification_event:*", "resharded")
    async with consumer:
        await publish(streams.new_broker(), *(Beta(n=n) for n in range(100)))
        async with asyncio.timeout(30):
            await reached.wait()
        before = redis_cluster.primary_of(key)
        after = await asyncio.to_thread(redis_cluster.move_slot_of, key)
        gate.set()
        await publish_through_outage(streams.new_broker(), *(Beta(n=n) for n in range(100, 200)))
        await seen.until({("Beta", n) for n in range(200)})
        assert consumer.running
    assert redis_cluster.primary_of(key) == after != before
    print(f"slot moved mid-stream: lost 0, duplicates {seen.duplicates()}")


async def test_a_pattern_subscription_comes_back_when_its_node_dies(
    redis_cluster_url: str, redis_cluster: LocalCluster
) -> None:
    """Pub/Sub is at-most-once: what is published while the subscription
    moves to another node may be lost; it comes back, and gets what is
    published afterwards, whichever node it is published on."""
    prefix = f"mtk-p{uuid.uuid4().hex[:8]}"
    transport = RedisClusterPubSubTransport(prefix, redis_cluster_url)
    try:
        seen = by_kind()
        consumer = EventConsumer(broker=transport.broker, event_map=seen_map(seen))
        await consumer.subscribe(f"{prefix}:notification_event:*")
        async with consumer:
            await publish(transport.new_broker(), *every(1))
            await seen.until(wanted(1))
            [subscription] = consumer._subscriptions
            node = subscription.node  # type: ignore[attr-defined]
            port = int(node.rpartition(":")[2])
            await redis_cluster.kill(port)  # a primary or a replica: both have it
            probe = 100
            while True:
                await publish_through_outage(transport.new_broker(), *every(probe)[-3:])
                try:
                    await seen.until({(name, probe - 1) for name in NAMES}, timeout=0.5)
                    break
                except TimeoutError:
                    probe += 1
                    assert probe < 200, "the subscription never came back"
            assert subscription.node != node  # type: ignore[attr-defined]
            assert consumer.running
    finally:
        await transport.close()


async def test_a_consumer_process_killed_mid_stream_loses_nothing(
    redis_cluster_url: str, tmp_path: Path
) -> None:
    """A group member's process SIGKILLed after 500 events handled (no
    drain, no acknowledgement sent, no leaving the group), then a new one in
    the same group: it claims what the dead one held on each of the three
    streams (one per primary), and every event is handled at least once."""
    total = 2_000
    prefix = spread_prefix(redis_cluster_url)  # a stream on each primary
    handled = tmp_path / "handled"
    settings = orjson.dumps(
        {
            "url": redis_cluster_url.replace("redis://", "redis+cluster://", 1),
            "prefix": prefix,
            "group": "killed",
            "path": str(handled),
            "total": total,
            "options": {"claim_idle": 0.5, "claim_interval": 0.1, "block_ms": 50},
        }
    ).decode()
    producer = RedisStreamMessageBroker.from_url(
        redis_cluster_url.replace("redis://", "redis+cluster://", 1), prefix
    )

    async def start() -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.redis_cluster_support",
            settings,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        await until(process, "ready")
        return process

    async def until(process: asyncio.subprocess.Process, wanted: str) -> None:
        assert process.stdout is not None
        async with asyncio.timeout(60):
            while True:
                line = (await process.stdout.readline()).decode().strip()
                assert line, f"the consumer process ended before {wanted!r}"
                if line == wanted or (wanted == "handled" and line.startswith("handled")):
                    return

    async with producer:
        try:
            first = await start()
            try:
                for begin in range(0, total, 500):
                    batch = [KINDS[n % 3](n=n) for n in range(begin, begin + 500)]
                    await publish(producer, *batch)
                for _ in range(2):  # mid-stream
                    await until(first, "handled")
                first.kill()  # SIGKILL
                await first.wait()
            finally:
                if first.returncode is None:
                    first.kill()
                    await first.wait()
            before = set(handled.read_bytes().split())
            assert len(before) < total, "killed after the end of the stream"
            second = await start()
            try:
                await until(second, "done")
            finally:
                second.kill()
                await second.wait()
        finally:
            client: Any = producer.client
            keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(*keys)
    counts = Counter(int(line) for line in handled.read_bytes().split())
    lost = set(range(total)) - counts.keys()
    duplicates = sum(counts.values()) - len(counts)
    print(
        f"SIGKILL mid-stream on the cluster: {total} events, {len(before)} handled before "
        f"the kill, lost {len(lost)}, duplicates {duplicates}"
    )
    assert not lost


# -- URL ---------------------------------------------------------------------------


async def test_cluster_urls_build_both_brokers_on_a_cluster_client(
    redis_cluster_url: str,
) -> None:
    where = redis_cluster_url.partition("://")[2]
    pubsub = brokers.from_url(f"redis+cluster://{where}", channel_prefix="mtk-url")
    streams = brokers.from_url(
        f"redis+cluster+streams://{where}?claim_idle=60&batch_size=10", channel_prefix="mtk-url"
    )
    assert isinstance(pubsub, RedisPubSubMessageBroker)
    assert isinstance(streams, RedisStreamMessageBroker)
    assert (streams.claim_idle, streams.batch_size) == (60.0, 10)
    for broker in (pubsub, streams):
        assert isinstance(broker.client, RedisCluster)
        assert broker.address == f"cluster {where}"
        async with broker:
            assert broker.client.get_primaries(), "it found the cluster's primaries"
    with pytest.raises(ValueError, match="names one node"):
        brokers.from_url(f"redis+cluster://{where},{where}")
