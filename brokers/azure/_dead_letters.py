"""Reading a topic subscription's dead-letter sub-queue back."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC
from typing import Any

import attrs
from azure.servicebus import ServiceBusReceivedMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient

from brokers.azure._errors import service_bus_errors
from brokers.azure._naming import channel_of, dead_letter_path
from mediator.transport import BrokerUnavailableError, DeadLetterRecord, replay_count_of

__all__ = ["peek_dead_letters", "record_of"]


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
