"""The broker contract: what the emitter and the consumer need from a transport.

Every module in `brokers/` implements the same verbs, in this order:
publish (`send_message`, `send_messages`), `subscribe`, `start` / `stop`
(and ``async with``), settle each `Delivery` (`ack`, `release`,
`dead_letter`), and say its `delivery_guarantee`. `mediator.transport` holds
the shared pieces they are built from.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Protocol, runtime_checkable

from mediator._dead_letters import DeadLetterRecord
from mediator._message import Message

__all__ = [
    "BatchMessageBroker",
    "DeadLetterStore",
    "Delivery",
    "DeliveryGuarantee",
    "MessageBroker",
    "SubscribingBroker",
    "Subscription",
    "describe_broker",
]


class DeliveryGuarantee(enum.Enum):
    """What a transport promises about each published message."""

    AT_MOST_ONCE = "at-most-once"
    """Delivered once or lost (a consumer that is down misses it)."""
    AT_LEAST_ONCE = "at-least-once"
    """Kept until a consumer settles it; may be delivered again after a crash."""


@runtime_checkable
class MessageBroker(Protocol):
    """Publishes envelopes. diator's brokers have this shape already.

    A broker may also offer ``async def send_messages(messages)`` to publish
    a batch in one round trip; the emitter uses it when present.
    """

    async def send_message(self, message: Message) -> None:
        """Publish one envelope to its logical channel."""
        ...


@runtime_checkable
class BatchMessageBroker(MessageBroker, Protocol):
    """A broker that can publish several envelopes in one round trip."""

    async def send_messages(self, messages: Sequence[Message]) -> None:
        """Publish `messages` in order, as one batch where the transport allows."""
        ...


class Delivery(Protocol):
    """One received message, to be settled exactly once."""

    @property
    def channel(self) -> str:
        """The logical channel it was published on."""
        ...

    @property
    def data(self) -> bytes:
        """The raw envelope bytes."""
        ...

    @property
    def delivery_count(self) -> int:
        """1 on the first delivery, more on redeliveries (where the transport counts)."""
        ...

    async def ack(self) -> None:
        """Done: the message will not be delivered again."""
        ...

    async def release(self) -> None:
        """Give the message back for a later delivery (where the transport can;
        an at-most-once transport drops it)."""
        ...

    def next_in_order(self) -> Delivery | None:
        """Called once this delivery is settled: the delivery that must be
        handled after it, in order (the next record of an ordered Kafka
        partition), taken from the transport now; None for most transports.
        The consumer handles it in the same task, with the same slot."""
        ...

    @property
    def holds_back_releases(self) -> bool:
        """Whether the broker itself waits before delivering a released message
        again (Redis Streams: until the entry has been idle `claim_idle`); if
        not, the consumer waits its redelivery backoff before releasing."""
        ...

    async def dead_letter(self, reason: str, description: str) -> None:
        """Move the message to the transport's dead-letter place."""
        ...


class Subscription(Protocol):
    """A live subscription: iterate it for deliveries, close it to stop."""

    @property
    def pattern(self) -> str:
        """The glob over logical channels."""
        ...

    @property
    def group(self) -> str | None:
        """The consumer group, or None for a subscription of its own."""
        ...

    def __aiter__(self) -> AsyncIterator[Delivery]: ...

    async def close(self) -> None:
        """Stop receiving; iteration ends once buffered deliveries are taken."""
        ...


@runtime_checkable
class SubscribingBroker(BatchMessageBroker, Protocol):
    """A broker consumers can subscribe to. Every transport implements it."""

    @property
    def delivery_guarantee(self) -> DeliveryGuarantee:
        """What the transport promises; see `DeliveryGuarantee`."""
        ...

    @property
    def channel_prefix(self) -> str:
        """The first part of every logical channel this broker publishes to."""
        ...

    async def start(self) -> None:
        """Open connections; publishing and subscribing also start it on demand."""
        ...

    async def stop(self) -> None:
        """Close every subscription and connection the broker opened."""
        ...

    async def subscribe(self, pattern: str, *, group: str | None = None) -> Subscription:
        """Subscribe to channels matching `pattern` (Redis glob semantics).

        Returns once the subscription is live: a message published after the
        call returns is delivered. With `group`, the group's subscriptions
        share the messages (each goes to one of them); every group and every
        ungrouped subscription gets every matching message.
        """
        ...


@runtime_checkable
class DeadLetterStore(Protocol):
    """A broker that keeps its dead letters and reads them back; every broker
    in `brokers` is one (Azure also takes the subscription to read from)."""

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetterRecord]:
        """Up to `limit` dead letters (by default the broker's own bound),
        oldest first; each broker's page says which ones a limit keeps."""
        ...


@runtime_checkable
class DeadLetterQueue(DeadLetterStore, Protocol):
    """A `DeadLetterStore` whose dead letters can be published again and removed."""

    def replay_dead_letters(
        self, records: Iterable[DeadLetterRecord]
    ) -> AsyncIterator[DeadLetterRecord]:
        """Publish each of `records` (as `dead_letters()` returned them) again,
        one at a time: its whole body to its channel, with its message id and
        `REPLAY_COUNT_HEADER` one more; once the broker confirmed the publish,
        remove the dead letter, then yield it. A record that is no longer in
        the store is skipped; one whose body was cut (`truncated`) raises
        `TruncatedDeadLetterError` before anything is published."""
        ...

    async def purge_dead_letters(self, records: Iterable[DeadLetterRecord]) -> int:
        """Remove `records` from the store; how many were still there."""
        ...


def describe_broker(broker: object) -> str:
    """A broker as logs show it: its class, where it connects and its prefix."""
    if broker is None:
        return "no broker"
    where = getattr(broker, "address", None) or getattr(broker, "bootstrap_servers", None)
    if isinstance(where, list | tuple):
        where = ",".join(map(str, where))
    prefix = getattr(broker, "channel_prefix", None)
    details = ", ".join(
        part for part in (where and str(where), prefix and f"prefix {prefix!r}") if part
    )
    return f"{type(broker).__name__}({details})"
