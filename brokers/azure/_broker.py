"""`AzureMessageBroker`: publishes to a Service Bus topic, receives from its subscriptions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Self

from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage
from azure.servicebus.aio import ServiceBusClient

from brokers.azure._dead_letters import peek_dead_letters, replayed_message, take_dead_letters
from brokers.azure._errors import service_bus_errors
from brokers.azure._publisher import TopicPublisher, service_bus_message
from brokers.azure._subscription import AzureSubscription
from mediator.transport import (
    DEFAULT_MAX_MESSAGE_SIZE,
    BrokerLifecycle,
    BrokerUnavailableError,
    DeadLetterRecord,
    DeliveryGuarantee,
    Message,
    PublishError,
    channel_for,
    quote,
    replayable,
)

__all__ = ["AzureMessageBroker"]


DEFAULT_DEAD_LETTER_READ = 100
"""How many dead letters `dead_letters()` peeks when no `limit` is given."""


class AzureMessageBroker(BrokerLifecycle):
    """Publishes envelopes to a Service Bus topic; receives from its subscriptions.

    ```python
    from azure.servicebus.aio import ServiceBusClient
    client = ServiceBusClient.from_connection_string(connection_string)
    broker = AzureMessageBroker(client, "orders", timeout=15)
    ```

    The client is yours: `stop()` closes the sender and receivers the broker
    opened, never the client (except one `from_connection_string` or
    `from_credential` made).
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
        self._publisher = TopicPublisher(self)

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
        return service_bus_message(message, self.encode(message), self.channel(message))

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
        out.
        """
        outgoing = [self.to_service_bus(message) for message in messages]
        names = quote(", ".join(m.message_name for m in messages), 200)
        await self._publisher.send(outgoing, names)

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
            with service_bus_errors(
                subscription.entity, "opening a receiver on", BrokerUnavailableError
            ):
                await subscription.open()
        except BaseException:
            await subscription.close()
            raise
        return subscription

    # -- dead letters ------------------------------------------------------

    async def dead_letters(
        self, group: str | None = None, *, limit: int | None = None
    ) -> list[DeadLetterRecord]:
        """Up to `limit` (default 100) messages of the dead-letter sub-queue of
        topic subscription `group` (or the broker's `subscription`), oldest
        first. They are peeked, so they stay there.

        ```python
        for record in await broker.dead_letters("billing"):
            print(record.reason, record.description, record.size)
        ```
        """
        name = self._dead_letter_subscription(group)
        return await peek_dead_letters(
            self.client,
            self.topic_name,
            name,
            limit=DEFAULT_DEAD_LETTER_READ if limit is None else limit,
            receiver_options=self.receiver_options,
        )

    async def replay_dead_letters(
        self, records: Iterable[DeadLetterRecord], group: str | None = None
    ) -> AsyncIterator[DeadLetterRecord]:
        """Send each of `records` (dead letters of subscription `group`, or of
        the broker's `subscription`) to the topic again, with its message id
        and properties, the replay counted and `REPLAY_FOR` naming the
        subscription; once Service Bus took it, complete it off the
        dead-letter sub-queue and yield it. Records no longer there are skipped."""
        name = self._dead_letter_subscription(group)
        whole = replayable(records)
        if not whole:
            return
        sender = self.client.get_topic_sender(self.topic_name, **self.sender_options)
        topic = f"topic {self.topic_name}"

        async def send(message: ServiceBusReceivedMessage) -> None:
            with service_bus_errors(topic, "replaying to", PublishError):
                await sender.send_messages(replayed_message(message, name))

        try:
            async for record in take_dead_letters(
                self.client,
                self.topic_name,
                name,
                [record.id for record in whole],
                receiver_options=self.receiver_options,
                before_complete=send,
            ):
                yield record
        finally:
            await sender.close()

    async def purge_dead_letters(
        self, records: Iterable[DeadLetterRecord], group: str | None = None
    ) -> int:
        """Complete `records` off the dead-letter sub-queue of subscription
        `group` (or the broker's `subscription`); how many were there."""
        removed = 0
        async for _ in take_dead_letters(
            self.client,
            self.topic_name,
            self._dead_letter_subscription(group),
            [record.id for record in records],
            receiver_options=self.receiver_options,
        ):
            removed += 1
        return removed

    def _dead_letter_subscription(self, group: str | None) -> str:
        name = group or self.subscription
        if name is None:
            raise ValueError(
                "Service Bus keeps dead letters per topic subscription: pass "
                "dead_letters(group='<subscription name>') (the same to replay_dead_letters "
                "and purge_dead_letters) or "
                "AzureMessageBroker(..., subscription='<subscription name>')"
            )
        return name

    # -- lifecycle ---------------------------------------------------------

    async def _close(self) -> None:
        await self._publisher.close()

    async def _close_client(self) -> None:
        await self.client.close()
