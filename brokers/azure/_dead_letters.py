"""A topic subscription's dead-letter sub-queue: reading it back, and taking
messages off it for a replay or a purge."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import UTC
from typing import Any

import attrs
from azure.servicebus import (
    ServiceBusMessage,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus.aio import ServiceBusClient

from brokers.azure._errors import service_bus_errors
from brokers.azure._naming import REPLAY_FOR, channel_of, dead_letter_path
from mediator.transport import (
    REPLAY_COUNT_HEADER,
    BrokerUnavailableError,
    DeadLetterRecord,
    replay_count_of,
)

__all__ = ["peek_dead_letters", "record_of", "replayed_message", "take_dead_letters"]

_WAIT = 1.0
"""Seconds a walk of the sub-queue waits for its next messages before it is done."""


def replayed_message(message: ServiceBusReceivedMessage, subscription: str) -> ServiceBusMessage:
    """The message a dead letter is replayed as: its body, message id,
    subject, correlation id and application properties, the replay counted
    and the subscription named."""
    properties: dict[str | bytes, Any] = {
        (k.decode() if isinstance(k, bytes) else k): v
        for k, v in (message.application_properties or {}).items()
    }
    properties[REPLAY_COUNT_HEADER] = replay_count_of(properties) + 1
    properties[REPLAY_FOR] = subscription
    return ServiceBusMessage(
        b"".join(message.body),
        content_type=message.content_type,
        message_id=message.message_id,
        subject=message.subject,
        correlation_id=message.correlation_id,
        application_properties=properties,
    )


async def take_dead_letters(
    client: ServiceBusClient,
    topic_name: str,
    subscription: str,
    ids: Iterable[str],
    *,
    receiver_options: Mapping[str, Any],
    before_complete: Callable[[ServiceBusReceivedMessage], Awaitable[None]] | None = None,
) -> AsyncIterator[DeadLetterRecord]:
    """Walk the dead-letter sub-queue of `subscription` for the messages whose
    sequence number is one of `ids`; for each, await `before_complete` (a
    replay's send), complete it and yield its record. Every other message
    received is abandoned at the end, so it stays (its delivery count + 1)."""
    entity = dead_letter_path(topic_name, subscription)
    wanted = set(ids)
    held: list[ServiceBusReceivedMessage] = []
    with service_bus_errors(entity, "taking dead letters from", BrokerUnavailableError):
        async with client.get_subscription_receiver(
            topic_name,
            subscription,
            sub_queue=ServiceBusSubQueue.DEAD_LETTER,
            receive_mode=ServiceBusReceiveMode.PEEK_LOCK,
            **receiver_options,
        ) as receiver:
            try:
                while wanted:
                    batch = await receiver.receive_messages(
                        max_message_count=100, max_wait_time=_WAIT
                    )
                    if not batch:
                        break
                    for message in batch:
                        name = str(message.sequence_number)
                        if name not in wanted:
                            held.append(message)
                            continue
                        if before_complete is not None:
                            await before_complete(message)
                        await receiver.complete_message(message)
                        wanted.discard(name)
                        yield record_of(message, entity)
            finally:
                for message in held:
                    await receiver.abandon_message(message)


def record_of(message: ServiceBusReceivedMessage, entity: str) -> DeadLetterRecord:
    """The record of a message of the dead-letter sub-queue `entity`, named by
    its sequence number and dated by its enqueued time."""
    properties = message.application_properties
    record = DeadLetterRecord.of(
        channel_of(properties) or entity,
        b"".join(message.body),
        message.dead_letter_reason or "",
        message.dead_letter_error_description or "",
        (message.delivery_count or 0) + 1,
        replay_count=replay_count_of(properties),
    )
    at = message.enqueued_time_utc
    return attrs.evolve(
        record,
        id=str(message.sequence_number),
        dead_lettered_at=at.astimezone(UTC) if at is not None else None,
    )


async def peek_dead_letters(
    client: ServiceBusClient,
    topic_name: str,
    subscription: str,
    *,
    limit: int,
    receiver_options: Mapping[str, Any],
) -> list[DeadLetterRecord]:
    """Up to `limit` dead letters of `subscription`, oldest first, peeked so
    that they stay there."""
    entity = dead_letter_path(topic_name, subscription)
    records: list[DeadLetterRecord] = []
    with service_bus_errors(entity, "peeking at", BrokerUnavailableError):
        async with client.get_subscription_receiver(
            topic_name,
            subscription,
            sub_queue=ServiceBusSubQueue.DEAD_LETTER,
            **receiver_options,
        ) as receiver:
            next_number = 0  # the SDK reads 0 as "from the first"
            while len(records) < limit:
                page = await receiver.peek_messages(
                    max_message_count=limit - len(records), sequence_number=next_number
                )
                if not page:
                    break
                records.extend(record_of(message, entity) for message in page)
                next_number = (page[-1].sequence_number or 0) + 1
    return records
