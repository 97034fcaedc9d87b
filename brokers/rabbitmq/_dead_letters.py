"""RabbitMQ: dead letters written to ``{prefix}.dead-letter`` and read back.

A dead letter is a copy of the message with its record in headers
(``dead_letter_reason``...); `dead_letters()` and `unroutable()` read their
queues on a channel of their own and close it without acknowledging, so
every message goes back in its place.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
from pamqp import commands as spec

from brokers.rabbitmq._errors import ERRORS, close_quietly
from brokers.rabbitmq._publisher import Outgoing
from mediator.transport import (
    REPLAY_COUNT_HEADER,
    BrokerUnavailableError,
    DeadLetterRecord,
    quote,
    replay_count_of,
)

__all__ = [
    "DEAD_LETTER_HEADER",
    "UNROUTABLE",
    "count_queue",
    "dead_letter_copy",
    "read_queue",
    "record_of",
    "replayed_copy",
    "take_from_queue",
    "unroutable_record",
]

DEAD_LETTER_HEADER = "dead_letter_"
"""Prefix of the headers a dead letter carries its record in (``dead_letter_reason``...)."""
UNROUTABLE = "unroutable"
"""The reason of the records `RabbitMQMessageBroker.unroutable` returns."""

Ready = Callable[[], Awaitable[AbstractConnection]]


def dead_letter_copy(
    record: DeadLetterRecord, properties: spec.Basic.Properties, routing_key: str
) -> Outgoing:
    """The dead letter of a delivery with `properties` and `routing_key`: its
    body and properties, its headers but RabbitMQ's own (``x-``), and the record."""
    headers: dict[str, Any] = {
        k: v for k, v in (properties.headers or {}).items() if not k.startswith("x-")
    }
    for name, value in record.fields().items():
        if name != "data":
            headers[f"{DEAD_LETTER_HEADER}{name}"] = value
    return Outgoing(
        routing_key,
        record.data,
        _persistent(properties, headers),
        f"the dead letter of {quote(str(properties.message_id), 100)} from {record.channel}",
    )


def _persistent(
    properties: spec.Basic.Properties, headers: dict[str, Any]
) -> spec.Basic.Properties:
    """`properties`' content type, message id and type, persistent, with `headers`."""
    return spec.Basic.Properties(
        content_type=properties.content_type,
        delivery_mode=2,
        message_id=properties.message_id,
        message_type=properties.message_type,
        headers=headers,
    )


def record_of(
    headers: Mapping[str, Any], body: bytes, channel: str, message_id: str | None = None
) -> DeadLetterRecord:
    """The record of a message in the dead-letter queue: the one the broker
    wrote in its headers, else what RabbitMQ's ``x-death`` says (a message
    dead-lettered by RabbitMQ itself, from `channel`; its id is its message
    id and the time of its death)."""
    ours = {
        name[len(DEAD_LETTER_HEADER) :]: value
        for name, value in headers.items()
        if name.startswith(DEAD_LETTER_HEADER)
    }
    if ours:
        return DeadLetterRecord.from_fields({**ours, "data": body})
    # Dead-lettered by RabbitMQ itself (a delivery limit set by policy,
    # a message TTL): x-death says why.
    deaths = headers.get("x-death")
    death = deaths[0] if isinstance(deaths, list) and deaths else {}
    if not isinstance(death, dict):
        death = {}
    reason = str(death.get("reason", "unknown"))
    queue = death.get("queue", "?")
    previous = headers.get("x-delivery-count")
    record = DeadLetterRecord.of(
        channel,
        body,
        reason,
        f"dead-lettered by RabbitMQ from queue {quote(str(queue), 200)}: {reason}",
        previous + 1 if isinstance(previous, int) else 1,
        replay_count=replay_count_of(headers),
    )
    at = death.get("time")
    at = at.astimezone(UTC) if isinstance(at, datetime) else None
    name = f"{message_id or record.sha256[:16]}@{int(at.timestamp()) if at else 0}"
    return attrs.evolve(record, id=name, dead_lettered_at=at)


def replayed_copy(message: DeliveredMessage, record: DeadLetterRecord) -> Outgoing:
    """The message a dead letter is replayed as: its body, routing key and
    properties, its headers without the dead-letter record and RabbitMQ's
    own, and the replay counted."""
    properties = message.header.properties
    headers: dict[str, Any] = {
        k: v
        for k, v in (properties.headers or {}).items()
        if not k.startswith((DEAD_LETTER_HEADER, "x-"))
    }
    headers[REPLAY_COUNT_HEADER] = record.replay_count + 1
    return Outgoing(
        message.routing_key or "",
        message.body,
        _persistent(properties, headers),
        f"the replay of dead letter {quote(record.id, 100)} to {quote(record.channel, 200)}",
    )


def unroutable_record(
    body: bytes, routing_key: str, channel: str, exchange: str, message_id: str | None = None
) -> DeadLetterRecord:
    """The record of a message in the unroutable queue, reason `UNROUTABLE`,
    named by its message id (else its hash); RabbitMQ does not say when."""
    record = DeadLetterRecord.of(
        channel,
        body,
        UNROUTABLE,
        f"published to exchange {exchange!r} with routing key {quote(routing_key, 300)!r} "
        "while no queue was bound for it",
    )
    return attrs.evolve(record, id=message_id or record.sha256[:16], dead_lettered_at=None)


async def read_queue(
    ready: Ready,
    queue: str,
    *,
    limit: int,
    timeout: float,
    record: Callable[[DeliveredMessage], DeadLetterRecord],
) -> list[DeadLetterRecord]:
    """Up to `limit` records of the messages of `queue`, oldest first; they stay there."""
    records: list[DeadLetterRecord] = []
    async with _reading(ready, queue, timeout) as channel:
        while len(records) < limit:
            message = await channel.basic_get(queue, no_ack=False)
            if not isinstance(message.delivery, spec.Basic.GetOk):
                break
            records.append(record(message))
    return records


async def take_from_queue(
    ready: Ready,
    queue: str,
    ids: Iterable[str],
    *,
    timeout: float,
    record: Callable[[DeliveredMessage], DeadLetterRecord],
    before_ack: Callable[[DeliveredMessage, DeadLetterRecord], Awaitable[None]] | None = None,
) -> AsyncIterator[DeadLetterRecord]:
    """Walk `queue` for the messages whose record id is one of `ids`; for
    each, await `before_ack` (a replay's publish), acknowledge it, and yield
    its record. Every other message goes back in its place."""
    wanted = set(ids)
    async with _reading(ready, queue, timeout) as channel:
        while wanted:
            with ERRORS.mapped(f"reading {queue}", BrokerUnavailableError):
                async with asyncio.timeout(timeout):
                    message = await channel.basic_get(queue, no_ack=False)
            got = message.delivery
            if not isinstance(got, spec.Basic.GetOk) or got.delivery_tag is None:
                break
            found = record(message)
            if found.id not in wanted:
                continue
            if before_ack is not None:
                await before_ack(message, found)
            with ERRORS.mapped(f"removing a message from {queue}", BrokerUnavailableError):
                async with asyncio.timeout(timeout):
                    await channel.basic_ack(got.delivery_tag)
            wanted.discard(found.id)
            yield found


async def count_queue(ready: Ready, queue: str, *, timeout: float) -> int:
    """How many messages `queue` holds."""
    async with _reading(ready, queue, timeout) as channel:
        declared = await channel.queue_declare(queue, passive=True)
    return declared.message_count or 0


@contextlib.asynccontextmanager
async def _reading(ready: Ready, queue: str, timeout: float) -> AsyncIterator[AbstractChannel]:
    """A channel of its own to read `queue` on; closing it puts back every
    message read and not acknowledged, in its place."""
    with ERRORS.mapped(f"reading {queue}", BrokerUnavailableError):
        async with asyncio.timeout(timeout):
            connection = await ready()
            channel = await connection.channel(publisher_confirms=False)
        try:
            yield channel
        finally:
            await close_quietly(channel)
