"""The in-memory broker: the embedded default, and a test double for users.

Delivery guarantee: at-most-once, inside one process. Channels, patterns
and consumer groups behave as on every other transport:

- a message goes to every subscription whose glob matches its logical
  channel ``{prefix}:{message_type}:{message_name}``, once per subscription;
- subscriptions sharing a `group` (and pattern) form one group: each message
  goes to one member, round robin; every group gets every message;
- each subscription buffers at most `buffer_size` deliveries; a publisher
  waits while a buffer it must fill is full (backpressure, never growth), and
  is let go when that subscription closes;
- a released delivery goes back to its subscription ahead of the buffer,
  without waiting, so a stop never blocks on a full buffer;
- `dead_letters()` returns the most recent dead letters, oldest first;
  `replay_dead_letters()` routes them again and `purge_dead_letters()`
  forgets them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence

from mediator.transport import (
    DEFAULT_MAX_MESSAGE_SIZE,
    BrokerLifecycle,
    DeadLetterRecord,
    DeliveryBase,
    DeliveryGuarantee,
    GlobPattern,
    Message,
    channel_for,
    quote,
    replayable,
)

__all__ = [
    "DEFAULT_BUFFER",
    "DEFAULT_HISTORY",
    "InMemoryMessageBroker",
    "MemoryDelivery",
    "MemorySubscription",
]

logger = logging.getLogger("mediator.brokers.memory")

DEFAULT_HISTORY = 10_000
"""How many published messages `InMemoryMessageBroker.messages` keeps, and
how many dead letters it keeps."""
DEFAULT_BUFFER = 1_000
"""How many deliveries one subscription buffers before publishers wait."""


class MemoryDelivery(DeliveryBase):
    """One message handed to one subscription."""

    __slots__ = ("_subscription", "replay_count")

    def __init__(
        self,
        subscription: MemorySubscription,
        channel: str,
        data: bytes,
        delivery_count: int = 1,
        replay_count: int = 0,
    ) -> None:
        super().__init__(channel, data, delivery_count)
        self._subscription = subscription
        self.replay_count = replay_count
        """How many times the message was replayed from the dead letters."""

    async def _ack(self) -> None:
        """Nothing to do: the broker keeps no copy."""

    async def _release(self) -> None:
        # Back to its subscription with the count + 1; dropped once the
        # subscription is closed, as at-most-once allows.
        self._subscription._redeliver(self)

    async def _dead_letter(self, reason: str, description: str) -> None:
        self._subscription._broker._dead_letters.append(
            DeadLetterRecord.of(
                self.channel,
                self.data,
                reason,
                description,
                self.delivery_count,
                replay_count=self.replay_count,
            )
        )


class MemorySubscription:
    """Deliveries for one subscriber; iterate it, close it to stop."""

    def __init__(
        self, broker: InMemoryMessageBroker, pattern: str, group: str | None, buffer_size: int
    ) -> None:
        self._broker = broker
        self.pattern = pattern
        self.group = group
        self._size = buffer_size
        self._buffer: deque[MemoryDelivery] = deque()
        # Released deliveries: at most one per delivery taken and not yet
        # settled, so bounded by the consumer's concurrency.
        self._returned: deque[MemoryDelivery] = deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed = False

    def __repr__(self) -> str:
        group = "" if self.group is None else f" in group {self.group!r}"
        return f"<MemorySubscription {quote(self.pattern, 200)}{group}>"

    async def _put(self, delivery: MemoryDelivery) -> None:
        while len(self._buffer) >= self._size and not self.closed:
            self._writable.clear()
            await self._writable.wait()
        if self.closed:
            return  # nobody reads it any more: at-most-once drops it
        self._buffer.append(delivery)
        self._readable.set()

    def _redeliver(self, delivery: MemoryDelivery) -> None:
        if self.closed:
            logger.debug("dropping a released delivery from %s: subscription closed", self.pattern)
            return
        again = MemoryDelivery(self, delivery.channel, delivery.data, delivery.delivery_count + 1)
        self._returned.append(again)
        self._readable.set()

    def __aiter__(self) -> AsyncIterator[MemoryDelivery]:
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[MemoryDelivery]:
        buffer, returned = self._buffer, self._returned
        while True:
            if returned:
                yield returned.popleft()
            elif buffer:
                delivery = buffer.popleft()
                self._writable.set()
                yield delivery
            elif self.closed:
                return
            else:
                self._readable.clear()
                await self._readable.wait()

    async def close(self) -> None:
        """Stop receiving: the broker stops routing here, publishers waiting
        on this buffer go on, and iteration ends after what is buffered."""
        if self.closed:
            return
        self.closed = True
        self._broker._remove(self)
        self._readable.set()
        self._writable.set()

    @property
    def pending(self) -> int:
        """Deliveries buffered and not yet taken."""
        return len(self._buffer) + len(self._returned)


class _Group:
    __slots__ = ("members", "next")

    def __init__(self) -> None:
        self.members: list[MemorySubscription] = []
        self.next = 0

    def pick(self) -> MemorySubscription:
        member = self.members[self.next % len(self.members)]
        self.next = (self.next + 1) % len(self.members)
        return member


class InMemoryMessageBroker(BrokerLifecycle):
    """Publishes to subscribers in the same process and keeps what it saw.

    ```python
    broker = InMemoryMessageBroker(channel_prefix="app")
    emitter = EventEmitter(event_map=events, message_broker=broker)
    ...
    assert broker.messages[-1].message_name == "UserJoined"
    ```

    `messages` holds the most recent envelopes, newest last, bounded by
    `history` (oldest dropped first) so a long-running process never grows;
    dead letters are bounded by `dead_letter_limit` the same way.
    """

    delivery_guarantee = DeliveryGuarantee.AT_MOST_ONCE

    def __init__(
        self,
        *,
        channel_prefix: str = "mediator",
        history: int = DEFAULT_HISTORY,
        buffer_size: int = DEFAULT_BUFFER,
        dead_letter_limit: int = DEFAULT_HISTORY,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        for name, value in (
            ("history", history),
            ("buffer_size", buffer_size),
            ("dead_letter_limit", dead_letter_limit),
        ):
            if value < 1:
                raise ValueError(f"InMemoryMessageBroker({name}={value}): must be at least 1")
        super().__init__(max_message_size=max_message_size)
        self.channel_prefix = channel_prefix
        self.buffer_size = buffer_size
        self.dead_letter_limit = dead_letter_limit
        self.messages: deque[Message] = deque(maxlen=history)
        self._dead_letters: deque[DeadLetterRecord] = deque(maxlen=dead_letter_limit)
        self._solo: list[tuple[GlobPattern, MemorySubscription]] = []
        self._groups: dict[tuple[str, str], tuple[GlobPattern, _Group]] = {}

    # -- publish -----------------------------------------------------------

    async def send_message(self, message: Message) -> None:
        """Publish one envelope to its logical channel."""
        self.messages.append(message)
        if self._solo or self._groups:
            await self._route(channel_for(self.channel_prefix, message), self.encode(message))

    async def send_messages(self, messages: Sequence[Message]) -> None:
        """Publish a batch, in order."""
        for message in messages:
            await self.send_message(message)

    async def publish_raw(self, channel: str, data: bytes) -> None:
        """Route bytes as they are, for tests of what consumers do with bad input."""
        await self._route(channel, data)

    async def _route(self, channel: str, data: bytes, replay_count: int = 0) -> None:
        targets = [sub for pattern, sub in self._solo if pattern.matches(channel)]
        targets.extend(
            group.pick() for pattern, group in self._groups.values() if pattern.matches(channel)
        )
        for subscription in targets:
            await subscription._put(
                MemoryDelivery(subscription, channel, data, replay_count=replay_count)
            )

    # -- subscribe ---------------------------------------------------------

    async def subscribe(self, pattern: str, *, group: str | None = None) -> MemorySubscription:
        """Subscribe to channels matching `pattern`; live when this returns."""
        subscription = MemorySubscription(self, pattern, group, self.buffer_size)
        if group is None:
            self._solo.append((GlobPattern(pattern), subscription))
        else:
            entry = self._groups.get((pattern, group))
            if entry is None:
                entry = self._groups[(pattern, group)] = (GlobPattern(pattern), _Group())
            entry[1].members.append(subscription)
        self._subscriptions.add(subscription)
        return subscription

    def _remove(self, subscription: MemorySubscription) -> None:
        self._subscriptions.discard(subscription)
        if subscription.group is None:
            self._solo = [(p, s) for p, s in self._solo if s is not subscription]
            return
        key = (subscription.pattern, subscription.group)
        entry = self._groups.get(key)
        if entry is not None:
            members = entry[1].members
            if subscription in members:
                members.remove(subscription)
            if not members:
                del self._groups[key]

    # -- dead letters --------------------------------------------------------

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetterRecord]:
        """The most recent dead letters (at most `dead_letter_limit`), oldest
        first; with `limit`, the oldest `limit` of them."""
        records = list(self._dead_letters)
        return records if limit is None else records[:limit]

    async def replay_dead_letters(
        self, records: Iterable[DeadLetterRecord]
    ) -> AsyncIterator[DeadLetterRecord]:
        """Route each of `records` again to the subscriptions of its channel,
        counting the replay, and forget it; yield each once routed. (Like
        any message here, it reaches only subscriptions that exist now.)"""
        for record in replayable(records):
            kept = self._find(record)
            if kept is None:
                continue
            self._dead_letters.remove(kept)
            await self._route(record.channel, record.data, record.replay_count + 1)
            yield kept

    async def purge_dead_letters(self, records: Iterable[DeadLetterRecord]) -> int:
        """Forget `records`; how many were still kept."""
        removed = 0
        for record in records:
            kept = self._find(record)
            if kept is not None:
                self._dead_letters.remove(kept)
                removed += 1
        return removed

    def _find(self, record: DeadLetterRecord) -> DeadLetterRecord | None:
        return next((kept for kept in self._dead_letters if kept.id == record.id), None)

    def clear(self) -> None:
        """Forget every kept message and dead letter."""
        self.messages.clear()
        self._dead_letters.clear()
