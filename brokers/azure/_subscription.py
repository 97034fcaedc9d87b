"""Receiving from a topic subscription in peek-lock: deliveries, settlement, lock renewal."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, ClassVar

from azure.servicebus import ServiceBusReceivedMessage, ServiceBusReceiveMode
from azure.servicebus.aio import ServiceBusReceiver
from azure.servicebus.exceptions import (
    MessageLockLostError,
    OperationTimeoutError,
    ServiceBusError,
)

from brokers.azure._errors import RETRY, refused
from brokers.azure._naming import channel_of, replayed_for, subscription_path
from mediator.transport import (
    BrokerUnavailableError,
    DeliveryBase,
    GlobPattern,
    PublishError,
    ReconnectingSubscription,
    being_cancelled,
    quote,
)

if TYPE_CHECKING:
    from brokers.azure._broker import AzureMessageBroker

__all__ = ["DEAD_LETTER_TEXT_LIMIT", "AzureDelivery", "AzureSubscription"]

logger = logging.getLogger("mediator.brokers.azure")

DEAD_LETTER_TEXT_LIMIT = 4096
"""Service Bus keeps at most this many characters of a dead letter's reason and description."""
_PAST_THE_LAST = 2**63 - 1  # a sequence number no message has: a peek from it finds nothing


class AzureDelivery(DeliveryBase):
    """One peek-locked message, settled on the receiver that took it:
    complete (ack), abandon (release) or dead-letter. A settlement Service
    Bus cannot take is logged, never raised."""

    __slots__ = ("_receiver", "_subscription", "message", "received_at")

    def __init__(
        self,
        subscription: AzureSubscription,
        receiver: ServiceBusReceiver,
        message: ServiceBusReceivedMessage,
        channel: str,
    ) -> None:
        # The SDK reports the AMQP header count, which starts at 0.
        super().__init__(channel, b"".join(message.body), (message.delivery_count or 0) + 1)
        self.message = message
        """The SDK's message, for its system properties."""
        self.received_at = asyncio.get_running_loop().time()
        self._receiver = receiver
        self._subscription = subscription

    async def _ack(self) -> None:
        await self._settle("complete", self._receiver.complete_message)

    async def _release(self) -> None:
        await self._settle("abandon", self._receiver.abandon_message)

    async def _dead_letter(self, reason: str, description: str) -> None:
        dead_letter = functools.partial(
            self._receiver.dead_letter_message,
            reason=quote(reason, DEAD_LETTER_TEXT_LIMIT),
            error_description=quote(description, DEAD_LETTER_TEXT_LIMIT),
        )
        self._subscription._renewing.discard(self)
        try:
            await dead_letter(self.message)
        except (ServiceBusError, ValueError) as exc:
            if being_cancelled():
                raise asyncio.CancelledError from exc
            # Not written: said, so that the consumer releases it (or its lock
            # runs out) rather than count a dead letter that is not there.
            raise PublishError(
                f"could not dead-letter message {quote(str(self.message.message_id), 200)} "
                f"({quote(repr(exc))}); it will be delivered again"
            ) from exc

    async def _settle(
        self, outcome: str, settle: Callable[[ServiceBusReceivedMessage], Awaitable[None]]
    ) -> None:
        self._subscription._renewing.discard(self)
        message_id = quote(str(self.message.message_id), 200)
        try:
            await settle(self.message)
        except (ServiceBusError, ValueError) as exc:
            if being_cancelled():
                # Cancelled midway, though the SDK may report it as its own error.
                raise asyncio.CancelledError from exc
            if isinstance(exc, MessageLockLostError):
                logger.warning(
                    "lost the lock of message %s before it was settled (%s); it will be delivered "
                    "again",
                    message_id,
                    outcome,
                )
            elif isinstance(exc, ValueError):
                # The SDK's word for a closed receiver (reopened, or its client
                # closed) or a message settled already: a lock lives on its own link.
                logger.warning(
                    "cannot %s message %s: %s; it will be delivered again once its lock expires",
                    outcome,
                    message_id,
                    quote(str(exc), 200),
                )
            else:
                logger.error(
                    "could not %s message %s (%s); it will be delivered again once its lock "
                    "expires",
                    outcome,
                    message_id,
                    quote(repr(exc)),
                )


class AzureSubscription(ReconnectingSubscription[AzureDelivery]):
    """A peek-lock receiver on one topic subscription, reopened with backoff
    after a ServiceBusError or when its connection went silent; locks are
    renewed while handlers run."""

    logger = logger
    backoff = RETRY
    transient = (ServiceBusError, BrokerUnavailableError)
    renew_within: ClassVar[float] = 10.0
    """Renew a lock once less than this many seconds of it remain (as the SDK's AutoLockRenewer)."""
    renew_check: ClassVar[float] = 1.0
    """Seconds between looks at the locks held."""

    def __init__(self, broker: AzureMessageBroker, pattern: str, group: str) -> None:
        super().__init__(pattern, group, broker=broker)
        self._owner = broker
        self.entity = subscription_path(broker.topic_name, group)
        """The Service Bus path of the topic subscription (``orders/Subscriptions/billing``)."""
        self._matcher = GlobPattern(pattern)
        self._receiver: ServiceBusReceiver | None = None
        self._waiting: deque[AzureDelivery] = deque()
        self._renewing: set[AzureDelivery] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._heard_at = 0.0  # loop time of the last sign that the connection carries data

    async def _connect(self) -> None:
        owner = self._owner
        receiver = owner.client.get_subscription_receiver(
            owner.topic_name,
            self.group or "",
            receive_mode=ServiceBusReceiveMode.PEEK_LOCK,
            prefetch_count=owner.prefetch,
            **owner.receiver_options,
        )
        try:
            await receiver.__aenter__()
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(receiver.close())
            raise
        self._receiver = receiver
        self._heard_at = asyncio.get_running_loop().time()
        if self._renewer is None and owner.lock_renewal > 0:
            self._renewer = asyncio.create_task(self._renew_locks(), name=f"renew {self.entity}")

    async def _receive(self) -> list[AzureDelivery]:
        if not self._waiting:
            receiver = self._receiver
            assert receiver is not None, "the base connects before it receives"
            owner = self._owner
            wait = owner.max_wait_time
            if wait is None or wait > owner.silence_timeout:
                wait = owner.silence_timeout
            messages = await receiver.receive_messages(
                max_message_count=owner.batch_size, max_wait_time=wait
            )
            now = asyncio.get_running_loop().time()
            if messages:
                self._heard_at = now
            elif now - self._heard_at >= owner.silence_timeout:
                await self._check_connection(receiver)
            for message in messages:
                await self._take(receiver, message)
        # One at a time, so that what the consumer never took is known (and
        # abandoned on close); the locks of the whole batch are renewed meanwhile.
        return [self._waiting.popleft()] if self._waiting else []

    async def _check_connection(self, receiver: ServiceBusReceiver) -> None:
        # An empty receive cannot tell an idle subscription from a connection
        # gone silent (the SDK asks for no heartbeats), but a peek must be
        # answered. Peeking past the last message asks for nothing.
        silence = self._owner.silence_timeout
        try:
            await receiver.peek_messages(
                max_message_count=1, sequence_number=_PAST_THE_LAST, timeout=silence
            )
        except OperationTimeoutError as exc:
            raise BrokerUnavailableError(
                f"Service Bus sent no message on {self.entity} for "
                f"{asyncio.get_running_loop().time() - self._heard_at:.1f}s and answered no peek "
                f"within {silence:g}s: the connection went silent (a network partition, a dead "
                "peer)"
            ) from exc
        self._heard_at = asyncio.get_running_loop().time()

    async def _take(self, receiver: ServiceBusReceiver, message: ServiceBusReceivedMessage) -> None:
        properties = message.application_properties
        channel = channel_of(properties)
        replayed = replayed_for(properties) if properties else None
        if (channel is not None and not self._matcher.matches(channel)) or (
            replayed is not None and replayed != self.group
        ):
            # Not for this pattern, or a replay for another subscription: take
            # it off. A SQL rule on the subscription keeps the first kind away.
            logger.debug(
                "completing %s from %s: outside %s or replayed for %s",
                quote(str(message.message_id), 200),
                quote(channel),
                quote(self.pattern, 200),
                quote(replayed, 200),
            )
            try:
                await receiver.complete_message(message)
            except (ServiceBusError, ValueError) as exc:
                logger.warning("could not complete an unmatched message: %s", quote(repr(exc)))
            return
        # Without the property the codec decides: bad input is dead-lettered.
        delivery = AzureDelivery(
            self, receiver, message, channel or f"{self._owner.channel_prefix}:?"
        )
        self._waiting.append(delivery)
        self._renewing.add(delivery)

    async def _renew_locks(self) -> None:
        # One task per subscription, cancelled at once on close; the SDK's
        # AutoLockRenewer runs one per message and close() waits for each.
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.renew_check)
            now = datetime.now(UTC)
            for delivery in list(self._renewing):
                if loop.time() - delivery.received_at > self._owner.lock_renewal:
                    self._renewing.discard(delivery)
                    continue
                locked_until = delivery.message.locked_until_utc
                if locked_until is None or (locked_until - now).total_seconds() > self.renew_within:
                    continue
                try:
                    await delivery._receiver.renew_message_lock(delivery.message)
                except (ServiceBusError, ValueError) as exc:
                    self._renewing.discard(delivery)
                    logger.warning(
                        "could not renew the lock of message %s (%s); it will be delivered again "
                        "once the lock expires",
                        quote(str(delivery.message.message_id), 200),
                        quote(repr(exc)),
                    )

    async def _disconnect(self) -> None:
        receiver, self._receiver = self._receiver, None
        if receiver is None:
            return
        # Its locks cannot be renewed (or settled) on another receiver.
        self._renewing = {d for d in self._renewing if d._receiver is not receiver}
        try:
            await receiver.close()
        except Exception:  # the link is gone already
            logger.debug("closing a receiver on %s failed", self.entity, exc_info=True)

    def _fatal(self, error: BaseException) -> BaseException | None:
        return refused(self.entity, "receiving from", error)

    async def _closing(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.wait([self._renewer])
        # What a receive returned that the consumer never took goes straight back.
        waiting = list(self._waiting)
        self._waiting.clear()
        await asyncio.gather(*(delivery.release() for delivery in waiting))
