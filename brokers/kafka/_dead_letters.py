"""Kafka dead letters: the record written to ``{prefix}.dead-letter`` for a
delivery, reading them back, and the records that replay and purge write."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs
from aiokafka import TopicPartition  # type: ignore[import-untyped]

from brokers.kafka._admin import stop_client
from brokers.kafka._producer import Record
from mediator.transport import DEAD_LETTER_BODY_LIMIT, REPLAY_COUNT_HEADER, DeadLetterRecord

__all__ = [
    "REMOVED_HEADER",
    "dead_letter_of",
    "live",
    "read_topic",
    "record_of",
    "removal_of",
    "replayed_record",
]


REMOVED_HEADER = "dead_letter_removed"
"""The header of a marker record: the id (``partition:offset``) of the dead
letter it removes. A topic cannot delete one record, so replay and purge
append a marker and `dead_letters()` leaves out what the markers name."""
ORIGINAL_HEADER = "header."
"""The prefix of the source record's own headers in a dead letter."""


def dead_letter_of(record: Any, dead: DeadLetterRecord, topic: str) -> Record:
    """The record to write to `topic` for the fetched `record`: `dead`'s
    value, the record's key (bounded), `dead`'s fields, the source topic,
    partition and offset, and the record's own headers (prefixed
    ``header.``) as headers."""
    headers = [(k, _header_value(v)) for k, v in dead.fields().items() if k != "data"]
    headers += [
        ("topic", record.topic.encode()),
        ("partition", str(record.partition).encode()),
        ("offset", str(record.offset).encode()),
    ]
    headers += [(ORIGINAL_HEADER + k, bytes(v)) for k, v in record.headers or ()]
    key = None if record.key is None else bytes(record.key[:DEAD_LETTER_BODY_LIMIT])
    return topic, dead.data, key, headers


def record_of(record: Any) -> DeadLetterRecord:
    """The dead letter a record of the dead-letter topic holds, named by its
    partition and offset and dated by its timestamp."""
    headers = {k: v for k, v in record.headers if not k.startswith(ORIGINAL_HEADER)}
    dead = DeadLetterRecord.from_fields({**headers, "data": record.value or b""})
    at = dead.dead_lettered_at or datetime.fromtimestamp(record.timestamp / 1000, UTC)
    return attrs.evolve(dead, id=f"{record.partition}:{record.offset}", dead_lettered_at=at)


def replayed_record(record: Any, dead: DeadLetterRecord) -> Record:
    """The record a dead letter is replayed as: its value and key to its
    source topic, with the source's own headers and the replay counted."""
    headers = dict(record.headers)
    topic = headers.get("topic", b"").decode()
    own = [
        (k[len(ORIGINAL_HEADER) :], bytes(v))
        for k, v in record.headers
        if k.startswith(ORIGINAL_HEADER) and k != ORIGINAL_HEADER + REPLAY_COUNT_HEADER
    ]
    own.append((REPLAY_COUNT_HEADER, str(dead.replay_count + 1).encode()))
    return topic, record.value or b"", record.key, own


def removal_of(dead_letter_id: str, topic: str, because: str) -> Record:
    """The marker record that removes dead letter `dead_letter_id` from `topic`."""
    return (
        topic,
        b"",
        None,
        [(REMOVED_HEADER, dead_letter_id.encode()), ("because", because.encode())],
    )


def live(records: Sequence[Any]) -> list[tuple[Any, DeadLetterRecord]]:
    """The dead letters of the topic's `records` that no marker removed,
    each with its record, oldest first."""
    removed = {
        value.decode()
        for record in records
        for key, value in record.headers
        if key == REMOVED_HEADER
    }
    found = []
    for record in records:
        if any(key == REMOVED_HEADER for key, _ in record.headers):
            continue
        dead = record_of(record)
        if dead.id not in removed:
            found.append((record, dead))
    return found


async def read_topic(admin: Any, new_consumer: Callable[[], Any], topic: str) -> list[Any]:
    """Every record `topic` holds, oldest first, read by a consumer of its
    own (`new_consumer`, outside any group)."""
    described = await admin.describe_topics()
    ids = [
        p["partition"] for meta in described if meta["topic"] == topic for p in meta["partitions"]
    ]
    if not ids:
        return []
    tps = [TopicPartition(topic, p) for p in ids]
    consumer = new_consumer()
    records: list[Any] = []
    try:
        await consumer.start()
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, starts[tp])
        left = [tp for tp in tps if ends[tp] > starts[tp]]
        while left:
            for batch in (await consumer.getmany(*left, timeout_ms=200)).values():
                records.extend(batch)
            # Read to the high watermark of the fetches, which Tansu 0.6
            # gets right where its answer to ListOffsets can fall short.
            left = [
                tp
                for tp in left
                if await consumer.position(tp) < max(ends[tp], consumer.highwater(tp) or 0)
            ]
    finally:
        await stop_client(consumer)
    records.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
    return records


def _header_value(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
