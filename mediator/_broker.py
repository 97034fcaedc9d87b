"""The broker contract: what the emitter and the consumer need from a transport.

Every module in `brokers/` implements the same verbs, in this order:
publish (`send_message`, `send_messages`), `subscribe`, `start` / `stop`
(and ``async with``), settle each `Delivery` (`ack`, `retry`,
`dead_letter`), and say its `delivery_guarantee`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from mediator._message import Message
from mediator._policies import Backoff

__all__ = [
    "BatchMessageBroker",
    "BrokerLifecycle",
    "Delivery",
    "DeliveryGuarantee",
    "MessageBroker",
    "Reconnection",
    "SubscribingBroker",
    "Subscription",
    "being_cancelled",
]


def being_cancelled() -> bool:
    """Whether the running task has a cancellation pending.

    A client library may turn a cancellation that lands mid-command into a
    connection error; a subscription's reconnect loop checks this first, so
    that stopping a consumer is never mistaken for a lost connection.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Reconnection:
    """The retry loop every subscription shares after a failed receive.

    ```python
    retry = Reconnection(logger, Backoff(initial=0.1))
    ...
    except ConnectionError as exc:
        if not await retry.pause(f"lost {pattern!r}", exc, closed=self.closed):
            return
        continue
    retry.succeeded()
    ```
    """

    __slots__ = ("_attempt", "_backoff", "_logger")

    def __init__(self, logger: logging.Logger, backoff: Backoff) -> None:
        self._logger = logger
        self._backoff = backoff
        self._attempt = 0

    def succeeded(self) -> None:
        """A receive worked: the next failure starts the backoff over."""
        self._attempt = 0

    async def pause(
        self,
        what: str,
        error: BaseException,
        *,
        closed: bool,
        then: str = "retrying",
        before_wait: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """After `error`: False when the subscription was closed (the caller
        ends), else log a WARNING, run `before_wait`, wait the backoff and
        return True. A pending cancellation is re-raised as such."""
        if being_cancelled():
            raise asyncio.CancelledError from error
        if closed:
            return False
        self._attempt += 1
        delay = self._backoff.delay(self._attempt)
        self._logger.warning("%s (%r); %s in %.2fs", what, error, then, delay)
        if before_wait is not None:
            await before_wait()
        await asyncio.sleep(delay)
        return True


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

    async def retry(self) -> None:
        """Give the message back for a later delivery (where the transport can)."""
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


class BrokerLifecycle:
    """``async with broker:`` for every transport: `start()` on entry,
    `stop()` on exit. A transport defines the two methods."""

    async def start(self) -> None:
        """Open what the transport needs before use."""

    async def stop(self) -> None:
        """Close what the transport opened."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
