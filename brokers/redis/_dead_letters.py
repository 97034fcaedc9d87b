"""Redis: the dead-letter stream both brokers keep, ``{prefix}:dead-letter``.

One stream entry per `DeadLetterRecord` (its fields, plus any the transport
adds), trimmed exactly to the broker's `dead_letter_limit`. A record read
back has the entry's id as its `id`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import attrs
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline

from brokers.redis._client import Client
from mediator.transport import DeadLetterRecord


def append_dead_letter(
    target: Client | Pipeline | ClusterPipeline,
    key: str,
    limit: int,
    record: DeadLetterRecord,
    **extra: str | bytes,
) -> Any:
    """``XADD`` `record` to the dead-letter stream `key`, trimmed to `limit`
    entries, on a client (await the result) or in a pipeline."""
    fields: Any = {**record.fields(), **extra}
    return target.xadd(key, fields, maxlen=limit, approximate=False)


async def read_dead_letters(
    client: Client, key: str, limit: int | None = None
) -> list[DeadLetterRecord]:
    """The records of the dead-letter stream `key` (the oldest `limit` of
    them, or every one), oldest first."""
    entries: Any = await client.xrange(key, count=limit)
    return [record_of(entry_id, fields) for entry_id, fields in entries]


def record_of(entry_id: bytes | str, fields: Any) -> DeadLetterRecord:
    """The record a dead-letter stream entry holds, named by the entry's id
    (and dated by it, for an entry written without a time)."""
    name = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    record = DeadLetterRecord.from_fields(fields)
    at = record.dead_lettered_at
    if at is None:
        milliseconds = name.partition("-")[0]
        at = (
            datetime.fromtimestamp(int(milliseconds) / 1000, UTC)
            if milliseconds.isdigit()
            else None
        )
    return attrs.evolve(record, id=name, dead_lettered_at=at)


async def still_there(client: Client, key: str, record: DeadLetterRecord) -> bool:
    """Whether the entry of `record` is still in the dead-letter stream `key`."""
    return bool(await client.xrange(key, record.id, record.id))


async def remove_dead_letters(client: Client, key: str, records: Iterable[DeadLetterRecord]) -> int:
    """``XDEL`` the entries of `records`; how many were there."""
    ids = [record.id for record in records]
    removed = 0
    for start in range(0, len(ids), 1000):
        removed += int(await client.xdel(key, *ids[start : start + 1000]))
    return removed
