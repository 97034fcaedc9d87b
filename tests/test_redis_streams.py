"""Redis Streams specifics: handover of pending entries, poison messages,
lost connections, server errors, deleted streams, what a subscription leaves
behind, trimming and where a new group starts."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import parse_url

from brokers.redis import RedisStreamDelivery, RedisStreamMessageBroker
from brokers.redis._streams_acks import ACK_DELAY
from brokers.redis._streams_claims import CLAIM_CALLS
from mediator import EventConsumer, EventEmitter, EventMap, NotificationEvent
from mediator.testing import wait_until
from tests.conftest import _start_private_server, _stop, _unavailable
from tests.tcp_proxy import SilencingProxy

WAIT = 10.0  # seconds: the bound of every wait for something that should happen now


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class OrderPaid(NotificationEvent):
    order_id: int


@pytest.fixture
async def client(redis_url: str, key_prefix: str) -> AsyncIterator[Redis]:
    # Named, so a test can find and kill exactly its own connections.
    redis = Redis.from_url(redis_url, client_name=key_prefix)
    yield redis
    await redis.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def stream_broker(client: Redis, prefix: str, **options: object) -> RedisStreamMessageBroker:
    settings: dict[str, object] = {
        "discovery_interval": 0.05,
        "claim_interval": 0.1,
        "claim_idle": 0.3,
        "block_ms": 50,
    }
    settings.update(options)
    return RedisStreamMessageBroker(client, prefix, **settings)  # type: ignore[arg-type]


async def publish(broker: RedisStreamMessageBroker, *order_ids: int) -> None:
    await EventEmitter(message_broker=broker).emit_all([OrderPlaced(order_id=n) for n in order_ids])


class LogWatch(logging.Handler):
    """Records what a logger says, and lets a test wait for a line."""

    def __init__(self, logger: str = "mediator.brokers.redis") -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._logger = logging.getLogger(logger)
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._changed.set()

    def __enter__(self) -> LogWatch:
        self._level = self._logger.level
        self._logger.setLevel(logging.DEBUG)
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)

    def lines(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]

    async def until(
        self, wanted: Callable[[str], bool], level: int = logging.DEBUG, timeout: float = WAIT
    ) -> str:
        """The first line at `level` or above for which `wanted` holds, waiting for it."""
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines(level):
                    if wanted(line):
                        return line
                self._changed.clear()
                await self._changed.wait()


class Recorder:
    """An OrderPlaced and OrderPaid handler that keeps the order ids it saw."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    async def __call__(self, event: OrderPlaced | OrderPaid) -> None:
        self.seen.append(event.order_id)

    def events(self) -> EventMap:
        events = EventMap()
        events.bind(OrderPlaced, self)
        events.bind(OrderPaid, self)
        return events


async def until_redis(condition: Callable[[], Awaitable[bool]]) -> None:
    """Wait until `condition`, a question to Redis, holds. Redis sends no
    notification for these states (a client blocked, an entry acknowledged),
    so this asks again every 10 ms, for at most WAIT seconds."""
    async with asyncio.timeout(WAIT):
        while not await condition():  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0.01)


def blocked_in_xreadgroup(admin: Redis, client_name: str) -> Callable[[], Awaitable[bool]]:
    """Whether a connection named `client_name` waits in a blocking XREADGROUP."""

    async def condition() -> bool:
        return any(
            entry.get("name") == client_name
            and entry.get("cmd") == "xreadgroup"
            and "b" in entry.get("flags", "")
            for entry in await admin.client_list()
        )

    return condition


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[str]:
    """The URL of a Redis server of the test's own, for faults that change the
    server itself (a replica, a memory limit, a script that runs for ever)."""
    binary = shutil.which("redis-server")
    if binary is None:
        _unavailable("no redis-server binary on PATH for a private server")
    started = _start_private_server(binary, tmp_path)
    if isinstance(started, str):
        _unavailable(f"{binary} did not start: {started}")
    proc, url = started
    try:
        yield url
    finally:
        _stop(proc)


async def test_a_stopped_members_pending_entries_are_claimed_by_another(
    client: Redis, key_prefix: str
) -> None:
    started_by_first: list[int] = []
    finished_by_first: list[int] = []
    handled_by_second: list[int] = []
    two_stuck = asyncio.Event()

    async def first_handler(event: OrderPlaced) -> None:
        started_by_first.append(event.order_id)
        if event.order_id >= 5:
            if len([n for n in started_by_first if n >= 5]) == 2:
                two_stuck.set()
            await asyncio.Event().wait()  # never finishes: this member "crashes"
        finished_by_first.append(event.order_id)

    async def second_handler(event: OrderPlaced) -> None:
        handled_by_second.append(event.order_id)

    first_events, second_events = EventMap(), EventMap()
    first_events.bind(OrderPlaced, first_handler)
    second_events.bind(OrderPlaced, second_handler)
    pattern = f"{key_prefix}:notification_event:*"

    first = EventConsumer(
        broker=stream_broker(client, key_prefix),
        event_map=first_events,
        max_concurrency=2,
        drain_timeout=0.05,
    )
    await first.subscribe(pattern, group="billing")
    producer = stream_broker(client, key_prefix)
    async with first:
        await publish(producer, *range(10))
        await asyncio.wait_for(two_stuck.wait(), timeout=10)
    # Stopped with two entries in flight and more read but never handled.
    assert first.stats.released == 2

    second = EventConsumer(broker=stream_broker(client, key_prefix), event_map=second_events)
    await second.subscribe(pattern, group="billing")
    async with second:
        await wait_until(second, lambda s: s.handled >= 10 - len(finished_by_first), timeout=10)

    assert sorted(finished_by_first + handled_by_second) == list(range(10))  # nothing lost
    duplicates = set(started_by_first) & set(handled_by_second)
    # At-least-once: only what the first member started and never acknowledged runs twice.
    assert duplicates == set(started_by_first) - set(finished_by_first)
    assert len(duplicates) == 2


async def test_a_poison_message_ends_in_the_dead_letter_stream(
    client: Redis, key_prefix: str
) -> None:
    """Members that die mid-message never settle it; the consumer whose turn
    comes after the limit dead-letters it unhandled (the one delivery limit
    is the consumer's `max_deliveries`)."""
    broker = stream_broker(client, key_prefix, claim_idle=0.05)
    pattern = f"{key_prefix}:*"
    counts: list[int] = []
    for member in range(3):
        # Each round is a member that stops mid-message: it never settles it.
        subscription = await broker.subscribe(pattern, group="workers")
        if member == 0:
            await publish(broker, 1)
        delivery: RedisStreamDelivery = await asyncio.wait_for(
            anext(aiter(subscription)), timeout=WAIT
        )
        counts.append(delivery.delivery_count)
        await subscription.close()
    assert counts == [1, 2, 3]

    handled: list[int] = []
    events = EventMap()

    @events.bind(OrderPlaced)
    async def record(event: OrderPlaced) -> None:
        handled.append(event.order_id)

    consumer = EventConsumer(broker=broker, event_map=events, max_deliveries=3)
    await consumer.subscribe(pattern, group="workers")
    async with consumer:
        await wait_until(consumer, lambda s: s.dead_lettered >= 1, timeout=WAIT)
    assert handled == []
    assert consumer.stats.dead_lettered_by_reason == {"too_many_deliveries": 1}
    [dead] = await broker.dead_letters()
    assert dead.reason == "too_many_deliveries"
    assert "delivered 4 times without being settled" in dead.description
    assert dead.channel == f"{key_prefix}:notification_event:OrderPlaced"
    assert dead.delivery_count == 4
    assert b'"order_id":1' in dead.data
    pending = await client.xpending(dead.channel, "workers")
    assert pending["pending"] == 0  # acknowledged once dead-lettered


def test_the_brokers_own_delivery_limit_is_gone_and_says_where_it_went(client: Redis) -> None:
    with pytest.warns(DeprecationWarning, match=r"EventConsumer\(max_deliveries=\.\.\.\)"):
        RedisStreamMessageBroker(client, "mtk-unused", max_deliveries=3)


async def test_the_consumer_resumes_after_its_connection_is_killed(
    client: Redis, key_prefix: str, redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    handled: list[int] = []
    events = EventMap()

    @events.bind(OrderPlaced)
    async def record(event: OrderPlaced) -> None:
        handled.append(event.order_id)

    broker = stream_broker(client, key_prefix)
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe(f"{key_prefix}:notification_event:*", group="g")
    with caplog.at_level(logging.WARNING, logger="mediator.brokers.redis"):
        async with consumer:
            await publish(broker, 1)
            await wait_until(consumer, lambda s: s.handled >= 1)
            killed = 0
            for entry in await redis_client.client_list():
                if entry.get("name") == key_prefix and entry.get("cmd") == "xreadgroup":
                    await redis_client.client_kill_filter(_id=entry["id"])
                    killed += 1
            # Published while (possibly) disconnected: at-least-once keeps them.
            await publish(broker, 2, 3, 4)
            await wait_until(consumer, lambda s: s.handled >= 4, timeout=10)
    assert killed >= 1
    assert sorted(handled) == [1, 2, 3, 4]
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("reconnecting" in line for line in lines), lines
    assert any("is back" in line for line in lines), lines


async def test_maxlen_trims_streams_approximately(client: Redis, key_prefix: str) -> None:
    broker = stream_broker(client, key_prefix, maxlen=10)
    for start in range(0, 1000, 100):
        await publish(broker, *range(start, start + 100))
    length = await client.xlen(f"{key_prefix}:notification_event:OrderPlaced")
    assert 10 <= length < 1000


@pytest.mark.parametrize(("start_from", "expected"), [("new", [2]), ("beginning", [1, 2])])
async def test_a_new_group_starts_where_it_is_told(
    client: Redis, key_prefix: str, start_from: str, expected: list[int]
) -> None:
    broker = stream_broker(client, key_prefix, start_from=start_from)
    await publish(broker, 1)  # the stream exists before the group
    handled: list[int] = []
    events = EventMap()

    @events.bind(OrderPlaced)
    async def record(event: OrderPlaced) -> None:
        handled.append(event.order_id)

    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe(f"{key_prefix}:notification_event:*", group=f"from-{start_from}")
    async with consumer:
        await publish(broker, 2)
        await wait_until(consumer, lambda s: s.handled >= len(expected))
    assert handled == expected


async def test_an_ungrouped_subscription_removes_its_private_group(
    client: Redis, key_prefix: str
) -> None:
    broker = stream_broker(client, key_prefix)
    await publish(broker, 1)
    subscription = await broker.subscribe(f"{key_prefix}:*")
    stream = f"{key_prefix}:notification_event:OrderPlaced"
    assert len(await client.xinfo_groups(stream)) == 1
    await subscription.close()
    assert await client.xinfo_groups(stream) == []


async def test_publishing_without_redis_raises_a_publish_error() -> None:
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from mediator import PublishError

    dead = Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    broker = RedisStreamMessageBroker(dead, "nowhere")
    with pytest.raises(PublishError, match="could not append OrderPlaced"):
        await publish(broker, 1)
    await dead.aclose()


async def test_an_entry_without_our_field_is_dead_lettered_and_reading_goes_on(
    client: Redis, key_prefix: str
) -> None:
    handled: list[int] = []
    events = EventMap()

    @events.bind(OrderPlaced)
    async def record(event: OrderPlaced) -> None:
        handled.append(event.order_id)

    broker = stream_broker(client, key_prefix)
    stream = f"{key_prefix}:notification_event:OrderPlaced"
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe(f"{key_prefix}:notification_event:*")
    async with consumer:
        await client.xadd(stream, {"something": "else"})  # another producer's entry
        await client.sadd(broker.registry_key, stream)
        await publish(broker, 7)
        await wait_until(consumer, lambda s: s.handled >= 1 and s.dead_lettered >= 1)
    assert handled == [7]
    assert consumer.stats.dead_lettered_by_reason == {"not_json": 1}


async def test_a_lost_registry_is_rebuilt_by_the_next_publish(
    client: Redis, key_prefix: str
) -> None:
    broker = stream_broker(client, key_prefix)
    await publish(broker, 1)
    await client.delete(broker.registry_key)  # e.g. a restart without persistence
    await publish(broker, 2)
    assert await client.smembers(broker.registry_key) == {
        f"{key_prefix}:notification_event:OrderPlaced".encode()
    }


async def test_acknowledgements_go_out_while_the_reader_waits(
    client: Redis, key_prefix: str
) -> None:
    # Acknowledgements are batched, and sent with the next read; a reader
    # blocked for a minute must not hold them back that long.
    broker = stream_broker(client, key_prefix, block_ms=60_000)
    consumer = EventConsumer(broker=broker, event_map=Recorder().events())
    await consumer.subscribe(f"{key_prefix}:notification_event:*", group="billing")
    stream = f"{key_prefix}:notification_event:OrderPlaced"
    async with consumer:
        await publish(broker, 1, 2, 3)
        await wait_until(consumer, lambda s: s.handled >= 3)

        async def all_acknowledged() -> bool:
            return (await client.xpending(stream, "billing"))["pending"] == 0

        await until_redis(all_acknowledged)


def test_a_client_that_decodes_to_str_is_refused(redis_url: str) -> None:
    from brokers.redis import RedisMessageBroker

    text_client = Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisStreamMessageBroker(text_client)
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisMessageBroker(text_client)


async def test_a_broker_from_url_closes_its_own_client(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = RedisStreamMessageBroker.from_url(redis_url, key_prefix)
    closed: list[bool] = []
    close = broker.client.aclose

    async def recording_close() -> None:
        closed.append(True)
        await close()

    monkeypatch.setattr(broker.client, "aclose", recording_close)
    async with broker:
        await publish(broker, 1)
        assert await broker.client.xlen(f"{key_prefix}:notification_event:OrderPlaced") == 1
        await broker.client.delete(
            f"{key_prefix}:notification_event:OrderPlaced", broker.registry_key
        )
    assert closed == [True]


# -- deleted streams and server errors (issue 9, fault 5) --------------------------


@pytest.mark.parametrize("deleted", ["the stream", "every key of the prefix"])
async def test_a_stream_deleted_under_a_waiting_consumer_is_read_again_from_its_start(
    client: Redis, redis_client: Redis, key_prefix: str, deleted: str
) -> None:
    recorder = Recorder()
    # A long block, so that the DEL lands while XREADGROUP waits (UNBLOCKED).
    broker = stream_broker(client, key_prefix, block_ms=60_000)
    consumer = EventConsumer(broker=broker, event_map=recorder.events())
    await consumer.subscribe(f"{key_prefix}:notification_event:*", group="billing")
    stream = f"{key_prefix}:notification_event:OrderPlaced"
    with LogWatch() as log:
        async with consumer:
            await publish(broker, 1)
            await wait_until(consumer, lambda s: s.handled >= 1)
            await until_redis(blocked_in_xreadgroup(redis_client, key_prefix))
            if deleted == "the stream":
                await redis_client.delete(stream)
            else:  # what FLUSHALL does to this test's keys
                await redis_client.delete(stream, broker.registry_key)
            await log.until(lambda line: "UNBLOCKED" in line, logging.WARNING)
            # The stream comes back with the next publish and is read from its start.
            await publish(broker, 2, 3)
            await wait_until(consumer, lambda s: s.handled >= 3)
            assert consumer.running
    assert recorder.seen == [1, 2, 3]
    assert not [line for line in log.lines() if "fail-fast" in line]


@pytest.mark.parametrize("fault", ["READONLY", "OOM", "BUSY", "WRONGTYPE"])
async def test_a_server_error_is_waited_out_and_reading_goes_on(
    private_redis: str, fault: str
) -> None:
    prefix = "mtk-fault"
    client = Redis.from_url(private_redis, client_name=prefix)
    admin = Redis.from_url(private_redis)
    recorder = Recorder()
    broker = stream_broker(client, prefix)
    stream = f"{prefix}:notification_event:OrderPlaced"
    consumer = EventConsumer(broker=broker, event_map=recorder.events())
    await consumer.subscribe(f"{prefix}:notification_event:*", group="billing")
    try:
        with LogWatch() as log:
            async with consumer:
                if fault != "BUSY":
                    await publish(broker, 1)
                    await wait_until(consumer, lambda s: s.handled >= 1)
                if fault == "READONLY":  # a failover turned the server into a replica
                    await admin.replicaof("127.0.0.1", "1")
                elif fault == "OOM":  # full, and the stream is deleted: no group can be made
                    await admin.config_set("maxmemory", "1")
                    await admin.delete(stream)
                elif fault == "BUSY":
                    # A script that runs for ever. A blocked XREADGROUP waits it
                    # out on the server; a reader with no stream yet asks Redis
                    # for its registry meanwhile, and gets BUSY.
                    await admin.config_set("busy-reply-threshold", "10")
                    script = asyncio.create_task(admin.eval("while true do end", 0))
                else:  # another program took the key for something else
                    await admin.delete(stream)
                    await admin.set(stream, "not a stream")
                await log.until(lambda line: fault in line, logging.WARNING)
                if fault == "READONLY":
                    await admin.replicaof("NO", "ONE")
                elif fault == "OOM":
                    await admin.config_set("maxmemory", "0")
                elif fault == "BUSY":
                    async with Redis.from_url(private_redis) as killer:
                        await killer.script_kill()
                    with pytest.raises(Exception, match="killed"):
                        await script
                else:
                    await admin.delete(stream)
                await publish(broker, 2)
                expected = [2] if fault == "BUSY" else [1, 2]
                await wait_until(consumer, lambda s: s.handled >= len(expected))
                assert consumer.running
        assert recorder.seen == expected
    finally:
        await client.aclose()
        await admin.aclose()


async def test_reading_goes_on_where_redis_refuses_scripts(private_redis: str) -> None:
    # Batches are read through a script while entries wait; a user whose ACL
    # forbids scripts reads them with plain XREADGROUP instead.
    async with Redis.from_url(private_redis) as admin:
        await admin.acl_setuser(
            "noscripts",
            enabled=True,
            passwords=["+secret"],
            keys=["*"],
            channels=["*"],
            commands=["+@all", "-eval", "-evalsha", "-script", "-fcall"],
        )
    url = private_redis.replace("redis://", "redis://noscripts:secret@", 1)
    client = Redis.from_url(url)
    recorder = Recorder()
    broker = stream_broker(client, "mtk-acl")
    consumer = EventConsumer(broker=broker, event_map=recorder.events())
    await consumer.subscribe("mtk-acl:notification_event:*", group="billing")
    try:
        async with consumer:
            for batch in range(3):
                await publish(broker, *range(batch * 50, batch * 50 + 50))
                await wait_until(consumer, lambda s, n=batch: s.handled >= 50 * (n + 1))
            assert consumer.running
        assert sorted(recorder.seen) == list(range(150))
        assert (await client.xpending("mtk-acl:notification_event:OrderPlaced", "billing"))[
            "pending"
        ] == 0
        async with Redis.from_url(private_redis) as admin:
            refused = {_text(entry["object"]) for entry in await admin.acl_log()}
        assert refused & {"eval", "evalsha"}, "the script was tried, and refused"
    finally:
        await client.aclose()


async def test_a_consumer_whose_pattern_matches_no_stream_stops_at_once(
    client: Redis, key_prefix: str
) -> None:
    # The drain timeout is long: stopping must not wait for it, whatever the
    # reader was doing (a registry read, a wait) when it was asked to stop.
    for attempt in range(10):
        broker = stream_broker(client, key_prefix, discovery_interval=0.005)
        consumer = EventConsumer(broker=broker, event_map=EventMap(), drain_timeout=30)
        await consumer.subscribe(f"{key_prefix}:nothing-here:*", group="g")
        await consumer.start()
        await asyncio.sleep(0.003 * attempt)  # stop at different points of the reader's loop
        async with asyncio.timeout(5):
            await consumer.stop()


# -- what a subscription leaves behind (issue 9, fault 10) ---------------------------


async def test_a_closed_group_subscription_leaves_no_member_behind(
    client: Redis, key_prefix: str
) -> None:
    recorder = Recorder()
    broker = stream_broker(client, key_prefix)
    stream = f"{key_prefix}:notification_event:OrderPlaced"
    for run in range(3):  # three process starts
        consumer = EventConsumer(broker=broker, event_map=recorder.events())
        await consumer.subscribe(f"{key_prefix}:notification_event:*", group="billing")
        async with consumer:
            await publish(broker, run)
            await wait_until(consumer, lambda s: s.handled >= 1)
    assert recorder.seen == [0, 1, 2]
    [group] = await client.xinfo_groups(stream)
    assert (group["name"], group["pending"], group["consumers"]) == (b"billing", 0, 0)


async def test_a_member_with_pending_entries_is_left_for_another_to_claim(
    client: Redis, key_prefix: str
) -> None:
    stuck = asyncio.Event()

    async def never_finishes(event: OrderPlaced) -> None:
        stuck.set()
        await asyncio.Event().wait()

    events = EventMap()
    events.bind(OrderPlaced, never_finishes)
    broker = stream_broker(client, key_prefix)
    consumer = EventConsumer(broker=broker, event_map=events, drain_timeout=0.05)
    await consumer.subscribe(f"{key_prefix}:notification_event:*", group="billing")
    with LogWatch() as log:
        async with consumer:
            await publish(broker, 1)
            await asyncio.wait_for(stuck.wait(), WAIT)
    stream = f"{key_prefix}:notification_event:OrderPlaced"
    [member] = await client.xinfo_consumers(stream, "billing")
    assert member["pending"] == 1  # deleting it would drop the entry unhandled
    assert any("pending" in line and "claim" in line for line in log.lines(logging.INFO))


async def test_a_private_group_is_removed_from_every_stream_it_read(
    client: Redis, key_prefix: str
) -> None:
    recorder = Recorder()
    broker = stream_broker(client, key_prefix)
    await publish(broker, 1)  # a stream there before the subscription ...
    consumer = EventConsumer(broker=broker, event_map=recorder.events())
    await consumer.subscribe(f"{key_prefix}:*")
    async with consumer:
        await publish(broker, 2)
        # ... and one found after start
        await EventEmitter(message_broker=broker).emit(OrderPaid(order_id=3))
        await wait_until(consumer, lambda s: s.handled >= 2)
    assert sorted(recorder.seen) == [2, 3]
    for stream in ("OrderPlaced", "OrderPaid"):
        assert await client.xinfo_groups(f"{key_prefix}:notification_event:{stream}") == []


async def test_idle_members_with_nothing_pending_are_removed(
    client: Redis, key_prefix: str
) -> None:
    broker = stream_broker(client, key_prefix, idle_consumer_timeout=0.2)
    await publish(broker, 1)
    stream = f"{key_prefix}:notification_event:OrderPlaced"
    await client.xgroup_create(stream, "billing", id="0")
    # A member of a process that died without closing, with nothing pending ...
    await client.xgroup_createconsumer(stream, "billing", "ghost")
    # ... and one that died holding an entry: claimed first, then removed.
    await client.xreadgroup("billing", "holder", {stream: ">"}, count=1)
    recorder = Recorder()
    consumer = EventConsumer(broker=broker, event_map=recorder.events())
    await consumer.subscribe(f"{key_prefix}:notification_event:*", group="billing")
    with LogWatch() as log:
        async with consumer:
            await log.until(lambda line: "'holder'" in line and "removed" in line)
            await log.until(lambda line: "'ghost'" in line and "removed" in line)
            await wait_until(consumer, lambda s: s.handled >= 1)
            names = [m["name"] for m in await client.xinfo_consumers(stream, "billing")]
            assert b"ghost" not in names
            assert b"holder" not in names
    assert recorder.seen == [1]  # the holder's entry was claimed before it went


# -- bounds on what is kept and logged (issue 9, fault 6) -----------------------------


async def test_an_oversize_entry_is_dead_lettered_as_a_bounded_prefix_with_size_and_hash(
    client: Redis, key_prefix: str
) -> None:
    broker = stream_broker(client, key_prefix)
    stream = f"{key_prefix}:notification_event:OrderPlaced"
    body = b"x" * (2 * 1024 * 1024)  # over the consumer's 1 MiB limit
    consumer = EventConsumer(broker=broker, event_map=Recorder().events())
    await consumer.subscribe(f"{key_prefix}:notification_event:*", group="billing")
    async with consumer:
        await client.xadd(stream, {"data": body})
        await client.sadd(broker.registry_key, stream)
        await wait_until(consumer, lambda s: s.dead_lettered >= 1)
    [(_, fields)] = await client.xrange(broker.dead_letter_key)
    assert len(fields[b"data"]) == 64 * 1024  # what Redis holds: the first 64 KiB
    [record] = await broker.dead_letters()
    assert record.reason == "too_large"
    assert record.data == body[: 64 * 1024]
    assert record.size == len(body)
    assert record.sha256 == hashlib.sha256(body).hexdigest()
    assert record.truncated


# -- claiming behind live pending entries (issue 18, item 6) ----------------------------


@pytest.mark.parametrize(
    "live",
    # One XAUTOCLAIM looks at 10 x batch_size (2) pending entries at most, and
    # one claim pass sends CLAIM_CALLS of them per stream.
    [30, 10 * 2 * CLAIM_CALLS + 10],
    ids=["beyond-one-call", "beyond-one-pass"],
)
async def test_idle_entries_behind_many_live_pending_ones_are_all_claimed(
    client: Redis, key_prefix: str, live: int
) -> None:
    broker = stream_broker(client, key_prefix, batch_size=2, claim_idle=60.0, claim_interval=0.05)
    await publish(broker, *range(live + 30))
    stream = f"{key_prefix}:notification_event:OrderPlaced"
    await client.xgroup_create(stream, "billing", id="0")
    await client.xreadgroup("billing", "live", {stream: ">"}, count=live)  # delivered just now
    [[_, dead]] = await client.xreadgroup("billing", "dead", {stream: ">"}, count=30)
    # The dead member's entries, behind the live ones, have been idle for an hour.
    ids = [entry_id for entry_id, _ in dead]
    await client.xclaim(stream, "billing", "dead", 0, ids, idle=3_600_000, justid=True)
    recorder = Recorder()
    consumer = EventConsumer(broker=broker, event_map=recorder.events())
    await consumer.subscribe(f"{key_prefix}:notification_event:*", group="billing")
    async with consumer:
        await wait_until(consumer, lambda s: s.handled >= 30, timeout=WAIT)
    assert sorted(recorder.seen) == list(range(live, live + 30))  # none of the live member's
    pending = {m["name"]: m["pending"] for m in await client.xinfo_consumers(stream, "billing")}
    assert pending.get(b"dead", 0) == 0
    assert pending[b"live"] == live


async def test_entry_renewal_goes_on_after_an_unexpected_error(
    client: Redis,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The task that renews held entries survives an error that is not a
    Redis one (it ended silently, and peers then claimed entries still being
    handled): it logs it and renews again at its next turn."""
    from redis.asyncio.client import Pipeline

    renewals = 0
    renewed_again = asyncio.Event()
    execute = Pipeline.execute

    async def flaky(self: Pipeline, raise_on_error: bool = True) -> Any:
        nonlocal renewals
        if any(args[0] == "XCLAIM" for args, _ in self.command_stack):
            renewals += 1
            if renewals == 1:
                raise RuntimeError("an error redis-py did not expect")
            renewed_again.set()
        return await execute(self, raise_on_error)

    monkeypatch.setattr(Pipeline, "execute", flaky)
    broker = stream_broker(client, key_prefix, claim_idle=0.15)
    subscription = await broker.subscribe(f"{key_prefix}:*", group="workers")
    try:
        await publish(broker, 1)
        held: RedisStreamDelivery = await asyncio.wait_for(anext(aiter(subscription)), timeout=WAIT)
        async with asyncio.timeout(WAIT):
            await renewed_again.wait()
        [logged] = [r for r in caplog.records if "could not renew" in r.getMessage()]
        assert logged.exc_info is not None
        assert "an error redis-py did not expect" in str(logged.exc_info[1])
        await held.ack()
    finally:
        await subscription.close()


# -- what close() and stop() leave behind ----------------------------------------


@asynccontextmanager
async def proxied_broker(
    redis_url: str, prefix: str, **options: object
) -> AsyncIterator[tuple[RedisStreamMessageBroker, SilencingProxy]]:
    """A broker whose client reaches Redis through a `SilencingProxy`."""
    where = parse_url(redis_url)
    async with SilencingProxy(where.get("host", "127.0.0.1"), where.get("port", 6379)) as proxy:
        client = Redis.from_url(f"redis://127.0.0.1:{proxy.port}/{where.get('db', 0)}")
        broker = stream_broker(client, prefix, **options)
        try:
            yield broker, proxy
        finally:
            proxy.hold_new = False
            proxy.release()
            proxy.resume()
            await broker.stop()
            await client.aclose()


async def until(condition: Callable[[], object]) -> None:
    """Wait until `condition()`, a state of this process, is true."""
    async with asyncio.timeout(WAIT):
        while not condition():  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0.005)


async def test_close_waits_for_the_acknowledgements_under_way_and_starts_no_more(
    redis_url: str, client: Redis, key_prefix: str
) -> None:
    # An acknowledgement waits ACK_DELAY for the next read, then goes out on
    # its own. One due while close() waited for an earlier one went out in a
    # task that close() never waited for: still using the client (a new
    # connection, even) after close(), and after stop() closed the client.
    stream = f"{key_prefix}:notification_event:OrderPlaced"
    # No renewal meanwhile (claim_idle): one connection in the pool, one flush.
    async with proxied_broker(redis_url, key_prefix, claim_idle=60) as (broker, proxy):
        subscription = await broker.subscribe(f"{key_prefix}:*", group="billing")
        await publish(stream_broker(client, key_prefix), 1, 2)
        entries = aiter(subscription)
        first = await asyncio.wait_for(anext(entries), WAIT)
        second = await asyncio.wait_for(anext(entries), WAIT)
        # The first acknowledgement goes out on a connection gone silent, and
        # waits for its reply; a new connection would be held silent too.
        assert proxy.silence() >= 1
        proxy.hold_new = True
        await first.ack()
        await until(lambda: subscription._acks.flushes and not subscription._acks.pending)
        await second.ack()  # queued: due after ACK_DELAY, while close() waits
        closing = asyncio.create_task(subscription.close())
        await asyncio.sleep(ACK_DELAY * 4)
        # The first one's reply comes; a connection opened meanwhile stays silent.
        proxy.resume()
        await asyncio.wait_for(closing, WAIT)
        assert not subscription._acks.flushes, "an acknowledgement went on after close()"
        assert proxy.held == 0, "a connection was opened while closing"
        assert (await client.xpending(stream, "billing"))["pending"] == 0
