"""Redis: the dead-letter stream both brokers keep, ``{prefix}:dead-letter``.

One stream entry per `DeadLetterRecord` (its fields, plus any the transport
adds), trimmed exactly to the broker's `dead_letter_limit`.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from mediator.transport import DeadLetterRecord


def append_dead_letter(
    target: Redis | Pipeline, key: str, limit: int, record: DeadLetterRecord, **extra: str | bytes
) -> Any:
    """``XADD`` `record` to the dead-letter stream `key`, trimmed to `limit`
    entries, on a client (await the result) or in a pipeline."""
    fields: Any = {**record.fields(), **extra}
    return target.xadd(key, fields, maxlen=limit, approximate=False)


async def read_dead_letters(
    client: Redis, key: str, limit: int | None = None
) -> list[DeadLetterRecord]:
    """The records of the dead-letter stream `key` (the oldest `limit` of
    them, or every one), oldest first."""
    entries: Any = await client.xrange(key, count=limit)
    return [DeadLetterRecord.from_fields(fields) for _, fields in entries]
