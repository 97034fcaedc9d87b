"""Fault compliance: what every transport must survive, one body per fault.

Each test runs on every transport (the `transport` fixture), like the
consumer tests. Faults that need the server's help (killing connections,
deleting a destination) go through `FAULTS`, one injector per transport; a
transport without such a thing (the in-memory broker has no connection) is
left out of that test by name, with the reason, never skipped at run time.

Where a transport promises at-least-once, lost messages are counted and
must be 0; duplicates are counted and reported in the assertion message.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import attrs
import pytest

from mediator import (
    DomainEvent,
    EventConsumer,
    EventEmitter,
    EventMap,
    FailFast,
    Message,
    NotificationEvent,
    PublishError,
)
from mediator.testing import wait_until
from mediator.transport import DeliveryGuarantee, SubscribingBroker
from tests.bad_inputs import CASES, PROBE_NAME, Probe, probe_event_map, valid
from tests.conftest import _free_port, _ping, _stop
from tests.seen import Seen
from tests.tcp_proxy import SilencingProxy
from tests.transports import FACTORIES, Transport


@attrs.frozen(kw_only=True)
class Tick(NotificationEvent):
    n: int


@attrs.frozen(kw_only=True)
class Audited(DomainEvent):
    n: int


@attrs.frozen(kw_only=True)
class Tock(NotificationEvent):
    n: int


def transports(*, without: dict[str, str] | None = None) -> pytest.MarkDecorator:
    """Parametrize over every transport but those in `without` (name: why not)."""
    names = [name for name in sorted(FACTORIES) if name not in (without or {})]
    return pytest.mark.parametrize("transport", names, indirect=True)


KNOWN_FAULTS: dict[tuple[str, str], str] = {}
"""Faults this suite found and that are not mended yet: strict xfail, so the
fix turns the test green only once the entry here is removed."""


@pytest.fixture
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    known = KNOWN_FAULTS.get((request.node.originalname, request.param))
    if known is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=known))
    prefix = f"mtk-c{uuid.uuid4().hex[:8]}"
    async with FACTORIES[request.param](prefix, request) as transport:
        yield transport


def at_least_once(transport: Transport) -> bool:
    return transport.broker.delivery_guarantee is DeliveryGuarantee.AT_LEAST_ONCE


async def publish(transport: Transport, *events: NotificationEvent) -> None:
    await EventEmitter(message_broker=transport.new_broker()).emit_all(list(events))


# -- fault injectors -------------------------------------------------------------


async def _kill_redis_connections(transport: Transport) -> int:
    """CLIENT KILL every connection of this test's client (named by its
    prefix), from a separate admin connection."""
    from redis.asyncio import Redis

    client: Redis = transport.client  # type: ignore[attr-defined]
    kwargs = client.connection_pool.connection_kwargs
    admin = Redis(host=kwargs.get("host", "127.0.0.1"), port=kwargs.get("port", 6379))
    try:
        killed = 0
        for entry in await admin.client_list():
            if entry.get("name") == transport.prefix:  # type: ignore[attr-defined]
                killed += await admin.client_kill_filter(_id=entry["id"])
        return killed
    finally:
        await admin.aclose()


async def _close_rabbitmq_connections(transport: Transport) -> int:
    """rabbitmqctl close_connection on the test's connection (named by its prefix)."""
    from tests.rabbitmq_support import close_connections

    return await close_connections(transport.prefix)  # type: ignore[attr-defined]


async def _abort_kafka_sockets(transport: Transport) -> int:
    """Abort every socket of the test's aiokafka clients (producer, admin,
    each consumer), as a network failure would."""
    return transport.kill_connections()  # type: ignore[attr-defined, no-any-return]


async def _abort_nats_sockets(transport: Transport) -> int:
    """Abort the socket of every NATS connection of the test's brokers, as a
    network failure would; nats-py reconnects."""
    return transport.kill_connections()  # type: ignore[attr-defined, no-any-return]


async def _kill_redis_cluster_connections(transport: Transport) -> int:
    """CLIENT KILL the test client's connections on every node of the cluster."""
    from tests.transports_cluster import kill_connections

    return await kill_connections(transport)


FAULTS: dict[str, Callable[[Transport], Awaitable[int]]] = {
    "redis-pubsub": _kill_redis_connections,
    "redis-streams": _kill_redis_connections,
    "redis-cluster-pubsub": _kill_redis_cluster_connections,
    "redis-cluster-streams": _kill_redis_cluster_connections,
    "rabbitmq": _close_rabbitmq_connections,
    "kafka": _abort_kafka_sockets,
    "nats": _abort_nats_sockets,
}
"""Kill the transport's live connections; returns how many were killed."""


async def _delete_redis_keys(transport: Transport) -> None:
    """DEL every key of the test's prefix: the stream, its groups, the registry."""
    client = transport.client  # type: ignore[attr-defined]
    keys = [key async for key in client.scan_iter(match=f"{transport.broker.channel_prefix}*")]
    if keys:
        await client.delete(*keys)


async def _delete_rabbitmq_queue(transport: Transport) -> None:
    """Delete the group's quorum queue from a channel of its own, and wait
    (on the subscription's log line) until the consumer has declared, bound
    and consumed it again: a message sent while no queue is bound would go
    to the unroutable queue, not to the group."""
    from tests.rabbitmq_support import watching_reconnects

    broker = transport.broker
    async with watching_reconnects("mediator.brokers.rabbitmq") as back:
        async with transport.connection.channel() as channel:  # type: ignore[attr-defined]
            await channel.queue_delete(
                broker.group_queue("compliance"),  # type: ignore[attr-defined]
                if_unused=False,
                if_empty=False,
            )
        async with asyncio.timeout(30):
            await back.wait()


async def _delete_kafka_topics(transport: Transport) -> None:
    """Delete the test's topics (DeleteTopics through an admin client)."""
    assert await transport.delete_topics() >= 1  # type: ignore[attr-defined]


async def _delete_nats_stream(transport: Transport) -> None:
    """Delete the prefix's stream, and with it the group's durable consumer."""
    await transport.delete_stream()  # type: ignore[attr-defined]


DELETE_DESTINATION: dict[str, Callable[[Transport], Awaitable[None]]] = {
    "rabbitmq": _delete_rabbitmq_queue,
    "kafka": _delete_kafka_topics,
    "nats": _delete_nats_stream,
}
"""Delete what a group subscription reads; Redis transports delete their keys."""

NO_CONNECTION_FAULT = {
    "memory": "no connection to lose",
    "azure": "the loopback AMQP peer cannot drop a live connection yet",
}


# -- the suite ---------------------------------------------------------------------


@transports()
async def test_every_kind_of_bad_input_is_dead_lettered_with_its_reason(
    transport: Transport,
) -> None:
    handled: list[int] = []

    async def handle(event: Probe) -> None:
        handled.append(event.user_id)

    events = probe_event_map()
    events.bind(Probe, handle)
    consumer = EventConsumer(broker=transport.broker, event_map=events)
    channel = f"{transport.broker.channel_prefix}:notification_event:{PROBE_NAME}"
    await consumer.subscribe(channel)
    async with consumer:
        for case in CASES:
            await transport.publish_raw(channel, case.build(PROBE_NAME))
        await transport.publish_raw(channel, valid(PROBE_NAME))
        await wait_until(
            consumer, lambda s: s.handled >= 1 and s.dead_lettered >= len(CASES), timeout=60
        )
        assert consumer.running
    assert handled == [7]
    dead = await transport.dead_letters()
    assert Counter(reason for reason, _ in dead) == Counter(case.reason for case in CASES)
    longest = max(len(description) for _, description in dead)
    assert longest <= 1024, "a dead letter quotes at most 1 KiB of the message"


@attrs.define
class Silenceable:
    """A transport whose connections pass through a `SilencingProxy`, a
    broker that reaches the server directly (to publish while the proxied
    ones are silent), and the bound within which the transport, as the test
    configures it, must notice the silence."""

    transport: Transport
    direct: SubscribingBroker
    proxy: SilencingProxy
    bound: float


@asynccontextmanager
async def _silenceable_redis(
    name: str, prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Silenceable]:
    from redis.asyncio import Redis
    from redis.asyncio.connection import parse_url

    from brokers.redis import RedisPubSubMessageBroker, RedisStreamMessageBroker
    from tests.transports import RedisPubSubTransport, RedisStreamsTransport

    url = request.getfixturevalue("redis_url")
    where = parse_url(url)
    direct_client = Redis.from_url(url)
    # Noticed within two silence_timeouts on Pub/Sub (a PING unanswered), and
    # within BLOCK plus one on Streams (a read's reply overdue).
    silence_timeout = 1.0
    async with SilencingProxy(where.get("host", "127.0.0.1"), where.get("port", 6379)) as proxy:
        proxied = f"redis://127.0.0.1:{proxy.port}/{where.get('db', 0)}"
        transport: RedisPubSubTransport | RedisStreamsTransport
        direct: SubscribingBroker
        if name == "redis-pubsub":
            transport = RedisPubSubTransport(prefix, proxied, silence_timeout=silence_timeout)
            direct = RedisPubSubMessageBroker(direct_client, prefix)
        else:
            transport = RedisStreamsTransport(prefix, proxied, silence_timeout=silence_timeout)
            direct = RedisStreamMessageBroker(direct_client, prefix)
        try:
            yield Silenceable(transport, direct, proxy, bound=2 * silence_timeout)
        finally:
            await transport.close()
            await direct.stop()
            await direct_client.aclose()


@asynccontextmanager
async def _silenceable_kafka(
    name: str, prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Silenceable]:
    from tests.kafka_support import silenceable_tansu
    from tests.transports import KafkaTransport

    # Every client (consumer, admin, producer) gives up on a request after
    # request_timeout_ms, drops that connection and opens another one.
    request_timeout = 3.0
    async with silenceable_tansu() as (server, proxy):
        options = {"client_options": {"request_timeout_ms": int(request_timeout * 1000)}}
        transport = KafkaTransport(prefix, server, **options)
        try:
            # Another broker on the same Tansu: its connections pass the
            # proxy too, and it must get over the silence like the consumer.
            yield Silenceable(transport, transport.new_broker(), proxy, bound=request_timeout)
        finally:
            await transport.close()


@asynccontextmanager
async def _silenceable_rabbitmq(
    name: str, prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Silenceable]:
    import aio_pika

    from brokers.rabbitmq import RabbitMQMessageBroker
    from tests.rabbitmq_support import amqp_url, connect
    from tests.transports import RabbitMQTransport

    where = urlsplit(amqp_url())
    # aiormq drops a connection that received no frame for 3 x (heartbeat + 1) s.
    heartbeat = 1
    async with SilencingProxy(where.hostname or "127.0.0.1", where.port or 5672) as proxy:
        proxied = where._replace(
            netloc=f"{where.username}:{where.password}@127.0.0.1:{proxy.port}",
            query=f"heartbeat={heartbeat}",
        ).geturl()
        connection = await aio_pika.connect_robust(
            proxied, client_properties={"connection_name": prefix}, reconnect_interval=0.1
        )
        direct_connection = await connect(f"{prefix}-direct")
        transport = RabbitMQTransport(prefix, connection)
        direct = RabbitMQMessageBroker(direct_connection, channel_prefix=prefix)
        try:
            yield Silenceable(transport, direct, proxy, bound=3 * (heartbeat + 1))
        finally:
            await direct.stop()
            await direct_connection.close()
            await transport.close()


@asynccontextmanager
async def _silenceable_azure(
    name: str, prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Silenceable]:
    from brokers.azure import AzureMessageBroker
    from tests.azure_peer import AmqpPeer
    from tests.transports import AzureTransport

    # What the receiver took on the silent link is locked there, and comes
    # back when its lock runs out: a short lock keeps that inside the margin.
    peer = AmqpPeer(lock_duration=2.0)
    with peer:
        peer.add_subscription(prefix, "compliance")  # the group the test subscribes in
        async with SilencingProxy("127.0.0.1", peer.port) as proxy:
            # A receiver that got nothing for silence_timeout peeks, and takes
            # a peek unanswered within silence_timeout for a silent connection:
            # noticed within 2 x silence_timeout + max_wait_time (1 s here).
            silence_timeout = 1.0
            transport = AzureTransport(
                prefix, peer, port=proxy.port, silence_timeout=silence_timeout
            )
            direct = AzureMessageBroker.from_connection_string(
                peer.connection_string,
                prefix,
                sender_options={"socket_timeout": 0.05, "keep_alive": 0},
            )
            try:
                yield Silenceable(transport, direct, proxy, bound=2 * silence_timeout + 1.0)
            finally:
                await direct.stop()
                await transport.close()


@asynccontextmanager
async def _silenceable_nats(
    name: str, prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Silenceable]:
    from tests.nats_support import nats_url
    from tests.transports_nats import NatsTransport

    url = nats_url(request)
    where = urlsplit(url)
    # nats-py PINGs every ping_interval and drops a connection with
    # max_outstanding_pings unanswered: noticed within 3 x 1 s.
    ping = {"ping_interval": 1, "max_outstanding_pings": 2}
    async with SilencingProxy(where.hostname or "127.0.0.1", where.port or 4222) as proxy:
        transport = NatsTransport(prefix, f"nats://127.0.0.1:{proxy.port}")
        transport._brokers.clear()
        transport.broker = transport.new_broker(
            connect_options={"reconnect_time_wait": 0.1, **ping}
        )
        direct = NatsTransport(prefix, url)
        try:
            yield Silenceable(transport, direct.broker, proxy, bound=3 * 1.0)
        finally:
            await direct.close()
            await transport.close()


def _silenceable_redis_cluster(
    name: str, prefix: str, request: pytest.FixtureRequest
) -> AbstractAsyncContextManager[Silenceable]:
    """Every node of the cluster behind a proxy of its own (tests/transports_cluster.py)."""
    from tests.transports_cluster import silenceable_cluster

    return silenceable_cluster(name, prefix, request)


SILENCEABLE: dict[
    str, Callable[[str, str, pytest.FixtureRequest], AbstractAsyncContextManager[Silenceable]]
] = {
    "redis-pubsub": _silenceable_redis,
    "redis-streams": _silenceable_redis,
    "kafka": _silenceable_kafka,
    "rabbitmq": _silenceable_rabbitmq,
    "azure": _silenceable_azure,
    "redis-cluster-pubsub": _silenceable_redis_cluster,
    "redis-cluster-streams": _silenceable_redis_cluster,
    "nats": _silenceable_nats,
}


@pytest.fixture(params=sorted(SILENCEABLE))
async def silenceable(request: pytest.FixtureRequest) -> AsyncIterator[Silenceable]:
    prefix = f"mtk-s{uuid.uuid4().hex[:8]}"
    async with SILENCEABLE[request.param](request.param, prefix, request) as silenceable:
        yield silenceable


async def test_a_connection_gone_silent_is_noticed_and_replaced(silenceable: Silenceable) -> None:
    """A network partition: the subscription's connection stops carrying
    anything, and closes neither way. The transport notices it within its
    bound (heartbeats, pings, read timeouts), connects again, and loses
    nothing it promised to deliver. (Memory has no connection.)"""
    transport = silenceable.transport
    seen = Seen()
    events = EventMap()
    events.bind(Tick, seen)
    consumer = EventConsumer(broker=transport.broker, event_map=events)
    group = "compliance" if transport.has_groups else None
    await consumer.subscribe(f"{transport.broker.channel_prefix}:notification_event:*", group)
    emitter = EventEmitter(message_broker=silenceable.direct)
    async with consumer:
        await emitter.emit(Tick(n=0))
        await seen.until({0})
        assert silenceable.proxy.silence() >= 1
        # Noticed within the bound, then a new connection through the proxy:
        # the margin is for the reconnect's backoff and a loaded machine.
        within = silenceable.bound + 15
        if at_least_once(transport):
            await emitter.emit_all([Tick(n=n) for n in range(1, 11)])
            await seen.until(set(range(11)), timeout=within)
        else:
            # At-most-once: what is published before it is back may be lost.
            deadline = asyncio.get_running_loop().time() + within
            probe = 100
            while True:
                await emitter.emit(Tick(n=probe))
                try:
                    await seen.until({probe}, timeout=0.25)
                    break
                except TimeoutError:
                    probe += 1
                    assert asyncio.get_running_loop().time() < deadline, "never came back"
        assert consumer.running
        assert silenceable.proxy.connections >= 1, "it connected again through the proxy"


@transports(without=NO_CONNECTION_FAULT)
async def test_connections_killed_mid_stream(transport: Transport) -> None:
    seen = Seen()
    events = EventMap()
    events.bind(Tick, seen)
    consumer = EventConsumer(broker=transport.broker, event_map=events)
    group = "compliance" if transport.has_groups else None
    await consumer.subscribe(f"{transport.broker.channel_prefix}:notification_event:*", group)
    total = 200
    async with consumer:
        await publish(transport, *(Tick(n=n) for n in range(total // 2)))
        await seen.until({0})
        assert await FAULTS[transport.name](transport) >= 1
        await publish(transport, *(Tick(n=n) for n in range(total // 2, total)))
        if at_least_once(transport):
            await seen.until(set(range(total)))
        else:
            # At-most-once: what was sent while it reconnected may be gone,
            # but it comes back and handles what is published afterwards.
            probe = total
            while True:
                await publish(transport, Tick(n=probe))
                try:
                    await seen.until({probe}, timeout=0.5)
                    break
                except TimeoutError:
                    probe += 1
                    assert probe < total + 60, "the subscription never came back"
        assert consumer.running
    if at_least_once(transport):
        wanted = set(range(total))
        assert seen.lost(wanted) == set(), f"lost; duplicates: {seen.duplicates()}"


class Downstream:
    """The broker follow-up events go to, down for the first `outage` seconds."""

    def __init__(self, outage: float) -> None:
        self.back_at = asyncio.get_running_loop().time() + outage
        self.refused = 0
        self.sent: list[str] = []

    async def send_message(self, message: Message) -> None:
        await self.send_messages([message])

    async def send_messages(self, messages: Sequence[Message]) -> None:
        if asyncio.get_running_loop().time() < self.back_at:
            self.refused += 1
            raise PublishError("the downstream broker is down")
        self.sent.extend(message.message_name for message in messages)


@transports(
    without={
        "redis-pubsub": "at-most-once: a released message is dropped",
        "redis-cluster-pubsub": "at-most-once: a released message is dropped",
    }
)
async def test_redeliveries_wait_out_a_short_outage_of_the_follow_up_broker(
    transport: Transport,
) -> None:
    """A follow-up broker down for 2 s: the delivery is released and comes
    back after a growing delay, so it is handled once the broker is back,
    with the default delivery limit, instead of being dead-lettered."""

    async def handle(event: Tick) -> list[Tock]:
        return [Tock(n=event.n)]

    events = EventMap()
    events.bind(Tick, handle)
    downstream = Downstream(outage=2.0)
    consumer = EventConsumer(
        broker=transport.broker,
        event_map=events,
        event_emitter=EventEmitter(event_map=events, message_broker=downstream),
    )
    await consumer.subscribe(f"{transport.broker.channel_prefix}:notification_event:Tick")
    async with consumer:
        await publish(transport, Tick(n=1))
        await wait_until(consumer, lambda s: s.handled >= 1 or s.dead_lettered >= 1, timeout=60)
    assert consumer.stats.dead_lettered == 0
    assert consumer.stats.released >= 1
    assert downstream.refused >= 1
    assert downstream.sent == ["Tock"]
    assert consumer.stats.released < 6, "each redelivery waited longer than the one before"


@transports(
    without={
        "redis-pubsub": "at-most-once: a released message is dropped",
        "redis-cluster-pubsub": "at-most-once: a released message is dropped",
    }
)
async def test_a_poison_message_is_dead_lettered_after_the_delivery_limit(
    transport: Transport,
) -> None:
    async def handle(event: Tick) -> list[Audited]:
        return [Audited(n=event.n)]

    async def audit(event: Audited) -> None:
        raise RuntimeError("the audit store refuses it every time")

    events = EventMap()
    events.bind(Tick, handle)
    events.bind(Audited, audit, policy=FailFast())  # fails the send: released
    consumer = EventConsumer(broker=transport.broker, event_map=events, max_deliveries=3)
    await consumer.subscribe(f"{transport.broker.channel_prefix}:notification_event:*")
    async with consumer:
        await publish(transport, Tick(n=1))
        await wait_until(consumer, lambda s: s.dead_lettered >= 1, timeout=30)
        assert consumer.running
    assert consumer.stats.dead_lettered_by_reason == {"too_many_deliveries": 1}
    assert consumer.stats.released == 2
    [(reason, _)] = await transport.dead_letters()
    assert reason == "too_many_deliveries"


@transports(without={"memory": "no server-side destination", "azure": "peer: no entity delete"})
async def test_a_destination_deleted_under_a_consumer_comes_back(transport: Transport) -> None:
    seen = Seen()
    events = EventMap()
    events.bind(Tick, seen)
    consumer = EventConsumer(broker=transport.broker, event_map=events)
    group = "compliance" if transport.has_groups else None
    channel_glob = f"{transport.broker.channel_prefix}:notification_event:*"
    await consumer.subscribe(channel_glob, group)
    async with consumer:
        await publish(transport, Tick(n=0))
        await seen.until({0})
        await DELETE_DESTINATION.get(transport.name, _delete_redis_keys)(transport)
        probe = 1
        while True:
            await publish(transport, Tick(n=probe))
            try:
                await seen.until({probe}, timeout=1.0)
                break
            except TimeoutError:
                probe += 1
                assert probe < 30, "the consumer never read the recreated destination"
        assert consumer.running


@transports(
    without={
        "redis-pubsub": "no groups, so no redelivery window",
        "redis-cluster-pubsub": "no groups, so no redelivery window",
    }
)
async def test_a_handler_slower_than_the_redelivery_window_runs_once(
    transport: Transport,
) -> None:
    # Two members of one group; the handler outlasts the window after which
    # an unsettled message may be given to another member (Streams' claim
    # idle time in the test configuration is 0.5 s).
    window = 0.5
    seen = Seen()

    async def slow(event: Tick) -> None:
        await asyncio.sleep(window * 3)  # the slowness under test, not a wait
        await seen(event)

    events = EventMap()
    events.bind(Tick, slow)
    group = transport.own_group("billing") if transport.name == "azure" else "slow"
    first = EventConsumer(broker=transport.broker, event_map=events)
    second = EventConsumer(broker=transport.new_broker(), event_map=events)
    glob = f"{transport.broker.channel_prefix}:notification_event:*"
    await first.subscribe(glob, group)
    await second.subscribe(glob, group)
    async with first, second:
        await publish(transport, Tick(n=1))
        await seen.until({1})
        await publish(transport, Tick(n=2))  # a marker behind it
        await seen.until({2})
    assert seen.counts[1] == 1, f"handled {seen.counts[1]} times"


# -- a restarted server ------------------------------------------------------------

NO_RESTART = {
    "memory": "no server",
    "azure": "the loopback AMQP peer cannot restart under a live client yet",
    "rabbitmq": "the RabbitMQ server is shared by every test run on the machine",
    "kafka": "Tansu keeps memory storage only: a restart is a new, empty broker",
    "redis-cluster-pubsub": "a node's restart is tests/test_redis_cluster.py's: a primary "
    "SIGKILLed, its replica taking over, the node started again",
    "redis-cluster-streams": "a node's restart is tests/test_redis_cluster.py's: a primary "
    "SIGKILLed, its replica taking over, the node started again",
}


class PrivateRedis:
    """A redis-server of this test's own, restartable on the same port; it
    writes every command to its append-only file, so a restart keeps what
    was acknowledged (as a persistent production server does)."""

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.fail("the restart test needs redis-server on PATH", pytrace=False)
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert self.binary is not None
        with (self.workdir / "redis.log").open("ab") as log:
            return subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    async def start(self) -> None:
        self.proc = self._spawn()
        async with asyncio.timeout(10):
            while _ping(self.url) is not None:
                assert self.proc.poll() is None, "redis-server exited at start"
                await asyncio.sleep(0.02)  # a bounded poll of a process starting

    async def stop(self) -> None:
        if self.proc is not None:
            proc, self.proc = self.proc, None
            await asyncio.to_thread(_stop, proc)

    async def restart(self) -> None:
        await self.stop()
        await self.start()


async def publish_through_outage(transport: Transport, *events: NotificationEvent) -> None:
    """Publish as a producer that retries would: a PublishError while the
    server is down is tried again after a short pause."""
    async with asyncio.timeout(30):
        while True:
            try:
                await publish(transport, *events)
                return
            except PublishError:
                await asyncio.sleep(0.05)  # the producer's own retry pause


async def _own_redis(name: str, prefix: str, workdir: Path) -> tuple[Any, Transport]:
    from tests.transports import RedisPubSubTransport, RedisStreamsTransport

    server = PrivateRedis(workdir)
    await server.start()
    own = cast(
        Transport,
        RedisStreamsTransport(prefix, server.url)
        if name == "redis-streams"
        else RedisPubSubTransport(prefix, server.url),
    )
    return server, own


async def _own_nats(name: str, prefix: str, workdir: Path) -> tuple[Any, Transport]:
    """A nats-server of the test's own, JetStream on a file store."""
    from tests.nats_support import PrivateNats
    from tests.transports_nats import NatsTransport

    server = PrivateNats(workdir)
    await server.start()
    return server, cast(Transport, NatsTransport(prefix, server.url))


PRIVATE_SERVERS: dict[str, Callable[[str, str, Path], Awaitable[tuple[Any, Transport]]]] = {
    "nats": _own_nats,
}
"""A server of the test's own (with `restart()` and `stop()`) and a transport
on it, for the restart test; a private Redis for the transports not named."""


@transports(without=NO_RESTART)
async def test_a_restarted_server_is_survived(transport: Transport, tmp_path: Path) -> None:
    prefix = transport.broker.channel_prefix
    private = PRIVATE_SERVERS.get(transport.name, _own_redis)
    server, own = await private(transport.name, prefix, tmp_path)
    try:
        seen = Seen()
        events = EventMap()
        events.bind(Tick, seen)
        consumer = EventConsumer(broker=own.broker, event_map=events)
        group = "compliance" if own.has_groups else None
        await consumer.subscribe(f"{own.broker.channel_prefix}:notification_event:*", group)
        async with consumer:
            await publish(own, *(Tick(n=n) for n in range(50)))
            await seen.until({0})
            await server.restart()
            if at_least_once(own):
                await publish_through_outage(own, *(Tick(n=n) for n in range(50, 100)))
                await seen.until(set(range(100)))
            else:
                probe = 100
                while True:
                    await publish_through_outage(own, Tick(n=probe))
                    try:
                        await seen.until({probe}, timeout=0.5)
                        break
                    except TimeoutError:
                        probe += 1
                        assert probe < 200, "the subscription never came back"
            assert consumer.running
        if at_least_once(own):
            assert seen.lost(set(range(100))) == set(), f"duplicates: {seen.duplicates()}"
    finally:
        await own.close()  # type: ignore[attr-defined]
        await server.stop()
