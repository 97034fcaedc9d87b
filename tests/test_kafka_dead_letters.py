"""Kafka dead letters (brokers/kafka/_dead_letters.py), without a server:
the record written for a delivery, read back as it was written, read from
every partition, oldest first, and the records a replay and a purge write."""

from __future__ import annotations

from typing import Any, NamedTuple

import attrs

from brokers.kafka._dead_letters import (
    REMOVED_HEADER,
    dead_letter_of,
    live,
    read_topic,
    record_of,
    removal_of,
    replayed_record,
)
from mediator.transport import DEAD_LETTER_BODY_LIMIT, DeadLetterRecord


class Fetched(NamedTuple):
    """aiokafka's ``ConsumerRecord``, as far as dead letters read it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp: int = 0


def source(key: bytes | None = b"order-7") -> Fetched:
    return Fetched(
        "shop.notification_event.OrderPlaced", 2, 41, key, b"{}", [("traceparent", b"00-ab")]
    )


def dead(data: bytes = b'{"order_id": 7}', reason: str = "handler_failed") -> DeadLetterRecord:
    return DeadLetterRecord.of(
        "shop:notification_event:OrderPlaced", data, reason, "ValueError: no", 3
    )


def written(record: Fetched, letter: DeadLetterRecord) -> Fetched:
    """The record the dead-letter topic holds for `letter`."""
    topic, value, key, headers = dead_letter_of(record, letter, "shop.dead-letter")
    return Fetched(topic, 0, 0, key, value, headers)


def test_a_dead_letter_keeps_the_key_and_names_its_source_in_the_headers() -> None:
    letter = dead()
    topic, value, key, headers = dead_letter_of(source(), letter, "shop.dead-letter")

    assert topic == "shop.dead-letter"
    assert value == b'{"order_id": 7}'
    assert key == b"order-7"
    named = dict(headers)
    assert named["channel"] == b"shop:notification_event:OrderPlaced"
    assert named["reason"] == b"handler_failed"
    assert named["delivery_count"] == b"3"
    assert (named["topic"], named["partition"], named["offset"]) == (
        b"shop.notification_event.OrderPlaced",
        b"2",
        b"41",
    )
    assert "data" not in named, "the value carries the data"


def test_a_dead_letter_read_back_is_the_one_written_named_by_its_offset() -> None:
    letter = dead()
    assert record_of(written(source(), letter)) == attrs.evolve(letter, id="0:0")


def test_a_replay_goes_to_the_source_topic_with_its_key_and_headers_and_the_count() -> None:
    letter = attrs.evolve(dead(), replay_count=2)
    stored = written(source(), letter)
    topic, value, key, headers = replayed_record(stored, record_of(stored))
    assert (topic, value, key) == ("shop.notification_event.OrderPlaced", letter.data, b"order-7")
    assert headers == [("traceparent", b"00-ab"), ("replay_count", b"3")]


def test_a_marker_removes_the_dead_letter_it_names() -> None:
    first = written(source(), dead(b"1"))
    second = written(source(), dead(b"2"))._replace(offset=1)
    _, value, key, headers = removal_of("0:0", "shop.dead-letter", "replayed")
    marker = Fetched("shop.dead-letter", 0, 2, key, value, headers)
    assert dict(headers)[REMOVED_HEADER] == b"0:0"
    assert [dead.data for _, dead in live([first, second, marker])] == [b"2"]


def test_an_oversize_value_and_key_are_bounded_and_the_size_still_told() -> None:
    big = b"x" * (DEAD_LETTER_BODY_LIMIT + 10)
    letter = dead(big, "too_large")
    record = written(source(key=big), letter)

    assert record.key == big[:DEAD_LETTER_BODY_LIMIT]
    back = record_of(record)
    assert back.truncated
    assert back.size == len(big)
    assert back.sha256 == letter.sha256


def test_an_unkeyed_record_makes_an_unkeyed_dead_letter() -> None:
    assert written(source(key=None), dead()).key is None


# -- reading ---------------------------------------------------------------------


class Admin:
    def __init__(self, partitions: dict[str, int]) -> None:
        self.partitions = partitions

    async def describe_topics(self) -> list[dict[str, Any]]:
        return [
            {"topic": topic, "partitions": [{"partition": p} for p in range(count)]}
            for topic, count in self.partitions.items()
        ]


class Consumer:
    """aiokafka's consumer over partitions held in memory, a few records a fetch."""

    def __init__(self, logs: dict[int, list[Fetched]]) -> None:
        self.logs = logs
        self.positions: dict[Any, int] = {}
        self.stopped = False

    async def start(self) -> None:
        return None

    def assign(self, tps: list[Any]) -> None:
        self.positions = dict.fromkeys(tps, 0)

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: len(self.logs[tp.partition]) for tp in tps}

    async def beginning_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return dict.fromkeys(tps, 0)

    def seek(self, tp: Any, offset: int) -> None:
        self.positions[tp] = offset

    async def getmany(self, *tps: Any, timeout_ms: int) -> dict[Any, list[Fetched]]:
        batches = {}
        for tp in tps:
            at = self.positions[tp]
            batches[tp] = self.logs[tp.partition][at : at + 2]
            self.positions[tp] = at + len(batches[tp])
        return batches

    async def position(self, tp: Any) -> int:
        return self.positions[tp]

    def highwater(self, tp: Any) -> int:
        return len(self.logs[tp.partition])

    async def stop(self) -> None:
        self.stopped = True


def letter_at(partition: int, offset: int, timestamp: int) -> Fetched:
    letter = DeadLetterRecord.of("shop:notification_event:Step", f"{timestamp}".encode(), "r", "d")
    _, value, key, headers = dead_letter_of(source(), letter, "shop.dead-letter")
    return Fetched("shop.dead-letter", partition, offset, key, value, headers, timestamp)


async def test_the_dead_letters_of_every_partition_come_oldest_first() -> None:
    logs = {
        0: [letter_at(0, offset, timestamp) for offset, timestamp in enumerate([1, 4, 5, 8])],
        1: [letter_at(1, offset, timestamp) for offset, timestamp in enumerate([2, 3, 6, 7])],
    }
    consumer = Consumer(logs)
    admin = Admin({"shop.dead-letter": 2, "shop.notification_event.Step": 3})

    letters = [
        dead for _, dead in live(await read_topic(admin, lambda: consumer, "shop.dead-letter"))
    ]

    assert [letter.data for letter in letters] == [b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8"]
    assert [letter.id for letter in letters[:3]] == ["0:0", "1:0", "1:1"]
    assert consumer.stopped


async def test_no_dead_letter_topic_reads_nothing_and_makes_no_consumer() -> None:
    def no_consumer() -> Any:
        raise AssertionError("no consumer is needed")

    admin = Admin({"shop.notification_event.Step": 3})
    assert await read_topic(admin, no_consumer, "shop.dead-letter") == []
