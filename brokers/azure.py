"""Azure Service Bus: a topic for publishing, topic subscriptions in peek-lock.

Delivery guarantee: at-least-once. A message stays in its subscription until
a consumer completes it after its handlers succeeded; a message abandoned,
or whose lock expired, is delivered again with a higher delivery count;
dead-lettered messages go to the subscription's own dead-letter sub-queue
(``<topic>/Subscriptions/<name>/$DeadLetterQueue``), which `dead_letters()`
reads back.

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

Lifecycle, reconnection and settle-once come from `mediator.transport`; this
module holds what azure-servicebus needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

try:
    from azure.servicebus import (
        ServiceBusMessage,
        ServiceBusReceivedMessage,
        ServiceBusReceiveMode,
        ServiceBusSubQueue,
    )
    from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver, ServiceBusSender
    from azure.servicebus.exceptions import (
        MessageLockLostError,
        MessageSizeExceededError,
        MessagingEntityNotFoundError,
        OperationTimeoutError,
        ServiceBusAuthenticationError,
        ServiceBusAuthorizationError,
        ServiceBusError,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "brokers.azure needs azure-servicebus: pip install 'mediator-toolkit[azure]'"
    ) from exc

from mediator.transport import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Backoff,
    BrokerLifecycle,
    BrokerUnavailableError,
    CredentialError,
    DeadLetterRecord,
    DeliveryBase,
    DeliveryGuarantee,
    EntityNotFoundError,
    ErrorRow,
    ErrorTable,
    GlobPattern,
    Message,
    MessageTooLargeError,
    PublishError,
    ReconnectingSubscription,
    TransportError,
    being_cancelled,
    channel_for,
    quote,
)

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
DEAD_LETTER_TEXT_LIMIT = 4096
"""Service Bus keeps at most this many characters of a dead letter's reason and description."""
_PAST_THE_LAST = 2**63 - 1  # a sequence number no message has: a peek from it finds nothing


_ERRORS = ErrorTable(
    sdk=(ServiceBusError,),
    rows=[
        ErrorRow(
            _CREDENTIAL_ERRORS,
            CredentialError,
            "Azure Service Bus refused the credential: check the connection string or the "
            "credential; it may be wrong, expired, or lack the Send/Listen right on this entity",
        ),
        ErrorRow(
            MessagingEntityNotFoundError,
            EntityNotFoundError,
            "it does not exist in the Service Bus namespace: create it (in the portal, with "
            "az servicebus, or with ServiceBusAdministrationClient)",
        ),
    ],
)
"""How the SDK's errors become the library's: a row is a refusal retrying
cannot mend; anything else is the error the call site names."""


def _refused(entity: str, doing: str, exc: BaseException) -> TransportError | None:
    """The library's error for an SDK error that retrying cannot mend, else None."""
    if _ERRORS.row(exc) is None:
        return None
    return _ERRORS.lift(exc, f"{doing} {entity}", TransportError)


def _service_bus_errors(
    entity: str, doing: str, otherwise: type[TransportError]
) -> contextlib.AbstractContextManager[None]:
    """`_ERRORS` around a call that is `doing` something to `entity`."""
    return _ERRORS.mapped(f"{doing} {entity}", otherwise)


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


def _channel_of(message: ServiceBusReceivedMessage) -> str | None:
    properties = message.application_properties or {}
    value = properties.get(b"channel", properties.get("channel"))
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


class AzureDelivery(DeliveryBase):
    """One peek-locked message, settled on the receiver that took it:
    complete (ack), abandon (release) or dead-letter.

    A settlement Service Bus cannot take (the lock was lost, or the receiver
    was closed by a reconnect or by closing the client) is logged, never
    raised: the message is delivered again once its lock expires.
    """

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
    renewed while handlers run.

    A refused credential or a missing subscription ends iteration with
    `CredentialError` or `EntityNotFoundError` instead of a retry.
    """

    logger = logger
    backoff = _RETRY
    transient = (ServiceBusError, BrokerUnavailableError)
    renew_within: ClassVar[float] = 10.0
    """Renew a lock once less than this many seconds of it remain (as the SDK's AutoLockRenewer)."""
    renew_check: ClassVar[float] = 1.0
    """Seconds between looks at the locks held."""

    def __init__(self, broker: AzureMessageBroker, pattern: str, group: str) -> None:
        super().__init__(pattern, group, broker=broker)
        self._owner = broker
        self.entity = f"{broker.topic_name}/Subscriptions/{group}"
        """The Service Bus path of the topic subscription."""
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
        channel = _channel_of(message)
        if channel is not None and not self._matcher.matches(channel):
            # Not for this pattern: take it off the subscription. A SQL rule
            # on the subscription keeps such messages away in the first place.
            logger.debug(
                "completing %s from %s: outside %s",
                quote(str(message.message_id), 200),
                quote(channel),
                quote(self.pattern, 200),
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
        return _refused(self.entity, "receiving from", error)

    async def _closing(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.wait([self._renewer])
        # What a receive returned that the consumer never took goes straight back.
        waiting = list(self._waiting)
        self._waiting.clear()
        await asyncio.gather(*(delivery.release() for delivery in waiting))


class AzureMessageBroker(BrokerLifecycle):
    """Publishes envelopes to a Service Bus topic; receives from its subscriptions.

    ```python
    from azure.servicebus.aio import ServiceBusClient
    client = ServiceBusClient.from_connection_string(connection_string)
    broker = AzureMessageBroker(client, "orders", timeout=15)
    ```

    The client is yours: the broker opens one topic sender on the first
    publish (so a consumer with only the Listen right never needs Send) and a
    receiver on each subscribe; `stop()` closes them, never the client (except
    one `from_connection_string` or `from_credential` made).
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
        silence_timeout: float = 15.0,
        sender_options: Mapping[str, Any] | None = None,
        receiver_options: Mapping[str, Any] | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        if publish_attempts < 1:
            raise ValueError(f"publish_attempts must be at least 1, got {publish_attempts}")
        if not silence_timeout > 0:
            raise ValueError(f"silence_timeout must be above 0, got {silence_timeout}")
        super().__init__(max_message_size=max_message_size)
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
        self.silence_timeout = silence_timeout
        """Seconds a receiver may go without a message before it checks its
        connection with a peek, and then for the answer; see the docs' "Connections"."""
        # Passed as they are to get_topic_sender / get_subscription_receiver
        # (e.g. socket_timeout, keep_alive): the SDK reads them only there.
        self.sender_options: dict[str, Any] = dict(sender_options or {})
        self.receiver_options: dict[str, Any] = dict(receiver_options or {})
        self._sender: ServiceBusSender | None = None

    @classmethod
    def from_connection_string(
        cls, connection_string: str, topic_name: str, **options: Any
    ) -> Self:
        """A broker with its own client; `stop()` closes that client."""
        client = ServiceBusClient.from_connection_string(connection_string)
        broker = cls(client, topic_name, **options)
        broker._owns_client = True
        return broker

    @classmethod
    def from_credential(
        cls, fully_qualified_namespace: str, credential: Any, topic_name: str, **options: Any
    ) -> Self:
        """A broker with its own client for a namespace and an azure-identity
        credential (``DefaultAzureCredential()``); `stop()` closes that client."""
        broker = cls(ServiceBusClient(fully_qualified_namespace, credential), topic_name, **options)
        broker._owns_client = True
        return broker

    def channel(self, message: Message) -> str:
        """The logical channel of `message`: ``{prefix}:{message_type}:{message_name}``."""
        return channel_for(self.channel_prefix, message)

    def to_service_bus(self, message: Message) -> ServiceBusMessage:
        """The ServiceBusMessage that carries `message`."""
        return ServiceBusMessage(
            self.encode(message),
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
        CredentialError when the credential is refused, EntityNotFoundError
        when the topic does not exist, and PublishError when the attempts run
        out. A retried batch may repeat messages already sent; Service Bus
        duplicate detection (by message id) drops them.
        """
        outgoing = [self.to_service_bus(message) for message in messages]
        names = quote(", ".join(m.message_name for m in messages), 200)
        topic = f"topic {self.topic_name}"
        with _service_bus_errors(topic, "sending to", PublishError):
            for attempt in range(1, self.publish_attempts + 1):
                sender = self._get_sender()
                try:
                    # Even one message goes in a batch: adding it checks the size
                    # against the limit the link announced, before anything is sent.
                    await self._send_batches(sender, outgoing)
                    return
                except MessageSizeExceededError as exc:
                    # Raised by _send_batches for one message: the name is on it.
                    raise MessageTooLargeError(
                        f"{exc.args[0] if exc.args else names} does not fit in one Service Bus "
                        "message; send less data per event or raise the namespace's message "
                        "size limit"
                    ) from exc
                except ServiceBusError as exc:
                    if _refused(topic, "sending to", exc) is not None:
                        raise
                    if attempt == self.publish_attempts:
                        raise PublishError(
                            f"could not send {names} to {topic} after {attempt} attempts: "
                            f"{quote(str(exc))}"
                        ) from exc
                    delay = _RETRY.delay(attempt)
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
                        await self._close()
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

    def _get_sender(self) -> ServiceBusSender:
        # Creating a sender opens nothing; its link opens on the first send.
        if self._sender is None:
            self._sender = self.client.get_topic_sender(self.topic_name, **self.sender_options)
        return self._sender

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
            with _service_bus_errors(
                subscription.entity, "opening a receiver on", BrokerUnavailableError
            ):
                await subscription.open()
        except BaseException:
            await subscription.close()
            raise
        return subscription

    # -- dead letters ------------------------------------------------------

    async def dead_letters(
        self, group: str | None = None, *, limit: int = 100
    ) -> list[DeadLetterRecord]:
        """Up to `limit` messages of the dead-letter sub-queue of topic
        subscription `group` (or the broker's `subscription`), oldest first.
        They are peeked, so they stay there.

        ```python
        for record in await broker.dead_letters("billing"):
            print(record.reason, record.description, record.size)
        ```
        """
        name = group or self.subscription
        if name is None:
            raise ValueError(
                "Service Bus keeps dead letters per topic subscription: pass "
                "dead_letters(group='<subscription name>') or "
                "AzureMessageBroker(..., subscription='<subscription name>')"
            )
        entity = f"{self.topic_name}/Subscriptions/{name}/$DeadLetterQueue"
        records: list[DeadLetterRecord] = []
        with _service_bus_errors(entity, "peeking at", BrokerUnavailableError):
            async with self.client.get_subscription_receiver(
                self.topic_name,
                name,
                sub_queue=ServiceBusSubQueue.DEAD_LETTER,
                **self.receiver_options,
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
                            _channel_of(message) or entity,
                            b"".join(message.body),
                            message.dead_letter_reason or "",
                            message.dead_letter_error_description or "",
                            (message.delivery_count or 0) + 1,
                        )
                        for message in page
                    )
                    next_number = (page[-1].sequence_number or 0) + 1
        return records

    # -- lifecycle ---------------------------------------------------------

    async def _close(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            try:
                await sender.close()
            except Exception:
                logger.debug("closing the sender on %s failed", self.topic_name, exc_info=True)

    async def _close_client(self) -> None:
        await self.client.close()
