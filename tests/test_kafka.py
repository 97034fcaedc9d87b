"""The Kafka transport against a real Kafka-protocol broker (Tansu, or the
cluster at ``KAFKA_BOOTSTRAP_SERVERS``), and the core's partition keys it uses.

The consumer and fault-compliance suites run on Kafka too (tests/transports.py);
this file holds what only Kafka has: the record layout, partitions and their
order, commits, rebalances, a killed consumer process, the dead-letter topic
and a restarted broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2

from brokers.kafka import KafkaMessageBroker
from mediator import (
    BrokerUnavailableError,
    DomainEvent,
    EventConsumer,
    EventEmitter,
    EventMap,
    FailFast,
    MessageCodec,
    MessageTooLargeError,
    NotificationEvent,
    PublishError,
    correlation_scope,
)
from mediator.testing import wait_until
from mediator.transport import encode_message
from tests.kafka_support import KafkaServer, start_tansu, unavailable
from tests.transports import KafkaTransport

ROOT = Path(__file__).resolve().parent.parent


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent, partition_key="order_id"):
    order_id: int


@attrs.frozen(kw_only=True)
class OrderPlacedAgain(OrderPlaced, name="OrderPlaced.v2"):
    note: str = ""


@attrs.frozen(kw_only=True)
class Unkeyed(NotificationEvent):
    n: int


@attrs.frozen(kw_only=True)
class Misnamed(NotificationEvent, partition_key="order"):
    order_id: int


@attrs.frozen(kw_only=True)
class Step(NotificationEvent, partition_key="key"):
    key: str
    n: int


@attrs.frozen(kw_only=True)
class Numbered(NotificationEvent, partition_key="key"):
    """The event tests/kafka_consumer_process.py handles (same name and fields)."""

    n: int
    key: str


@attrs.frozen(kw_only=True)
class Audited(DomainEvent):
    n: int


# -- partition keys (core) ------------------------------------------------------


def test_an_event_class_names_its_partition_key_and_the_message_carries_it() -> None:
    message = MessageCodec.to_message(OrderPlaced(order_id=42))
    assert message.partition_key == "42"
    assert b"partition_key" not in encode_message(message), "routing, not envelope content"


def test_a_subclass_inherits_the_partition_key() -> None:
    assert MessageCodec.to_message(OrderPlacedAgain(order_id=7)).partition_key == "7"


def test_without_a_partition_key_the_message_has_none() -> None:
    assert MessageCodec.to_message(Unkeyed(n=1)).partition_key is None


def test_a_partition_key_naming_no_field_says_which_class_and_what_to_do() -> None:
    with pytest.raises(TypeError, match=r"Misnamed names partition_key='order'.*name a field"):
        MessageCodec.to_message(Misnamed(order_id=1))


# -- options (no server; names and patterns: test_kafka_naming.py) ----------------


def test_from_url_reads_every_bootstrap_server() -> None:
    broker = KafkaMessageBroker.from_url("kafka://k1:9093,k2", channel_prefix="shop")
    assert broker.bootstrap_servers == ["k1:9093", "k2:9092"]
    assert broker.channel_prefix == "shop"
    assert broker.owns_client
    assert broker.dead_letter_topic == "shop.dead-letter"
    assert broker.group_id("billing") == "shop.billing"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: KafkaMessageBroker.from_url("redis://k1:9092"), "kafka://host:port"),
        (lambda: KafkaMessageBroker.from_url("kafka://"), "kafka://host:port"),
        (lambda: KafkaMessageBroker(channel_prefix="shop:eu"), "no ':'"),
        (lambda: KafkaMessageBroker(partitions=0), "partitions=0"),
        (lambda: KafkaMessageBroker(start_from="latest"), "start_from"),  # type: ignore[arg-type]
        (
            lambda: KafkaMessageBroker(consumer_options={"group_id": "x"}),
            r"'group_id'.*subscribe\(pattern, group=",
        ),
        (
            lambda: KafkaMessageBroker(producer_options={"enable_idempotence": False}),
            "idempotence= keyword",
        ),
    ],
)
def test_a_misconfigured_broker_says_what_to_change(
    make: Callable[[], KafkaMessageBroker], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# -- against the server ---------------------------------------------------------


@pytest.fixture
async def kafka(kafka_server: KafkaServer) -> AsyncIterator[KafkaTransport]:
    transport = KafkaTransport(f"mtk-k{uuid.uuid4().hex[:8]}", kafka_server)
    try:
        yield transport
    finally:
        await transport.close()


async def read_records(kafka: KafkaTransport, topic: str, count: int) -> list[Any]:
    """The first `count` records of `topic`, read by a plain aiokafka consumer."""
    [described] = await (await kafka.admin()).describe_topics([topic])
    tps = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.server.bootstrap_servers)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        async with asyncio.timeout(20):
            while len(records) < count:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
        return records
    finally:
        await consumer.stop()


def partition_of(key: str, partitions: int) -> int:
    """The partition the producer's default partitioner sends `key` to
    (murmur2, as Kafka's Java client)."""
    return int((murmur2(key.encode()) & 0x7FFFFFFF) % partitions)


def keys_on_distinct_partitions(count: int, partitions: int) -> list[str]:
    """Partition keys that go to `count` different partitions."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < count:
        found.setdefault(partition_of(f"k{n}", partitions), f"k{n}")
        n += 1
    return list(found.values())


class Recorder:
    """A handler recording what it received, with a wake-up per arrival."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self._changed = asyncio.Event()

    async def __call__(self, event: Any) -> None:
        self.seen.append(event)
        self._changed.set()

    async def until(self, done: Callable[[list[Any]], bool], timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while not done(self.seen):
                self._changed.clear()
                await self._changed.wait()


async def test_a_raw_consumer_reads_the_envelope_bytes_with_the_key_and_headers(
    kafka: KafkaTransport,
) -> None:
    event = OrderPlaced(order_id=42)
    with correlation_scope("checkout-7"):
        await EventEmitter(message_broker=kafka.broker).emit(event)

    [record] = await read_records(kafka, f"{kafka.prefix}.notification_event.OrderPlaced", 1)
    expected = MessageCodec.to_message(event, {"correlation_id": "checkout-7"})
    assert record.value == encode_message(expected)
    assert orjson.loads(record.value) == {
        "message_type": "notification_event",
        "message_name": "OrderPlaced",
        "message_id": str(event.event_id),
        "payload": {
            "event_id": str(event.event_id),
            "event_timestamp": event.event_timestamp.isoformat(),
            "order_id": 42,
        },
        "headers": {"correlation_id": "checkout-7"},
    }
    assert record.key == b"42"
    assert list(record.headers) == [("correlation_id", b"checkout-7")]


async def test_records_of_one_key_are_handled_in_order_and_partitions_concurrently(
    kafka: KafkaTransport,
) -> None:
    first, second = keys_on_distinct_partitions(2, kafka.broker.partitions)
    both_started = asyncio.Barrier(2)
    order: dict[str, list[int]] = {first: [], second: []}

    async def handle(event: Step) -> None:
        if event.n == 0:
            # Each partition's first record waits for the other's: only
            # partitions handled concurrently get past this.
            async with asyncio.timeout(10):
                await both_started.wait()
        order[event.key].append(event.n)

    events = EventMap()
    events.bind(Step, handle)
    consumer = EventConsumer(broker=kafka.broker, event_map=events)
    await consumer.subscribe(f"{kafka.prefix}:notification_event:Step", group="ordered")
    steps = [Step(key=key, n=n) for n in range(50) for key in (first, second)]
    async with consumer:
        await EventEmitter(message_broker=kafka.new_broker()).emit_all(steps)
        await wait_until(consumer, lambda s: s.handled >= 100, timeout=20)
    assert order == {first: list(range(50)), second: list(range(50))}


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
async def test_a_partitions_next_record_waits_for_the_one_in_flight_unless_unordered(
    kafka: KafkaTransport, ordered: bool
) -> None:
    key, other = keys_on_distinct_partitions(2, kafka.broker.partitions)
    gate = asyncio.Event()
    started: list[tuple[str, int]] = []
    changed = asyncio.Event()

    async def handle(event: Step) -> None:
        started.append((event.key, event.n))
        changed.set()
        if (event.key, event.n) == (key, 0):
            await gate.wait()

    async def until(wanted: tuple[str, int]) -> None:
        async with asyncio.timeout(10):
            while wanted not in started:
                changed.clear()
                await changed.wait()

    events = EventMap()
    events.bind(Step, handle)
    consumer = EventConsumer(broker=kafka.new_broker(ordered=ordered), event_map=events)
    await consumer.subscribe(f"{kafka.prefix}:notification_event:Step")
    emitter = EventEmitter(message_broker=kafka.new_broker())
    async with consumer:
        await emitter.emit(Step(key=key, n=0))
        await until((key, 0))
        await emitter.emit_all([Step(key=key, n=1), Step(key=other, n=2)])
        await until((other, 2))  # the consumer is taking deliveries
        if ordered:
            assert (key, 1) not in started, "the next record of a partition waits"
        else:
            await until((key, 1))  # unordered: it runs beside the one held
        gate.set()
        await wait_until(consumer, lambda s: s.handled >= 3)
    assert started.index((key, 0)) < started.index((key, 1))


async def test_a_slow_record_holds_its_partitions_commit_and_comes_back_after_a_stop(
    kafka: KafkaTransport,
) -> None:
    held = asyncio.Event()
    handled: list[int] = []
    hold = True

    async def handle(event: Step) -> None:
        if event.n == 0 and hold:
            held.set()
            await asyncio.Event().wait()  # never finishes: cancelled by the stop
        handled.append(event.n)

    events = EventMap()
    events.bind(Step, handle)
    # Unordered: the later records of the partition are handled around the slow one.
    broker = kafka.new_broker(ordered=False)
    consumer = EventConsumer(broker=broker, event_map=events, drain_timeout=0.1)
    await consumer.subscribe(f"{kafka.prefix}:notification_event:Step", group="holding")
    async with consumer:
        await EventEmitter(message_broker=kafka.new_broker()).emit_all(
            [Step(key="one", n=n) for n in range(10)]
        )
        await wait_until(consumer, lambda s: s.handled >= 9)
        assert held.is_set()
    assert sorted(handled) == list(range(1, 10))

    async def committed() -> dict[int, int]:
        topic = f"{kafka.prefix}.notification_event.Step"
        partitions = [TopicPartition(topic, p) for p in range(broker.partitions)]
        offsets = await (await kafka.admin()).list_consumer_group_offsets(
            broker.group_id("holding"), partitions=partitions
        )
        return {tp.partition: meta.offset for tp, meta in offsets.items()}

    # Records 1 to 9 were handled, record 0 was not: the commit stays at 0.
    partition = partition_of("one", broker.partitions)
    assert (await committed())[partition] == 0

    # The group's next member starts from the commit: the slow record again.
    hold = False
    handled.clear()
    again = EventConsumer(broker=kafka.new_broker(ordered=False), event_map=events)
    await again.subscribe(f"{kafka.prefix}:notification_event:Step", group="holding")
    async with again:
        await wait_until(again, lambda s: 0 in handled and s.handled >= 10)
    assert (await committed())[partition] == 10


async def test_handlers_slower_than_max_poll_interval_keep_their_member_in_the_group(
    kafka: KafkaTransport, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aiokafka.consumer.group_coordinator")
    keys = keys_on_distinct_partitions(3, kafka.broker.partitions)
    counts: Counter[int] = Counter()

    async def handle(event: Step) -> None:
        if event.n < 3:
            # The slowness under test: every partition holds its `prefetch`
            # records meanwhile, so nothing is fetched for longer than
            # max_poll_interval_ms.
            await asyncio.sleep(2)
        counts[event.n] += 1

    events = EventMap()
    events.bind(Step, handle)
    options = kafka.server.broker_options()["consumer_options"]
    broker = kafka.new_broker(
        prefetch=2, consumer_options={**options, "max_poll_interval_ms": 1000}
    )
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe(f"{kafka.prefix}:notification_event:*", group="slow")
    async with consumer:
        await EventEmitter(message_broker=kafka.new_broker()).emit_all(
            [Step(key=keys[n % 3], n=n) for n in range(12)]
        )
        await wait_until(consumer, lambda s: s.handled >= 12, timeout=30)
    taken = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("Revoking previously assigned partitions frozenset({")
    ]
    assert taken == [], "the group took the member for stuck"
    assert counts == dict.fromkeys(range(12), 1)


async def test_a_poison_record_ends_in_the_dead_letter_topic_with_its_source(
    kafka: KafkaTransport,
) -> None:
    async def handle(event: Step) -> list[Audited]:
        return [Audited(n=event.n)]

    async def audit(event: Audited) -> None:
        raise RuntimeError("the audit store refuses it")

    events = EventMap()
    events.bind(Step, handle)
    events.bind(Audited, audit, policy=FailFast())  # released each time
    consumer = EventConsumer(broker=kafka.broker, event_map=events, max_deliveries=3)
    await consumer.subscribe(f"{kafka.prefix}:notification_event:*", group="poisoned")
    async with consumer:
        await EventEmitter(message_broker=kafka.new_broker()).emit(Step(key="p", n=7))
        await wait_until(consumer, lambda s: s.dead_lettered >= 1)
    assert consumer.stats.released == 2

    topic = f"{kafka.prefix}.notification_event.Step"
    [source] = await read_records(kafka, topic, 1)
    [dead] = await read_records(kafka, kafka.broker.dead_letter_topic, 1)
    headers = {name: value.decode() for name, value in dead.headers}
    assert headers == {
        "channel": f"{kafka.prefix}:notification_event:Step",
        "reason": "too_many_deliveries",
        "description": headers["description"],
        "delivery_count": "3",
        "size": str(len(source.value)),
        "sha256": hashlib.sha256(source.value).hexdigest(),
        "id": headers["id"],
        "dead_lettered_at": headers["dead_lettered_at"],
        "replay_count": "0",
        "topic": topic,
        "partition": str(source.partition),
        "offset": str(source.offset),
        **{f"header.{name}": value.decode() for name, value in source.headers},
    }
    assert "the audit store refuses it" in headers["description"]
    assert (dead.key, dead.value) == (b"p", source.value)
    [record] = await kafka.broker.dead_letters()
    assert (record.reason, record.delivery_count, record.data) == (
        "too_many_deliveries",
        3,
        source.value,
    )


async def test_a_dead_letter_keeps_a_bounded_value_with_the_size_and_hash_of_the_whole(
    kafka: KafkaTransport,
) -> None:
    events = EventMap()
    events.register(Step)
    consumer = EventConsumer(broker=kafka.broker, event_map=events, max_message_size=100_000)
    channel = f"{kafka.prefix}:notification_event:Step"
    await consumer.subscribe(channel)
    body = b"not json " * 20_000
    async with consumer:
        await kafka.publish_raw(channel, body)
        await wait_until(consumer, lambda s: s.dead_lettered >= 1)
    [record] = await kafka.broker.dead_letters()
    assert record.reason == "too_large"
    assert record.data == body[: 64 * 1024]
    assert (record.size, record.sha256) == (len(body), hashlib.sha256(body).hexdigest())
    assert record.truncated


async def test_a_dead_letter_that_cannot_be_written_raises_and_the_record_can_be_released(
    kafka: KafkaTransport,
) -> None:
    # create_topics=False and no dead-letter topic: every dead-letter write fails.
    broker = kafka.new_broker(create_topics=False)
    topic = f"{kafka.prefix}.notification_event.Step"
    subscription = await broker.subscribe(f"{kafka.prefix}:notification_event:Step")
    try:
        deliveries = aiter(subscription)
        await EventEmitter(message_broker=kafka.new_broker()).emit(Step(key="d", n=1))
        async with asyncio.timeout(20):
            delivery = await anext(deliveries)
        where = rf"{re.escape(topic)}\[{delivery.record.partition}\] offset 0\b"
        with pytest.raises(PublishError, match=rf"{where}.*dead-letter.*check") as caught:
            await delivery.dead_letter("rejected", "refused")
        assert isinstance(caught.value.__cause__, PublishError), "Kafka's error, chained"
        assert delivery.settled is None, "not settled: the caller decides what happens next"

        await delivery.release()
        async with asyncio.timeout(20):
            again = await anext(deliveries)
        assert (again.record.offset, again.delivery_count) == (0, 2)
        await again.ack()
    finally:
        await subscription.close()


async def test_a_consumer_releases_a_record_whose_dead_letter_cannot_be_written(
    kafka: KafkaTransport, caplog: pytest.LogCaptureFixture
) -> None:
    events = EventMap()
    events.register(Step)
    consumer = EventConsumer(
        broker=kafka.new_broker(create_topics=False), event_map=events, max_deliveries=100
    )
    channel = f"{kafka.prefix}:notification_event:Step"
    await consumer.subscribe(channel, group="undeadlettered")
    async with consumer:
        await kafka.publish_raw(channel, b"not json")
        await wait_until(consumer, lambda s: s.released >= 2, timeout=20)
    assert consumer.stats.dead_lettered == 0, "not written, so not counted as dead-lettered"
    topic = f"{kafka.prefix}.notification_event.Step"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(f"could not dead-letter the record at {topic}[" in r.message for r in errors)
    assert all(r.name != "mediator.brokers.kafka" for r in errors), "the consumer logs it"


async def test_topics_created_after_a_group_joined_are_read_from_their_first_record(
    kafka: KafkaTransport,
) -> None:
    recorder = Recorder()
    events = EventMap()
    events.bind(OrderPlaced, recorder)
    events.bind(Unkeyed, recorder)
    consumer = EventConsumer(broker=kafka.broker, event_map=events)
    await consumer.subscribe(f"{kafka.prefix}:notification_event:*", group="late")
    emitter = EventEmitter(message_broker=kafka.new_broker())
    async with consumer:  # no topic exists yet
        await emitter.emit_all([OrderPlaced(order_id=n) for n in range(5)])
        await recorder.until(lambda seen: len(seen) >= 5)
        await emitter.emit_all([Unkeyed(n=n) for n in range(5)])  # a second topic, later
        await recorder.until(lambda seen: len(seen) >= 10)
    assert Counter(type(event).__name__ for event in recorder.seen) == {
        "OrderPlaced": 5,
        "Unkeyed": 5,
    }


async def test_a_new_group_starts_where_start_from_says_and_then_goes_on_from_its_commits(
    kafka: KafkaTransport,
) -> None:
    emitter = EventEmitter(message_broker=kafka.new_broker())
    for n in range(3):
        await emitter.emit(Unkeyed(n=n))  # before any group: one record per send
    glob = f"{kafka.prefix}:notification_event:*"

    async def run(group: str, start_from: str, publish: list[int], wanted: int) -> list[int]:
        recorder = Recorder()
        events = EventMap()
        events.bind(Unkeyed, recorder)
        consumer = EventConsumer(broker=kafka.new_broker(start_from=start_from), event_map=events)
        await consumer.subscribe(glob, group=group)
        async with consumer:
            await emitter.emit_all([Unkeyed(n=n) for n in publish])
            await recorder.until(lambda seen: len(seen) >= wanted)
        return sorted(event.n for event in recorder.seen)

    assert await run("new", "new", [3, 4], 2) == [3, 4]
    await emitter.emit_all([Unkeyed(n=5), Unkeyed(n=6)])  # while the group is away
    assert await run("new", "new", [], 2) == [5, 6]
    assert await run("old", "beginning", [], 7) == list(range(7))


async def test_records_published_in_one_batch_before_a_new_group_are_not_delivered(
    kafka: KafkaTransport, request: pytest.FixtureRequest
) -> None:
    if kafka.server.tansu:
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason="Tansu 0.6 answers ListOffsets(latest) with the last record batch's "
                "base offset + 1, not the high watermark, so a new group starts inside the "
                "last batch",
            )
        )
    emitter = EventEmitter(message_broker=kafka.new_broker())
    await emitter.emit_all([Unkeyed(n=n) for n in range(20)])  # one batch per partition
    recorder = Recorder()
    events = EventMap()
    events.bind(Unkeyed, recorder)
    consumer = EventConsumer(broker=kafka.broker, event_map=events)
    await consumer.subscribe(f"{kafka.prefix}:notification_event:*", group="batch")
    async with consumer:
        await emitter.emit(Unkeyed(n=99))
        await recorder.until(lambda seen: any(event.n == 99 for event in seen))
    assert [event.n for event in recorder.seen] == [99]


async def test_without_a_group_every_subscription_gets_every_new_record(
    kafka: KafkaTransport,
) -> None:
    emitter = EventEmitter(message_broker=kafka.new_broker())
    await emitter.emit(Unkeyed(n=-1))  # before: not delivered
    recorders = [Recorder(), Recorder()]
    consumers = []
    for recorder in recorders:
        events = EventMap()
        events.bind(Unkeyed, recorder)
        consumer = EventConsumer(broker=kafka.new_broker(), event_map=events)
        await consumer.subscribe(f"{kafka.prefix}:notification_event:*")
        consumers.append(consumer)
    async with consumers[0], consumers[1]:
        await emitter.emit_all([Unkeyed(n=n) for n in range(10)])
        for recorder in recorders:
            await recorder.until(lambda seen: len(seen) >= 10)
    for recorder in recorders:
        assert sorted(event.n for event in recorder.seen) == list(range(10))


async def test_a_rebalance_from_one_consumer_to_two_mid_stream_loses_nothing(
    kafka: KafkaTransport,
) -> None:
    total = 5_000
    counts: Counter[int] = Counter()
    changed = asyncio.Event()

    async def handle(event: Numbered) -> None:
        await asyncio.sleep(0.002)  # the work of a handler, so the second joins mid-stream
        counts[event.n] += 1
        changed.set()

    async def until(done: Callable[[], bool]) -> None:
        async with asyncio.timeout(60):
            while not done():
                changed.clear()
                await changed.wait()

    events = EventMap()
    events.bind(Numbered, handle)
    glob = f"{kafka.prefix}:notification_event:*"
    first = EventConsumer(broker=kafka.new_broker(), event_map=events)
    second = EventConsumer(broker=kafka.new_broker(), event_map=events)
    await first.subscribe(glob, group="rebalanced")
    await second.subscribe(glob, group="rebalanced")
    emitter = EventEmitter(message_broker=kafka.new_broker())
    async with first:
        for start in range(0, total, 500):
            await emitter.emit_all(
                [Numbered(n=n, key=f"k{n % 30}") for n in range(start, start + 500)]
            )
        await until(lambda: len(counts) >= total // 5)
        async with second:  # joins: the group's partitions are spread over two
            await until(lambda: len(counts) >= total)
            assert second.stats.handled > 0, "the second member took partitions"
    lost = set(range(total)) - counts.keys()
    duplicates = sum(counts.values()) - len(counts)
    print(f"rebalance one to two: {total} events, lost {len(lost)}, duplicates {duplicates}")
    assert not lost


async def test_a_consumer_process_killed_mid_stream_loses_nothing(
    kafka: KafkaTransport, tmp_path: Path
) -> None:
    await _killed_mid_stream(kafka, tmp_path, total=5_000, kill_after=4)


async def test_a_consumer_killed_before_its_group_ever_committed_loses_nothing(
    kafka: KafkaTransport, tmp_path: Path
) -> None:
    # The topic appears after the group subscribed, so the first member reads
    # it from the beginning; killed before any commit, its successor (to whom
    # the topic existed at its start) must not take start_from="new" as
    # "skip to the end".
    await _killed_mid_stream(
        kafka, tmp_path, total=1_000, kill_after=1, options={"commit_interval": 3600}
    )


async def _killed_mid_stream(
    kafka: KafkaTransport,
    tmp_path: Path,
    *,
    total: int,
    kill_after: int,
    options: dict[str, Any] | None = None,
) -> None:
    """A consumer process SIGKILLed after `kill_after` times 250 events handled,
    then a new one in the same group: every event handled at least once."""
    handled = tmp_path / "handled"
    settings = orjson.dumps(
        {
            "bootstrap_servers": kafka.server.bootstrap_servers,
            "prefix": kafka.prefix,
            "group": "killed",
            "path": str(handled),
            "total": total,
            "options": {**kafka.server.broker_options(), **(options or {})},
        }
    ).decode()

    async def start() -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "tests" / "kafka_consumer_process.py"),
            settings,
            stdout=subprocess.PIPE,
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

    first = await start()
    try:
        emitter = EventEmitter(message_broker=kafka.new_broker())
        for begin in range(0, total, 500):
            await emitter.emit_all(
                [Numbered(n=n, key=f"k{n % 30}") for n in range(begin, begin + 500)]
            )
        for _ in range(kill_after):  # mid-stream
            await until(first, "handled")
        first.kill()  # SIGKILL: no drain, no last commit, no leaving the group
        await first.wait()
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
    before = handled.read_bytes().split()
    assert len(set(before)) < total, "killed after the end of the stream"

    second = await start()
    try:
        await until(second, "done")
    finally:
        second.kill()
        await second.wait()
    counts = Counter(int(line) for line in handled.read_bytes().split())
    lost = set(range(total)) - counts.keys()
    duplicates = sum(counts.values()) - len(counts)
    print(
        f"SIGKILL mid-stream: {total} events, {len(set(before))} handled before the kill, "
        f"lost {len(lost)}, duplicates {duplicates}"
    )
    assert not lost


async def test_a_broker_restart_is_survived_and_the_subscription_comes_back(
    tmp_path: Path,
) -> None:
    tansu = start_tansu(tmp_path)  # a broker of its own: a restart loses a memory store
    if isinstance(tansu, str):
        unavailable(f"Tansu did not start: {tansu}")
    try:
        server = KafkaServer(tansu.bootstrap_servers, tansu=True)
        transport = KafkaTransport(f"mtk-r{uuid.uuid4().hex[:8]}", server)
        recorder = Recorder()
        events = EventMap()
        events.bind(Unkeyed, recorder)
        consumer = EventConsumer(broker=transport.broker, event_map=events)
        await consumer.subscribe(f"{transport.prefix}:notification_event:*", group="restarted")
        emitter = EventEmitter(message_broker=transport.new_broker())
        try:
            async with consumer:
                await emitter.emit(Unkeyed(n=0))
                await recorder.until(lambda seen: len(seen) >= 1)
                await asyncio.to_thread(tansu.restart)

                # The topics, the group and its commits are gone with the memory
                # store. Each probe comes from a producer started after the
                # restart: Tansu takes a record for a topic it lost from a
                # producer that still knows the topic, and drops it.
                def after(seen: list[Any]) -> bool:
                    return any(event.n > 0 for event in seen)

                async with asyncio.timeout(60):
                    probe = 0
                    while not after(recorder.seen):
                        probe += 1
                        publisher = EventEmitter(message_broker=transport.new_broker())
                        with contextlib.suppress(PublishError):  # still coming back
                            await publisher.emit(Unkeyed(n=probe))
                        with contextlib.suppress(TimeoutError):
                            await recorder.until(after, timeout=1)
                assert consumer.running
        finally:
            await transport.close()
    finally:
        tansu.stop()


async def test_publish_failures_reach_the_caller_with_what_to_do(
    kafka: KafkaTransport, kafka_server: KafkaServer
) -> None:
    strict = kafka.new_broker(create_topics=False)
    with pytest.raises(PublishError, match=r"do not exist.*create_topics=False"):
        await EventEmitter(message_broker=strict).emit(Unkeyed(n=1))

    @attrs.frozen(kw_only=True)
    class Colon(NotificationEvent, name="user:joined"):
        n: int

    with pytest.raises(PublishError, match=r"Kafka refuses.*give the event class a name="):
        await EventEmitter(message_broker=kafka.broker).emit(Colon(n=1))

    small = kafka.new_broker(producer_options={"max_request_size": 1024})
    with pytest.raises(MessageTooLargeError, match="max_request_size"):
        await EventEmitter(message_broker=small).emit(Step(key="x" * 2048, n=1))

    if kafka_server.tansu:
        idempotent = kafka.new_broker(idempotence=True, timeout=5)
        with pytest.raises(PublishError, match=r"pass idempotence=False"):
            await EventEmitter(message_broker=idempotent).emit(Unkeyed(n=2))


async def test_an_unreachable_broker_fails_start_and_subscribe_with_the_address() -> None:
    broker = KafkaMessageBroker("127.0.0.1:1", timeout=5)
    with pytest.raises(BrokerUnavailableError, match=r"127\.0\.0\.1:1.*check bootstrap_servers"):
        await broker.start()
    with pytest.raises(BrokerUnavailableError, match=r"subscribing to 'app:\*' on .*:1 "):
        await broker.subscribe("app:*")
    await broker.stop()
