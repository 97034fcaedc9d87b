"""Reading a topic subscription's dead-letter sub-queue back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from azure.servicebus import ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient

from brokers.azure._errors import service_bus_errors
from brokers.azure._naming import channel_of, dead_letter_path
from mediator.transport import BrokerUnavailableError, DeadLetterRecord

__all__ = ["peek_dead_letters"]


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
                records.extend(
                    DeadLetterRecord.of(
                        channel_of(message.application_properties) or entity,
                        b"".join(message.body),
                        message.dead_letter_reason or "",
                        message.dead_letter_error_description or "",
                        (message.delivery_count or 0) + 1,
                    )
                    for message in page
                )
                next_number = (page[-1].sequence_number or 0) + 1
    return records
