"""NATS: dead letters written to ``{prefix}.dead-letter`` and read back.

A dead letter is a message on the subject ``{prefix}.dead-letter`` of the
prefix's stream: the body kept (`DeadLetterRecord.data`), the source's own
headers, and the record (channel, reason, description, counts, hash) as
JSON in the header `DEAD_LETTER_HEADER`, since a header value cannot hold
a line break. Its id is its stream sequence; replay and purge delete it
by that sequence once done.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import attrs
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from mediator.transport import REPLAY_COUNT_HEADER, DeadLetterRecord

logger = logging.getLogger("mediator.brokers.nats")

__all__ = [
    "DEAD_LETTER_HEADER",
    "MESSAGE_ID_HEADER",
    "SOURCE_ID_HEADER",
    "dead_letter_headers",
    "read_dead_letters",
    "record_of",
    "replayed_headers",
    "stored_dead_letter",
]

DEAD_LETTER_HEADER = "Mediator-Dead-Letter"
"""The header holding a dead letter's record (without its body) as JSON."""
MESSAGE_ID_HEADER = "Nats-Msg-Id"
"""JetStream's de-duplication id: the envelope's message id on every publish."""
SOURCE_ID_HEADER = "Mediator-Source-Msg-Id"
"""The ``Nats-Msg-Id`` of the message a dead letter is a copy of: the copy
carries none of its own, so the duplicate window never drops it."""


def dead_letter_headers(record: DeadLetterRecord, source: Msg) -> dict[str, str]:
    """The headers of `record`'s dead letter: `source`'s own (JetStream's
    ``Nats-`` ones left out), its message id, and the record as JSON."""
    headers = {k: v for k, v in (source.headers or {}).items() if not k.startswith("Nats-")}
    fields = {k: v for k, v in record.fields().items() if k != "data"}
    headers[DEAD_LETTER_HEADER] = json.dumps(fields, ensure_ascii=True, separators=(",", ":"))
    source_id = (source.headers or {}).get(MESSAGE_ID_HEADER)
    if source_id:
        headers[SOURCE_ID_HEADER] = source_id
    return headers


def record_of(
    data: bytes, headers: Mapping[str, str] | None, sequence: int, at: datetime | None = None
) -> DeadLetterRecord:
    """The record of the dead letter at stream sequence `sequence`."""
    raw = (headers or {}).get(DEAD_LETTER_HEADER, "{}")
    try:
        fields: dict[str, Any] = json.loads(raw)
    except ValueError:
        fields = {"reason": "unknown", "description": f"unreadable record: {raw[:200]!r}"}
    record = DeadLetterRecord.from_fields({**fields, "data": data})
    when = record.dead_lettered_at or at
    return attrs.evolve(
        record, id=str(sequence), dead_lettered_at=when.astimezone(UTC) if when else None
    )


def replayed_headers(headers: Mapping[str, str] | None, record: DeadLetterRecord) -> dict[str, str]:
    """The headers a dead letter is replayed with: the source's own, the
    replay counted, and a ``Nats-Msg-Id`` of its own (the source's id and
    the replay's number) so that the duplicate window drops only a second
    publish of the same replay."""
    replayed = {
        k: v
        for k, v in (headers or {}).items()
        if k not in (DEAD_LETTER_HEADER, SOURCE_ID_HEADER, REPLAY_COUNT_HEADER)
        and not k.startswith("Nats-")
    }
    count = record.replay_count + 1
    replayed[REPLAY_COUNT_HEADER] = str(count)
    source_id = (headers or {}).get(SOURCE_ID_HEADER) or record.sha256[:32]
    replayed[MESSAGE_ID_HEADER] = f"{source_id}:replay:{count}"
    return replayed


async def read_dead_letters(
    js: JetStreamContext, stream: str, subject: str, limit: int, timeout: float
) -> list[DeadLetterRecord]:
    """Up to `limit` records of the dead letters on `subject`, oldest first,
    read by an ephemeral consumer of their own (no acks), deleted after."""
    found: list[DeadLetterRecord] = []
    config = api.ConsumerConfig(
        ack_policy=api.AckPolicy.NONE,
        deliver_policy=api.DeliverPolicy.ALL,
        filter_subject=subject,
        inactive_threshold=max(timeout, 5.0),
        mem_storage=True,
    )
    info = await js.add_consumer(stream, config=config)
    try:
        if info.num_pending == 0:
            return found
        pull = await js.pull_subscribe_bind(consumer=info.name, stream=stream)
        try:
            while len(found) < limit:
                try:
                    batch = await pull.fetch(min(256, limit - len(found)), timeout=timeout)
                except TimeoutError:
                    break
                pending = None
                for message in batch:
                    metadata = message.metadata
                    sequence = metadata.sequence.stream if metadata.sequence else 0
                    found.append(
                        record_of(message.data, message.headers, sequence, metadata.timestamp)
                    )
                    pending = metadata.num_pending
                if pending == 0:
                    break
        finally:
            await pull.unsubscribe()
    finally:
        try:
            await js.delete_consumer(stream, info.name)
        except Exception:
            logger.debug("deleting a dead-letter reader failed", exc_info=True)
    return found[:limit]


async def stored_dead_letter(
    js: JetStreamContext, stream: str, subject: str, record: DeadLetterRecord
) -> api.RawStreamMsg | None:
    """The stored message of dead letter `record`; None when it is gone."""
    try:
        stored = await js.get_msg(stream, int(record.id))
    except (nats.js.errors.NotFoundError, ValueError):
        return None
    return stored if stored.subject == subject else None
