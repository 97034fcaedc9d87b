"""Kafka dead letters: the record written to ``{prefix}.dead-letter`` for a
delivery, and reading the newest of them back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition  # type: ignore[import-untyped]

from brokers.kafka._admin import stop_client
from brokers.kafka._producer import Record
from mediator.transport import DEAD_LETTER_BODY_LIMIT, DeadLetterRecord

__all__ = ["dead_letter_of", "read_dead_letters", "record_of"]


def dead_letter_of(record: Any, dead: DeadLetterRecord, topic: str) -> Record:
    """The record to write to `topic` for the fetched `record`: `dead`'s
    value, the record's key (bounded), `dead`'s fields and the source topic,
    partition and offset as headers."""
    headers = [(k, _header_value(v)) for k, v in dead.fields().items() if k != "data"]
    headers += [
        ("topic", record.topic.encode()),
        ("partition", str(record.partition).encode()),
        ("offset", str(record.offset).encode()),
    ]
    key = None if record.key is None else bytes(record.key[:DEAD_LETTER_BODY_LIMIT])
    return topic, dead.data, key, headers


def record_of(record: Any) -> DeadLetterRecord:
    """The dead letter a record of the dead-letter topic holds."""
    return DeadLetterRecord.from_fields({**dict(record.headers), "data": record.value or b""})


async def read_dead_letters(
    admin: Any, new_consumer: Callable[[], Any], topic: str, limit: int
) -> list[DeadLetterRecord]:
    """The newest `limit` records of `topic`, oldest first, read by a
    consumer of its own (`new_consumer`, outside any group)."""
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
            consumer.seek(tp, max(starts[tp], ends[tp] - limit))
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
    return [record_of(r) for r in records[-limit:]]


def _header_value(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
