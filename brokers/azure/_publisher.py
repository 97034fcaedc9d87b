"""Sending envelopes to the topic: one sender, batches filled to the size limit, retries."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusSender
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    OperationTimeoutError,
    ServiceBusError,
)

from brokers.azure._errors import RETRY, refused, service_bus_errors
from mediator.transport import Message, MessageTooLargeError, PublishError, quote

if TYPE_CHECKING:
    from brokers.azure._broker import AzureMessageBroker

__all__ = ["TopicPublisher", "send_in_batches", "service_bus_message"]

logger = logging.getLogger("mediator.brokers.azure")


def service_bus_message(message: Message, body: bytes, channel: str) -> ServiceBusMessage:
    """The ServiceBusMessage that carries `message`, encoded as `body`, on `channel`."""
    return ServiceBusMessage(
        body,
        content_type="application/json",
        message_id=str(message.message_id),
        subject=message.message_name,
        correlation_id=message.headers.get("correlation_id"),
        application_properties={
            "message_type": message.message_type,
            "message_name": message.message_name,
            "channel": channel,
        },
    )


async def send_in_batches(
    sender: ServiceBusSender, outgoing: list[ServiceBusMessage], timeout: float | None
) -> None:
    """Send `outgoing` in order, in as few batches as the link's size limit
    allows; a message that fits in no batch raises MessageSizeExceededError
    naming it, before anything is sent."""
    # Fill every batch first, so a message over the limit is refused
    # before any of the others has gone out.
    batches = [await sender.create_message_batch()]
    for message in outgoing:
        try:
            batches[-1].add_message(message)
        except MessageSizeExceededError:
            if len(batches[-1]):
                batches.append(await sender.create_message_batch())
                try:
                    batches[-1].add_message(message)
                    continue
                except MessageSizeExceededError:
                    pass
            raise MessageSizeExceededError(
                message=f"{message.subject} ({message.message_id})"
            ) from None
    for batch in batches:
        await sender.send_messages(batch, timeout=timeout)


class TopicPublisher:
    """A broker's one sender on its topic, opened on the first send and kept
    until closed; a failed send is retried with backoff."""

    def __init__(self, broker: AzureMessageBroker) -> None:
        self._broker = broker
        self._sender: ServiceBusSender | None = None

    def sender(self) -> ServiceBusSender:
        """The sender, created on first use."""
        # Creating a sender opens nothing; its link opens on the first send.
        if self._sender is None:
            broker = self._broker
            self._sender = broker.client.get_topic_sender(
                broker.topic_name, **broker.sender_options
            )
        return self._sender

    async def send(self, outgoing: list[ServiceBusMessage], names: str) -> None:
        """Send `outgoing` (the messages `names` names), up to the broker's
        `publish_attempts` times."""
        broker = self._broker
        topic = f"topic {broker.topic_name}"
        with service_bus_errors(topic, "sending to", PublishError):
            for attempt in range(1, broker.publish_attempts + 1):
                sender = self.sender()
                try:
                    # Even one message goes in a batch: adding it checks the size
                    # against the limit the link announced, before anything is sent.
                    await send_in_batches(sender, outgoing, broker.timeout)
                    return
                except MessageSizeExceededError as exc:
                    # Raised by send_in_batches for one message: the name is on it.
                    raise MessageTooLargeError(
                        f"{exc.args[0] if exc.args else names} does not fit in one Service Bus "
                        "message; send less data per event or raise the namespace's message "
                        "size limit"
                    ) from exc
                except ServiceBusError as exc:
                    if refused(topic, "sending to", exc) is not None:
                        raise
                    if attempt == broker.publish_attempts:
                        raise PublishError(
                            f"could not send {names} to {topic} after {attempt} attempts: "
                            f"{quote(str(exc))}"
                        ) from exc
                    delay = RETRY.delay(attempt)
                    logger.warning(
                        "sending to %s failed (%s); retrying in %.2fs",
                        topic,
                        quote(repr(exc)),
                        delay,
                    )
                    if isinstance(exc, OperationTimeoutError) and self._sender is sender:
                        # No answer in time: the connection may have gone silent,
                        # and the SDK would keep using it. After other errors the
                        # SDK reopens the link itself if they broke it.
                        await self.close()
                    await asyncio.sleep(delay)

    async def close(self) -> None:
        """Close the sender, if one is open; the next send opens another."""
        sender, self._sender = self._sender, None
        if sender is not None:
            try:
                await sender.close()
            except Exception:
                logger.debug(
                    "closing the sender on %s failed", self._broker.topic_name, exc_info=True
                )
