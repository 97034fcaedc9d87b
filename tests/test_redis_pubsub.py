"""RedisPubSubMessageBroker (diator's RedisMessageBroker) on a real Redis: what goes over
the wire, and what survives faults.

The transport-independent consumer behaviour is in ``test_consumer.py`` (it runs on
Redis Pub/Sub too); this module covers what only Redis Pub/Sub has: the bytes a
diator-style ``PSUBSCRIBE`` client sees, the pipelined batch, unreachable servers
(for both Redis brokers), a killed subscription connection, and the capped,
bounded dead-letter stream.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import orjson
import pytest
import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline, PubSub
from redis.asyncio.connection import Connection, parse_url

from brokers.redis import RedisMessageBroker, RedisPubSubMessageBroker, RedisStreamMessageBroker
from mediator import (
    BrokerUnavailableError,
    ConsumerStats,
    CredentialError,
    DomainEvent,
    ECSTEvent,
    EventConsumer,
    EventEmitter,
    EventMap,
    Mediator,
    MessageCodec,
    MessageDecodeError,
    NotificationEvent,
    PublishError,
    Request,
    RequestHandler,
    RequestMap,
    correlation_scope,
)
from mediator.testing import wait_until

WAIT = 10.0  # seconds: the bound of every wait for something that should happen now


@attrs.frozen(kw_only=True)
class UserJoined(NotificationEvent):
    user_id: int
    meeting_id: int


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class OrderPaid(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class CustomerState(ECSTEvent):
    customer_id: int
    name: str


@attrs.frozen(kw_only=True)
class StockReserved(DomainEvent):
    order_id: int


@attrs.frozen
class JoinMeeting(Request[None]):
    user_id: int
    meeting_id: int
    event_id: uuid.UUID
    event_timestamp: datetime


class JoinMeetingHandler(RequestHandler[JoinMeeting, None]):
    async def handle(self, request: JoinMeeting) -> None:
        self.events.append(
            UserJoined(
                event_id=request.event_id,
                event_timestamp=request.event_timestamp,
                user_id=request.user_id,
                meeting_id=request.meeting_id,
            )
        )


@attrs.frozen
class PlaceOrder(Request[None]):
    order_id: int
    customer_id: int


class PlaceOrderHandler(RequestHandler[PlaceOrder, None]):
    """Raises broker-bound events with a domain event in between."""

    async def handle(self, request: PlaceOrder) -> None:
        self.events.append(OrderPlaced(order_id=request.order_id))
        self.events.append(StockReserved(order_id=request.order_id))
        self.events.append(CustomerState(customer_id=request.customer_id, name="ada"))
        self.events.append(OrderPaid(order_id=request.order_id))
        self.events.append(OrderPlaced(order_id=request.order_id + 1))


# -- helpers -------------------------------------------------------------------


@asynccontextmanager
async def raw_psubscribe(client: Redis, pattern: str) -> AsyncIterator[PubSub]:
    """A plain redis-py PSUBSCRIBE, as a diator consumer does it; live when entered."""
    pubsub = client.pubsub()
    try:
        await pubsub.psubscribe(pattern)
        async with asyncio.timeout(WAIT):
            while True:
                reply = await pubsub.get_message(timeout=WAIT)
                if reply is not None and reply["type"] == "psubscribe":
                    break
        yield pubsub
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def pmessages_until(pubsub: PubSub, sentinel: bytes) -> list[dict[str, Any]]:
    """The ``pmessage`` replies received before the one whose data is `sentinel`.

    Publish `sentinel` after what is under test: Redis delivers in the order it ran
    the PUBLISHes, so what arrives before it is everything that was published.
    """
    received: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT):
        while True:
            reply = await pubsub.get_message(ignore_subscribe_messages=True, timeout=WAIT)
            if reply is None or reply["type"] != "pmessage":
                continue
            if reply["data"] == sentinel:
                return received
            received.append(reply)


def resp_commands(data: bytes) -> list[list[bytes]]:
    """Split bytes written to Redis into commands (RESP arrays of bulk strings)."""
    commands: list[list[bytes]] = []
    pos = 0
    while pos < len(data):
        assert data[pos : pos + 1] == b"*", data[pos : pos + 20]
        end = data.index(b"\r\n", pos)
        count = int(data[pos + 1 : end])
        pos = end + 2
        args: list[bytes] = []
        for _ in range(count):
            assert data[pos : pos + 1] == b"$", data[pos : pos + 20]
            end = data.index(b"\r\n", pos)
            length = int(data[pos + 1 : end])
            pos = end + 2
            args.append(data[pos : pos + length])
            pos += length + 2
        commands.append(args)
    return commands


def as_bytes(command: bytes | str | Iterable[bytes]) -> bytes:
    """What `Connection.send_packed_command` is given, as the bytes it writes."""
    if isinstance(command, str):
        return command.encode()
    if isinstance(command, bytes):
        return command
    return b"".join(bytes(chunk) for chunk in command)


def recording_connection(writes: list[bytes]) -> type[Connection]:
    """A Connection class that appends every write it sends to Redis to `writes`."""

    class RecordingConnection(Connection):
        async def send_packed_command(
            self, command: bytes | str | Iterable[bytes], check_health: bool = True
        ) -> None:
            data = as_bytes(command)
            writes.append(data)
            await super().send_packed_command(data, check_health)

    return RecordingConnection


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local TCP port that refuses connections: bound but never listening, and held
    for the whole test so that nothing else can take it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


class Inbox:
    """An event handler that records the events it is given."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    async def __call__(self, event: Any) -> None:
        self.events.append(event)


# -- 1. the envelope a diator-style subscriber sees ----------------------------


@pytest.mark.parametrize("layout", ["name", "diator"])
async def test_a_raw_psubscribe_receives_exactly_the_documented_envelope(
    redis_client: Redis, key_prefix: str, layout: str
) -> None:
    broker = RedisMessageBroker(
        client=redis_client,
        channel_prefix=key_prefix,
        channel_layout=layout,  # type: ignore[arg-type]
    )
    requests = RequestMap()
    requests.bind(JoinMeeting, JoinMeetingHandler)
    mediator = Mediator(request_map=requests, event_emitter=EventEmitter(message_broker=broker))
    event_id = uuid.uuid4()
    # 21:01:02 at UTC+1 is sent as 20:01:02 UTC.
    timestamp = datetime(2026, 11, 24, 21, 1, 2, 123456, tzinfo=timezone(timedelta(hours=1)))
    pattern = f"{key_prefix}:notification_event:*"

    async with raw_psubscribe(redis_client, pattern) as pubsub:
        with correlation_scope("req-diator-1"):
            await mediator.send(
                JoinMeeting(user_id=123, meeting_id=7, event_id=event_id, event_timestamp=timestamp)
            )
        await redis_client.publish(f"{key_prefix}:notification_event:end", b"end")
        [reply] = await pmessages_until(pubsub, b"end")

    last = "UserJoined" if layout == "name" else str(event_id)
    assert reply["pattern"] == pattern.encode()
    assert reply["channel"] == f"{key_prefix}:notification_event:{last}".encode()
    envelope = orjson.loads(reply["data"])
    assert envelope == {
        "message_type": "notification_event",
        "message_name": "UserJoined",
        "message_id": str(event_id),
        "payload": {
            "event_id": str(event_id),
            "event_timestamp": "2026-11-24T21:01:02.123456+01:00",
            "user_id": 123,
            "meeting_id": 7,
        },
        "headers": {"correlation_id": "req-diator-1"},
    }
    # Keys in the documented order; diator's four keys first.
    assert list(envelope) == ["message_type", "message_name", "message_id", "payload", "headers"]
    assert list(envelope["payload"]) == ["event_id", "event_timestamp", "user_id", "meeting_id"]
    assert uuid.UUID(envelope["message_id"]) == uuid.UUID(envelope["payload"]["event_id"])
    # Compact JSON, as orjson writes it.
    assert reply["data"] == orjson.dumps(envelope)


async def test_a_default_timestamp_is_utc_with_its_offset_and_correlation_is_generated(
    redis_client: Redis, key_prefix: str
) -> None:
    broker = RedisMessageBroker(client=redis_client, channel_prefix=key_prefix)
    before = datetime.now(UTC)
    async with raw_psubscribe(redis_client, f"{key_prefix}:notification_event:*") as pubsub:
        await EventEmitter(message_broker=broker).emit(OrderPlaced(order_id=5))
        await redis_client.publish(f"{key_prefix}:notification_event:end", b"end")
        [reply] = await pmessages_until(pubsub, b"end")
    envelope = orjson.loads(reply["data"])
    stamp: str = envelope["payload"]["event_timestamp"]
    assert stamp.endswith("+00:00")
    assert datetime.fromisoformat(stamp) >= before - timedelta(seconds=1)
    [header] = envelope["headers"]
    assert header == "correlation_id"
    assert envelope["headers"]["correlation_id"]


# -- 2. one request's events: one pipelined round trip --------------------------


async def test_the_events_of_one_request_go_out_in_one_pipelined_write(
    redis_url: str, redis_client: Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[bytes] = []
    producer = Redis.from_url(redis_url, connection_class=recording_connection(writes))
    executes: list[tuple[bool, list[bytes]]] = []
    make_pipeline = producer.pipeline

    def recording_pipeline(transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        pipe = make_pipeline(transaction=transaction, shard_hint=shard_hint)
        execute = pipe.execute

        async def recorded_execute(raise_on_error: bool = True) -> list[Any]:
            names = [str(args[0]).upper().encode() for args, _ in pipe.command_stack]
            executes.append((transaction, names))
            return await execute(raise_on_error)

        monkeypatch.setattr(pipe, "execute", recorded_execute)
        return pipe

    monkeypatch.setattr(producer, "pipeline", recording_pipeline)
    try:
        broker = RedisMessageBroker(client=producer, channel_prefix=key_prefix)
        local = Inbox()
        events = EventMap()
        events.bind(StockReserved, local)
        requests = RequestMap()
        requests.bind(PlaceOrder, PlaceOrderHandler)
        mediator = Mediator(
            request_map=requests,
            event_emitter=EventEmitter(event_map=events, message_broker=broker),
        )
        await producer.ping()  # connect now: the handshake is not part of the send
        async with raw_psubscribe(redis_client, f"{key_prefix}:*") as pubsub:
            writes.clear()
            await mediator.send(PlaceOrder(order_id=1, customer_id=3))
            sent = list(writes)
            await redis_client.publish(f"{key_prefix}:end", b"end")
            received = await pmessages_until(pubsub, b"end")
    finally:
        await producer.aclose()

    expected = [
        ("notification_event", "OrderPlaced", 1),
        ("ecst_event", "CustomerState", None),
        ("notification_event", "OrderPaid", 1),
        ("notification_event", "OrderPlaced", 2),
    ]
    envelopes = [orjson.loads(reply["data"]) for reply in received]
    assert [
        (e["message_type"], e["message_name"], e["payload"].get("order_id")) for e in envelopes
    ] == expected, "every broker-bound event, in raised order, and nothing else"
    assert [reply["channel"].decode() for reply in received] == [
        f"{key_prefix}:{kind}:{name}" for kind, name, _ in expected
    ]
    assert len({e["headers"]["correlation_id"] for e in envelopes}) == 1, "one batch"
    assert [e.order_id for e in local.events] == [1]  # the domain event stayed local

    # One pipeline, executed once, without MULTI/EXEC, carrying the four PUBLISHes ...
    assert executes == [(False, [b"PUBLISH"] * 4)]
    # ... written to the socket in one go: one round trip.
    [write] = sent
    commands = resp_commands(write)
    assert [command[0].upper() for command in commands] == [b"PUBLISH"] * 4
    assert [(channel, data) for _, channel, data in commands] == [
        (reply["channel"], reply["data"]) for reply in received
    ]


# -- 3. an unreachable Redis ---------------------------------------------------


async def test_publishing_to_an_unreachable_redis_raises_publish_error(closed_port: int) -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{closed_port}")
    try:
        broker = RedisMessageBroker(client=client, channel_prefix="unreachable")
        local = Inbox()
        events = EventMap()
        events.bind(StockReserved, local)
        requests = RequestMap()
        requests.bind(PlaceOrder, PlaceOrderHandler)
        mediator = Mediator(
            request_map=requests,
            event_emitter=EventEmitter(event_map=events, message_broker=broker),
        )

        # A batch: the caller gets the error, naming every event in it.
        with pytest.raises(PublishError) as batch_error:
            await mediator.send(PlaceOrder(order_id=1, customer_id=3))
        for name in ("OrderPlaced", "CustomerState", "OrderPaid"):
            assert name in str(batch_error.value)
        assert isinstance(batch_error.value.__cause__, redis.exceptions.ConnectionError)
        assert [e.order_id for e in local.events] == [1]  # local effects happened

        # A single event: named, with its id.
        event = OrderPaid(order_id=9)
        with pytest.raises(PublishError, match="OrderPaid") as single_error:
            await EventEmitter(message_broker=broker).emit(event)
        assert str(event.event_id) in str(single_error.value)
        assert isinstance(single_error.value.__cause__, redis.exceptions.ConnectionError)
        assert isinstance(single_error.value, ConnectionError)
    finally:
        await client.aclose()


async def test_a_consumer_whose_follow_ups_cannot_be_published_says_so(
    redis_client: Redis, key_prefix: str, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    dead_client = Redis.from_url(f"redis://127.0.0.1:{closed_port}")
    try:
        broker = RedisMessageBroker(client=redis_client, channel_prefix=key_prefix)
        dead_broker = RedisMessageBroker(client=dead_client, channel_prefix=key_prefix)

        async def charge(event: OrderPlaced) -> list[OrderPaid]:
            return [OrderPaid(order_id=event.order_id)]

        events = EventMap()
        events.bind(OrderPlaced, charge)
        consumer = EventConsumer(
            broker=broker,
            event_map=events,
            event_emitter=EventEmitter(event_map=events, message_broker=dead_broker),
        )
        await consumer.subscribe(f"{key_prefix}:notification_event:OrderPlaced")
        async with consumer:
            await EventEmitter(message_broker=broker).emit(OrderPlaced(order_id=4))
            await wait_until(consumer, lambda s: s.settled >= 1, timeout=WAIT)
    finally:
        await dead_client.aclose()

    assert (consumer.stats.handled, consumer.stats.released) == (0, 1)
    failures = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], PublishError)]
    assert failures, "the publish failure is logged with the PublishError"
    assert "OrderPaid" in str(failures[0].exc_info[1])  # type: ignore[index]
    assert any(
        r.name == "mediator.brokers.redis" and "cannot redeliver" in r.getMessage()
        for r in caplog.records
    ), "Pub/Sub cannot redeliver: the drop is logged, not silent"


# -- 4. a killed subscription connection ---------------------------------------


async def kill_subscriptions(admin: Redis, client_name: str) -> list[str]:
    """CLIENT KILL, by id, exactly the Pub/Sub connections named `client_name`."""
    ids = [
        entry["id"]
        for entry in await admin.client_list()
        if entry["name"] == client_name
        and (int(entry.get("psub", 0)) > 0 or entry["cmd"] == "psubscribe")
    ]
    for client_id in ids:
        assert await admin.client_kill_filter(_id=client_id) == 1
    return ids


def seen_any(seen: list[int], *, at_least: int) -> Callable[[ConsumerStats], bool]:
    """A wait_until predicate: some id at least `at_least` was handled."""
    return lambda _: any(n >= at_least for n in seen)


def seen_all(seen: list[int], wanted: Iterable[int]) -> Callable[[ConsumerStats], bool]:
    """A wait_until predicate: every id in `wanted` was handled."""
    ids = set(wanted)
    return lambda _: ids <= set(seen)


def named_client(redis_url: str, client_name: str, style: str, **options: Any) -> Redis:
    """A client whose connections carry `client_name`, so CLIENT LIST can tell them apart.

    ``from_url`` clients and clients built with ``Redis(...)`` may differ in redis-py's
    retry policy; the broker must reconnect through its own loop with either.
    """
    if style == "from_url":
        return Redis.from_url(redis_url, client_name=client_name, **options)
    url = parse_url(redis_url)
    return Redis(
        host=url.get("host", "localhost"),
        port=url.get("port", 6379),
        unix_socket_path=url.get("path"),
        db=url.get("db", 0),
        username=url.get("username"),
        password=url.get("password"),
        client_name=client_name,
        **options,
    )


@pytest.mark.parametrize("style", ["from_url", "constructor"])
async def test_the_consumer_resubscribes_after_its_connection_is_killed(
    redis_url: str,
    redis_client: Redis,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
    style: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="mediator.brokers.redis")
    client_name = f"{key_prefix}-consumer"
    consumer_client = named_client(redis_url, client_name, style)
    publisher = EventEmitter(
        message_broker=RedisMessageBroker(client=redis_client, channel_prefix=key_prefix)
    )
    seen: list[int] = []

    async def record(event: OrderPlaced) -> None:
        seen.append(event.order_id)

    events = EventMap()
    events.bind(OrderPlaced, record)
    consumer = EventConsumer(
        broker=RedisMessageBroker(client=consumer_client, channel_prefix=key_prefix),
        event_map=events,
    )
    await consumer.subscribe(f"{key_prefix}:notification_event:*")
    runner: asyncio.Task[None] | None = None
    try:
        await consumer.start()  # live when it returns; run() keeps it going
        runner = asyncio.create_task(consumer.run())
        await publisher.emit_all([OrderPlaced(order_id=n) for n in range(5)])
        await wait_until(consumer, seen_all(seen, range(5)), timeout=WAIT)

        killed_ids: list[str] = []
        for round_ in range(1, 3):  # two faults: the second reconnect starts afresh
            killed = await kill_subscriptions(redis_client, client_name)
            assert len(killed) == 1, "exactly the consumer's one subscription connection"
            killed_ids += killed

            # At-most-once: what is published while it reconnects may be lost, so probe
            # until one probe gets through; each wait is bounded.
            first_probe = round_ * 1000
            for probe in range(first_probe, first_probe + 60):
                await publisher.emit(OrderPlaced(order_id=probe))
                try:
                    await wait_until(consumer, seen_any(seen, at_least=first_probe), 0.5)
                except TimeoutError:
                    continue
                break
            else:
                pytest.fail("no probe was handled after the subscription was killed")

            # Subscribed again: everything published now is handled.
            after = range(first_probe + 100, first_probe + 110)
            await publisher.emit_all([OrderPlaced(order_id=n) for n in after])
            await wait_until(consumer, seen_all(seen, after), timeout=WAIT)

            assert not runner.done(), "the consumer kept running"
            assert consumer.running

        # Re-subscribed on a new connection of the same client.
        resubscribed = [
            entry["id"]
            for entry in await redis_client.client_list()
            if entry["name"] == client_name and int(entry.get("psub", 0)) > 0
        ]
        assert len(resubscribed) == 1
        assert resubscribed[0] not in killed_ids
        assert consumer.stats.received == len(seen)  # every delivery counted and handled
        assert consumer.stats.handled == len(seen)
        assert consumer.stats.dead_lettered == 0
        # Every reconnect went through the broker's own loop, whatever redis-py's
        # retry policy: each loss is logged with the pattern, and so is each return.
        pattern = f"{key_prefix}:notification_event:*"
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.name == "mediator.brokers.redis" and r.levelno == logging.WARNING
        ]
        lost = [line for line in warnings if line.startswith("lost") and pattern in line]
        back = [line for line in warnings if "is back" in line and pattern in line]
        assert len(lost) >= 2, warnings
        assert len(back) >= 2, warnings
    finally:
        await consumer.stop()
        if runner is not None:
            await asyncio.wait_for(runner, timeout=WAIT)  # run() returns cleanly
        await consumer_client.aclose()


@pytest.mark.parametrize("batch", [1, 3], ids=["one", "batch"])
async def test_a_publish_right_after_the_server_killed_the_pooled_connections_is_delivered_once(
    redis_url: str, redis_client: Redis, key_prefix: str, batch: int
) -> None:
    """A connection the server closed before the publish began never carries it:
    the command did not reach the server, so a new connection takes it, with
    redis-py's own retries turned off (they are not what makes this hold). Each
    message arrives exactly once, as at-most-once requires."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    client_name = f"{key_prefix}-publisher"
    publisher_client = Redis.from_url(
        redis_url, client_name=client_name, retry=Retry(NoBackoff(), 0)
    )
    emitter = EventEmitter(
        message_broker=RedisPubSubMessageBroker(client=publisher_client, channel_prefix=key_prefix)
    )
    listener = redis_client.pubsub()
    await listener.psubscribe(f"{key_prefix}:notification_event:*")
    try:
        await emitter.emit(OrderPlaced(order_id=0))  # the pool now holds an idle connection
        for round_ in range(1, 4):
            ids = [
                entry["id"]
                for entry in await redis_client.client_list()
                if entry["name"] == client_name
            ]
            assert ids, "the publisher's pooled connection is open"
            for client_id in ids:
                assert await redis_client.client_kill_filter(_id=client_id) == 1
            await emitter.emit_all([OrderPlaced(order_id=round_ * 10 + n) for n in range(batch)])
        wanted = [0] + [round_ * 10 + n for round_ in range(1, 4) for n in range(batch)]
        received: list[int] = []
        async with asyncio.timeout(WAIT):
            while len(received) < len(wanted):
                message = await listener.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:
                    received.append(orjson.loads(message["data"])["payload"]["order_id"])
        assert received == wanted
        assert await listener.get_message(ignore_subscribe_messages=True, timeout=0.2) is None
    finally:
        await listener.aclose()
        await publisher_client.aclose()


async def test_stopping_while_resubscribing_closes_the_new_subscription_connection(
    redis_url: str,
    redis_client: Redis,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client_name = f"{key_prefix}-consumer"
    pubsubs: list[PubSub] = []
    held = asyncio.Event()

    class HoldingConnection(Connection):
        """Sends a re-subscription's PSUBSCRIBE, then waits for ever (a slow server)."""

        async def send_packed_command(
            self, command: bytes | str | Iterable[bytes], check_health: bool = True
        ) -> None:
            data = as_bytes(command)
            await super().send_packed_command(data, check_health)
            resubscribing = any(pubsub.connection is self for pubsub in pubsubs[1:])
            if resubscribing and b"PSUBSCRIBE" in data.upper():
                held.set()
                await asyncio.Event().wait()

    client = Redis.from_url(redis_url, client_name=client_name, connection_class=HoldingConnection)
    make_pubsub = client.pubsub

    def recording_pubsub(**options: Any) -> PubSub:
        pubsub = make_pubsub(**options)
        pubsubs.append(pubsub)
        return pubsub

    monkeypatch.setattr(client, "pubsub", recording_pubsub)
    try:
        consumer = EventConsumer(
            broker=RedisMessageBroker(client=client, channel_prefix=key_prefix),
            event_map=EventMap(),
        )
        await consumer.subscribe(f"{key_prefix}:notification_event:*")
        await consumer.start()
        assert len(await kill_subscriptions(redis_client, client_name)) == 1
        await asyncio.wait_for(held.wait(), timeout=WAIT)  # re-subscribing, not confirmed
        await asyncio.wait_for(consumer.stop(), timeout=WAIT)
        open_ones = [pubsub for pubsub in pubsubs if pubsub.connection is not None]
        assert not open_ones, "stop() left a subscription connection open"
    finally:
        await client.aclose()


async def test_closing_a_subscription_ends_an_iteration_in_progress(
    redis_client: Redis, key_prefix: str
) -> None:
    broker = RedisMessageBroker(client=redis_client, channel_prefix=key_prefix)
    subscription = await broker.subscribe(f"{key_prefix}:*")
    received: list[bytes] = []
    first = asyncio.Event()

    async def read() -> None:
        async for delivery in subscription:
            received.append(delivery.data)
            first.set()

    reader = asyncio.create_task(read())
    try:
        await redis_client.publish(f"{key_prefix}:x", b"one")
        await asyncio.wait_for(first.wait(), timeout=WAIT)
        await broker.stop()
        await asyncio.wait_for(reader, timeout=WAIT)  # the iteration ends: no error
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await subscription.close()
    assert received == [b"one"]


# -- 5. dead letters -------------------------------------------------------------


async def test_undecodable_messages_land_in_the_capped_dead_letter_stream(
    redis_client: Redis, key_prefix: str
) -> None:
    broker = RedisPubSubMessageBroker(
        client=redis_client, channel_prefix=key_prefix, dead_letter_limit=3
    )
    events = EventMap()
    events.bind(OrderPlaced, Inbox())
    channel = f"{key_prefix}:notification_event:OrderPlaced"
    bad = [
        b"{nope",
        b"[1, 2, 3]",
        orjson.dumps({"message_id": str(uuid.uuid4())}),
        orjson.dumps(
            {
                "message_type": "notification_event",
                "message_name": "NobodyKnowsMe",
                "message_id": str(uuid.uuid4()),
                "payload": {},
            }
        ),
        '{"café": ☕'.encode(),
    ]
    codec = MessageCodec(events.event_class)
    expected: list[tuple[str, str, str, bytes]] = []
    for data in bad:
        with pytest.raises(MessageDecodeError) as failure:
            codec.decode(data)
        expected.append((channel, failure.value.reason.value, failure.value.detail, data))
    # One at a time, so that the dead letters are written in the order published.
    consumer = EventConsumer(broker=broker, event_map=events, max_concurrency=1)
    await consumer.subscribe(channel)
    async with consumer:
        for data in bad:
            await redis_client.publish(channel, data)
        await wait_until(consumer, lambda s: s.dead_lettered >= len(bad), timeout=WAIT)

    # The same key spelling and record shape as the Streams broker.
    assert broker.dead_letter_key == f"{key_prefix}:dead-letter"
    assert await redis_client.xlen(broker.dead_letter_key) == 3  # the newest three
    records = await broker.dead_letters()
    assert [(r.channel, r.reason, r.description, r.data) for r in records] == expected[2:], (
        "the three newest, oldest first"
    )
    assert [r.reason for r in records] == ["missing_key", "unknown_name", "not_json"]
    assert all(r.description and r.delivery_count == 1 for r in records)
    assert [r.sha256 for r in records] == [hashlib.sha256(d).hexdigest() for d in bad[2:]]
    assert consumer.stats.dead_lettered == 5


async def test_an_oversize_message_is_dead_lettered_as_a_bounded_prefix_with_size_and_hash(
    redis_client: Redis, key_prefix: str
) -> None:
    broker = RedisPubSubMessageBroker(client=redis_client, channel_prefix=key_prefix)
    channel = f"{key_prefix}:notification_event:OrderPlaced"
    body = b"x" * (2 * 1024 * 1024)  # over the consumer's 1 MiB limit
    consumer = EventConsumer(broker=broker, event_map=EventMap())
    await consumer.subscribe(channel)
    async with consumer:
        await redis_client.publish(channel, body)
        await wait_until(consumer, lambda s: s.dead_lettered >= 1, timeout=WAIT)
    [(_, fields)] = await redis_client.xrange(broker.dead_letter_key)
    assert len(fields[b"data"]) == 64 * 1024  # what Redis holds: the first 64 KiB
    [record] = await broker.dead_letters()
    assert record.reason == "too_large"
    assert (record.data, record.size) == (body[: 64 * 1024], len(body))
    assert record.sha256 == hashlib.sha256(body).hexdigest()
    assert record.truncated


async def test_log_lines_quote_at_most_a_kibibyte_of_a_message(
    redis_client: Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mediator.brokers.redis")
    broker = RedisPubSubMessageBroker(client=redis_client, channel_prefix=key_prefix)
    subscription = await broker.subscribe(f"{key_prefix}:*")
    channel = f"{key_prefix}:" + "n" * 100_000  # a hostile channel name
    try:
        await redis_client.publish(channel, b"{}")
        delivery = await asyncio.wait_for(anext(aiter(subscription)), timeout=WAIT)
        assert delivery.channel == channel
        await delivery.release()  # Pub/Sub drops it, and says so
    finally:
        await broker.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "mediator.brokers.redis"]
    assert any("cannot redeliver" in line for line in lines)
    assert all(len(line) < 2048 for line in lines), [len(line) for line in lines]


async def test_a_dead_letter_limit_below_one_is_refused(
    redis_client: Redis, key_prefix: str
) -> None:
    for broker_class in (RedisPubSubMessageBroker, RedisStreamMessageBroker):
        with pytest.raises(ValueError, match=r"dead_letter_limit.*at least 1"):
            broker_class(client=redis_client, channel_prefix=key_prefix, dead_letter_limit=0)


# -- 6. from_url and start -------------------------------------------------------


def test_diators_name_is_the_pub_sub_broker() -> None:
    assert RedisMessageBroker is RedisPubSubMessageBroker


async def test_from_url_builds_a_working_broker(redis_url: str, key_prefix: str) -> None:
    broker = RedisPubSubMessageBroker.from_url(
        redis_url, key_prefix, channel_layout="diator", dead_letter_limit=7
    )
    assert isinstance(broker, RedisPubSubMessageBroker)
    assert isinstance(broker.client, Redis)
    assert (broker.channel_prefix, broker.channel_layout) == (key_prefix, "diator")
    assert broker.dead_letter_limit == 7
    assert broker.owns_client
    async with broker:
        subscription = await broker.subscribe(f"{key_prefix}:notification_event:*")
        event = OrderPlaced(order_id=11)
        await EventEmitter(message_broker=broker).emit(event)
        delivery = await asyncio.wait_for(anext(aiter(subscription)), timeout=WAIT)
        assert delivery.channel == f"{key_prefix}:notification_event:{event.event_id}"
        assert orjson.loads(delivery.data)["payload"]["order_id"] == 11
        await delivery.dead_letter("handler_failed", "for the test")
        [record] = await broker.dead_letters()
        assert (record.reason, record.description) == ("handler_failed", "for the test")
        assert record.data == delivery.data


def test_from_url_refuses_an_unknown_channel_layout(redis_url: str) -> None:
    with pytest.raises(ValueError, match="channel_layout"):
        RedisPubSubMessageBroker.from_url(redis_url, "x", channel_layout="topic")


BROKERS = [RedisPubSubMessageBroker, RedisStreamMessageBroker]


@pytest.mark.parametrize("broker_class", BROKERS)
async def test_start_and_subscribe_say_when_redis_does_not_answer(
    closed_port: int, broker_class: type[RedisPubSubMessageBroker | RedisStreamMessageBroker]
) -> None:
    address = f"127.0.0.1:{closed_port}"
    broker = broker_class.from_url(f"redis://{address}", "unreachable")
    try:
        with pytest.raises(BrokerUnavailableError, match=address) as started:
            await broker.start()
        assert isinstance(started.value.__cause__, redis.exceptions.ConnectionError)
        with pytest.raises(BrokerUnavailableError, match=address):
            async with broker:
                pass
        with pytest.raises(BrokerUnavailableError, match=r"'unreachable:\*'.*" + address):
            await broker.subscribe("unreachable:*")
        consumer = EventConsumer(broker=broker, event_map=EventMap())
        await consumer.subscribe("unreachable:*")
        with pytest.raises(BrokerUnavailableError, match=address):
            async with consumer:
                pass
        assert not consumer.running
    finally:
        await broker.stop()


@pytest.mark.parametrize("broker_class", BROKERS)
async def test_a_refused_credential_is_a_credential_error(
    redis_url: str, broker_class: type[RedisPubSubMessageBroker | RedisStreamMessageBroker]
) -> None:
    if "@" in redis_url:
        pytest.skip("REDIS_URL carries a credential already")
    url = redis_url.replace("redis://", "redis://mtk-nobody:wrong@", 1)
    broker = broker_class.from_url(url, "nobody")
    try:
        with pytest.raises(CredentialError, match="Redis") as refused:
            await broker.start()
        assert isinstance(refused.value.__cause__, redis.exceptions.AuthenticationError)
        with pytest.raises(CredentialError):
            await broker.subscribe("nobody:*")
    finally:
        await broker.stop()


async def test_the_watchdog_never_connects_a_dropped_connection_again(
    redis_client: Redis, key_prefix: str
) -> None:
    # The watchdog PINGs a connection that carried nothing for silence_timeout.
    # redis-py connects a dropped connection again to send a command: the
    # watchdog's PING opened a new connection, unsubscribed, behind the
    # reconnect loop (and after close(), had it raced with it).
    silence = 0.1
    broker = RedisPubSubMessageBroker(redis_client, key_prefix, silence_timeout=silence)
    subscription = await broker.subscribe(f"{key_prefix}:*")
    try:
        connection = subscription._connection
        assert connection is not None
        watchdog = subscription._watchdog
        assert watchdog is not None
        connects: list[object] = []
        connect = connection.connect_check_health

        async def recording_connect(*args: Any, **kwargs: Any) -> None:
            connects.append(args)
            await connect(*args, **kwargs)

        connection.connect_check_health = recording_connect  # type: ignore[method-assign]
        # Dropped while nobody reads it: only the watchdog looks at it.
        await connection.disconnect()
        await asyncio.wait_for(watchdog, WAIT)
        assert connects == [], "the watchdog's PING connected it again"
        assert not connection.is_connected
    finally:
        await broker.stop()
