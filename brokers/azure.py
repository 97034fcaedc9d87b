"""Azure Service Bus: a topic for publishing, topic subscriptions in peek-lock.

Delivery guarantee: at-least-once. A message stays in its subscription until
a consumer completes it after its handlers succeeded; a message abandoned,
or whose lock expired, is delivered again with a higher delivery count;
dead-lettered messages go to the subscription's own dead-letter sub-queue
(``<topic>/Subscriptions/<name>/$DeadLetterQueue``).

- Each envelope becomes one ``ServiceBusMessage``: the JSON body,
  ``content_type="application/json"``, ``message_id`` = the envelope's id
  (so duplicate detection works), ``subject`` = the event name, the
  correlation id from the headers, and application properties
  ``message_type``, ``message_name`` and ``channel`` (the logical channel),
  so subscription rules can filter without reading the body.
- Logical channel: ``{prefix}:{message_type}:{message_name}``; the prefix
  defaults to the topic name.
- A consumer group is a topic subscription: ``subscribe(pattern,
  group="billing")`` receives from subscription ``billing``, which must exist
  in Azure. Every subscription gets every message its rules let through;
  the receivers of one subscription compete for its messages.
- The glob pattern is matched on the client against the ``channel``
  property; messages it does not match are completed (taken off that
  subscription). Give the subscription a SQL rule (`sql_filter`) so that
  Azure only delivers what the pattern wants. One subscription serves one
  pattern: a second, different pattern on the same subscription is refused,
  since its receivers would compete for (and drop) each other's messages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

try:
    from azure.servicebus import (
        ServiceBusMessage,
        ServiceBusReceivedMessage,
        ServiceBusReceiveMode,
    )
    from azure.servicebus.aio import (
        AutoLockRenewer,
        ServiceBusClient,
        ServiceBusReceiver,
        ServiceBusSender,
    )
    from azure.servicebus.exceptions import (
        MessageAlreadySettled,
        MessageLockLostError,
        MessageSizeExceededError,
        MessagingEntityNotFoundError,
        ServiceBusAuthenticationError,
        ServiceBusAuthorizationError,
        ServiceBusError,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "brokers.azure needs azure-servicebus: pip install 'mediator-toolkit[azure]'"
    ) from exc

from mediator._exceptions import MediatorError, MessageTooLargeError, PublishError
from mediator._message import Message, encode_message
from mediator._patterns import GlobPattern
from mediator._policies import Backoff
from mediator.transport import BrokerLifecycle, DeliveryGuarantee, Reconnection

__all__ = [
    "AzureDelivery",
    "AzureMessageBroker",
    "AzureSubscription",
    "CredentialError",
    "EntityNotFoundError",
    "sql_filter",
]

logger = logging.getLogger("mediator.brokers.azure")

_RETRY = Backoff(initial=0.2, multiplier=2, maximum=10.0, jitter=0.2)
_CREDENTIAL_ERRORS = (ServiceBusAuthenticationError, ServiceBusAuthorizationError)


class CredentialError(PublishError, PermissionError):
    """Service Bus refused the credential: wrong, expired, or without the right."""


class EntityNotFoundError(MediatorError, LookupError):
    """The topic or topic subscription does not exist in the namespace."""


def _not_found(what: str, exc: BaseException) -> EntityNotFoundError:
    return EntityNotFoundError(
        f"{what} does not exist in the Service Bus namespace ({exc}); create it (portal, "
        "az servicebus topic subscription create, or ServiceBusAdministrationClient)"
    )


def _credential_error(what: str, exc: BaseException) -> CredentialError:
    return CredentialError(
        f"Azure Service Bus refused the credential while {what}: {exc}. Check the "
        "connection string or the credential: it may be wrong, expired, or lack the "
        "Send/Listen right on this entity"
    )


def sql_filter(pattern: str, property_name: str = "channel") -> str | None:
    """A Service Bus SQL rule matching what `pattern` matches, or None when
    the glob has a ``[...]`` set, which SQL ``LIKE`` cannot express (the
    client-side match still applies). ``?`` becomes ``_``, one character,
    where the glob's ``?`` is one byte: the two agree on ASCII channels.

    ```python
    assert sql_filter("shop:notification_event:Order*") == (
        "channel LIKE 'shop:notification!_event:Order%' ESCAPE '!'"
    )
    ```
    """
    out: list[str] = []
    chars = iter(pattern)
    for char in chars:
        if char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        elif char == "[":
            return None
        else:
            if char == "\\":
                char = next(chars, "\\")
            if char in "%_!":
                out.append("!")
            out.append("''" if char == "'" else char)
    return f"{property_name} LIKE '{''.join(out)}' ESCAPE '!'"


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


class AzureDelivery:
    """One peek-locked message; settling it completes, abandons or dead-letters it."""

    __slots__ = ("_message", "_subscription", "channel", "data", "delivery_count")

    def __init__(
        self, subscription: AzureSubscription, message: ServiceBusReceivedMessage, channel: str
    ) -> None:
        self._subscription = subscription
        self._message = message
        self.channel = channel
        self.data = b"".join(message.body)
        # The SDK reports the AMQP header count, which starts at 0.
        self.delivery_count = (message.delivery_count or 0) + 1

    @property
    def message(self) -> ServiceBusReceivedMessage:
        """The SDK's message, for its system properties."""
        return self._message

    async def ack(self) -> None:
        """Complete the message: it leaves the subscription."""
        await self._subscription._settle(self, "complete")

    async def release(self) -> None:
        """Abandon the message: it is delivered again, its delivery count + 1."""
        await self._subscription._settle(self, "abandon")

    async def dead_letter(self, reason: str, description: str) -> None:
        """Move it to the subscription's dead-letter sub-queue with the reason."""
        await self._subscription._settle(self, "dead_letter", reason, description)


class AzureSubscription:
    """A peek-lock receiver on one topic subscription, reopened with backoff
    after transient errors; locks are renewed while handlers run."""

    def __init__(self, broker: AzureMessageBroker, pattern: str, group: str) -> None:
        self._broker = broker
        self.pattern = pattern
        self.group: str | None = group
        self._matcher = GlobPattern(pattern)
        self._receiver: ServiceBusReceiver | None = None
        self._renewer = AutoLockRenewer(max_lock_renewal_duration=broker.lock_renewal)
        self._waiting: list[ServiceBusReceivedMessage] = []
        self._closed = False

    async def _open(self) -> None:
        broker = self._broker
        options: dict[str, Any] = {
            "receive_mode": ServiceBusReceiveMode.PEEK_LOCK,
            "prefetch_count": broker.prefetch,
            **broker.receiver_options,
        }
        receiver = broker.client.get_subscription_receiver(
            broker.topic_name, self.group or "", **options
        )
        try:
            await receiver.__aenter__()
        except BaseException:
            await asyncio.shield(receiver.close())
            raise
        self._receiver = receiver

    def _is_closed(self) -> bool:
        return self._closed

    def __aiter__(self) -> AsyncIterator[AzureDelivery]:
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[AzureDelivery]:
        broker = self._broker
        retry = Reconnection(logger, _RETRY)
        while not self._is_closed():
            try:
                if self._receiver is None:
                    await self._open()
                receiver = self._receiver
                assert receiver is not None
                messages = await receiver.receive_messages(
                    max_message_count=broker.batch_size, max_wait_time=broker.max_wait_time
                )
                retry.succeeded()
            except _CREDENTIAL_ERRORS as exc:
                raise _credential_error(
                    f"receiving from {broker.topic_name}/{self.group}", exc
                ) from exc
            except MessagingEntityNotFoundError as exc:
                raise _not_found(f"subscription {broker.topic_name}/{self.group}", exc) from exc
            except ServiceBusError as exc:
                if await retry.pause(
                    f"receiving from {broker.topic_name}/{self.group} failed",
                    exc,
                    closed=self._is_closed(),
                    then="reopening",
                    before_wait=self._drop,
                ):
                    continue
                return
            # Locks of the whole batch are renewed from receipt, not from when
            # the consumer gets to each message; what it never gets to is
            # abandoned on close.
            self._waiting = list(messages)
            for message in messages:
                if broker.lock_renewal > 0:
                    self._renewer.register(receiver, message)
            while self._waiting:
                message = self._waiting.pop(0)
                delivery = await self._delivery(receiver, message)
                if delivery is not None:
                    yield delivery

    async def _delivery(
        self, receiver: ServiceBusReceiver, message: ServiceBusReceivedMessage
    ) -> AzureDelivery | None:
        properties = message.application_properties or {}
        channel = _text(properties.get(b"channel", properties.get("channel")))
        if channel is not None and not self._matcher.matches(channel):
            # Not for this pattern: take it off the subscription. A SQL rule
            # on the subscription keeps such messages away in the first place.
            logger.debug(
                "completing %s on %s: outside %r", message.message_id, channel, self.pattern
            )
            try:
                await receiver.complete_message(message)
            except ServiceBusError as exc:
                logger.warning("could not complete an unmatched message: %r", exc)
            return None
        # Without the property the codec decides: bad input is dead-lettered.
        return AzureDelivery(self, message, channel or f"{self._broker.channel_prefix}:?")

    async def _settle(
        self, delivery: AzureDelivery, outcome: str, reason: str = "", description: str = ""
    ) -> None:
        receiver = self._receiver
        message = delivery.message
        if receiver is None:
            logger.warning(
                "cannot %s message %s: its receiver is closed; it will be delivered again",
                outcome,
                message.message_id,
            )
            return
        try:
            if outcome == "complete":
                await receiver.complete_message(message)
            elif outcome == "abandon":
                await receiver.abandon_message(message)
            else:
                await receiver.dead_letter_message(
                    message, reason=reason, error_description=description
                )
        except MessageLockLostError:
            logger.warning(
                "lost the lock of message %s before it was settled (%s); Service Bus will "
                "deliver it again",
                message.message_id,
                outcome,
            )
        except MessageAlreadySettled:
            logger.warning("message %s was already settled", message.message_id)
        except ServiceBusError as exc:
            logger.error(
                "could not %s message %s (%r); it is delivered again once its lock expires",
                outcome,
                message.message_id,
                exc,
            )

    async def _drop(self) -> None:
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            try:
                await receiver.close()
            except Exception:  # the link is gone already
                logger.debug("closing a broken receiver failed", exc_info=True)

    async def close(self) -> None:
        """Stop receiving; messages not yet settled are delivered again later."""
        if self._closed:
            return
        self._closed = True
        self._broker._subscriptions.discard(self)
        waiting, self._waiting = self._waiting, []
        receiver = self._receiver
        if receiver is not None:
            for message in waiting:
                try:
                    await receiver.abandon_message(message)
                except ServiceBusError as exc:
                    logger.debug("could not abandon %s on close: %r", message.message_id, exc)
        await self._renewer.close()
        await self._drop()


class AzureMessageBroker(BrokerLifecycle):
    """Publishes envelopes to a Service Bus topic; receives from its subscriptions.

    ```python
    from azure.servicebus.aio import ServiceBusClient
    client = ServiceBusClient.from_connection_string(connection_string)
    broker = AzureMessageBroker(client, "orders", timeout=15)
    ```

    The client is yours: the broker opens one topic sender on first use and
    closes it on `stop()`, never the client (except one `from_connection_string`
    made).
    """

    delivery_guarantee = DeliveryGuarantee.AT_LEAST_ONCE

    def __init__(
        self,
        client: ServiceBusClient,
        topic_name: str,
        timeout: float | None = None,
        *,
        channel_prefix: str | None = None,
        subscription: str | None = None,
        prefetch: int = 0,
        batch_size: int = 16,
        max_wait_time: float | None = 5.0,
        lock_renewal: float = 300.0,
        publish_attempts: int = 3,
        sender_options: Mapping[str, Any] | None = None,
        receiver_options: Mapping[str, Any] | None = None,
    ) -> None:
        if publish_attempts < 1:
            raise ValueError(f"publish_attempts must be at least 1, got {publish_attempts}")
        self.client = client
        self.topic_name = topic_name
        self.timeout = timeout
        self.channel_prefix = channel_prefix if channel_prefix is not None else topic_name
        self.subscription = subscription
        self.prefetch = prefetch
        self.batch_size = batch_size
        self.max_wait_time = max_wait_time
        self.lock_renewal = lock_renewal
        self.publish_attempts = publish_attempts
        # Passed as they are to get_topic_sender / get_subscription_receiver
        # (e.g. socket_timeout, keep_alive): the SDK reads them only there.
        self.sender_options: dict[str, Any] = dict(sender_options or {})
        self.receiver_options: dict[str, Any] = dict(receiver_options or {})
        self._sender: ServiceBusSender | None = None
        self._sender_lock = asyncio.Lock()
        self._subscriptions: set[AzureSubscription] = set()
        self._owns_client = False

    @classmethod
    def from_connection_string(
        cls, connection_string: str, topic_name: str, **options: Any
    ) -> AzureMessageBroker:
        """A broker with its own client; `stop()` closes that client."""
        broker = cls(
            ServiceBusClient.from_connection_string(connection_string), topic_name, **options
        )
        broker._owns_client = True
        return broker

    @classmethod
    def from_credential(
        cls, fully_qualified_namespace: str, credential: Any, topic_name: str, **options: Any
    ) -> AzureMessageBroker:
        """A broker with its own client for a namespace and an azure-identity
        credential (``DefaultAzureCredential()``); `stop()` closes that client."""
        broker = cls(ServiceBusClient(fully_qualified_namespace, credential), topic_name, **options)
        broker._owns_client = True
        return broker

    def channel(self, message: Message) -> str:
        """The logical channel of `message`: ``{prefix}:{message_type}:{message_name}``."""
        return f"{self.channel_prefix}:{message.message_type}:{message.message_name}"

    def to_service_bus(self, message: Message) -> ServiceBusMessage:
        """The ServiceBusMessage that carries `message`."""
        return ServiceBusMessage(
            encode_message(message),
            content_type="application/json",
            message_id=str(message.message_id),
            subject=message.message_name,
            correlation_id=message.headers.get("correlation_id"),
            application_properties={
                "message_type": message.message_type,
                "message_name": message.message_name,
                "channel": self.channel(message),
            },
        )

    # -- publish -----------------------------------------------------------

    async def send_message(self, message: Message) -> None:
        """Send one envelope to the topic."""
        await self.send_messages((message,))

    async def send_messages(self, messages: Sequence[Message]) -> None:
        """Send envelopes in order, in as few ``ServiceBusMessageBatch`` es as
        the size limit allows; transient errors are retried with backoff.

        Raises MessageTooLargeError for a single message over the limit,
        CredentialError when the credential is refused, and PublishError when
        the attempts run out. A retried batch may repeat messages already
        sent; Service Bus duplicate detection (by message id) drops them.
        """
        outgoing = [self.to_service_bus(message) for message in messages]
        names = ", ".join(m.message_name for m in messages)
        attempt = 0
        while True:
            attempt += 1
            try:
                # Even one message goes in a batch: adding it checks the size
                # against the limit the link announced, before anything is sent.
                await self._send_batches(await self._get_sender(), outgoing)
                return
            except MessageSizeExceededError as exc:
                # Raised by _send_batches for one message: the name is on it.
                raise MessageTooLargeError(
                    f"{exc.args[0] if exc.args else names} does not fit in one Service Bus "
                    "message; send less data per event or raise the namespace's message size "
                    "limit"
                ) from exc
            except _CREDENTIAL_ERRORS as exc:
                raise _credential_error(f"sending {names} to {self.topic_name}", exc) from exc
            except ServiceBusError as exc:
                if attempt >= self.publish_attempts:
                    raise PublishError(
                        f"could not send {names} to topic {self.topic_name} after {attempt} "
                        f"attempts: {exc}"
                    ) from exc
                delay = _RETRY.delay(attempt)
                logger.warning(
                    "sending to %s failed (%r); retrying in %.2fs", self.topic_name, exc, delay
                )
                await self._close_sender()
                await asyncio.sleep(delay)

    async def _send_batches(
        self, sender: ServiceBusSender, outgoing: list[ServiceBusMessage]
    ) -> None:
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
            await sender.send_messages(batch, timeout=self.timeout)

    async def _get_sender(self) -> ServiceBusSender:
        if self._sender is None:
            async with self._sender_lock:
                if self._sender is None:
                    self._sender = self.client.get_topic_sender(
                        self.topic_name, **self.sender_options
                    )
        return self._sender

    async def _close_sender(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            try:
                await sender.close()
            except Exception:
                logger.debug("closing a broken sender failed", exc_info=True)

    # -- subscribe ---------------------------------------------------------

    async def subscribe(self, pattern: str, *, group: str | None = None) -> AzureSubscription:
        """Receive from topic subscription `group` (or the broker's
        `subscription`) the messages whose channel matches `pattern`;
        returns once the receiver link is open."""
        name = group or self.subscription
        if name is None:
            raise ValueError(
                "Azure Service Bus delivers from topic subscriptions: pass "
                "subscribe(pattern, group='<subscription name>') or "
                "AzureMessageBroker(..., subscription='<subscription name>')"
            )
        for other in self._subscriptions:
            if other.group == name and other.pattern != pattern:
                raise ValueError(
                    f"subscription {name!r} already receives {other.pattern!r}; receivers of one "
                    "Service Bus subscription compete for its messages, so a second pattern "
                    "would take (and drop) messages meant for the first. Give each pattern a "
                    "subscription of its own: subscribe(pattern, group='<another subscription>')"
                )
        subscription = AzureSubscription(self, pattern, name)
        try:
            await subscription._open()
        except _CREDENTIAL_ERRORS as exc:
            raise _credential_error(f"opening {self.topic_name}/{name}", exc) from exc
        except MessagingEntityNotFoundError as exc:
            raise _not_found(f"subscription {self.topic_name}/{name}", exc) from exc
        self._subscriptions.add(subscription)
        return subscription

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Nothing to open yet: the sender opens on the first send (so a
        consumer with only the Listen right never needs Send), a receiver on
        each subscribe; credential errors surface there."""

    async def stop(self) -> None:
        """Close the subscriptions and the sender this broker opened (the
        client too if `from_connection_string` or `from_credential` made it)."""
        for subscription in list(self._subscriptions):
            await subscription.close()
        await self._close_sender()
        if self._owns_client:
            await self.client.close()
