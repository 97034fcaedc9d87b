"""The in-memory broker: the embedded default, and a test double for users.

Delivery guarantee: at-most-once, inside one process. Channels, patterns
and consumer groups behave as on every other transport:

- a message goes to every subscription whose glob matches its logical
  channel ``{prefix}:{message_type}:{message_name}``, once per subscription;
- subscriptions sharing a `group` (and pattern) form one group: each message
  goes to one member, round robin; every group gets every message;
- each subscription buffers at most `buffer_size` deliveries; a publisher
  waits while a buffer it must fill is full (backpressure, never growth);
- `dead_letters` keeps the most recent dead-lettered messages with reasons.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Sequence

import attrs

from mediator._message import Message, channel_for, encode_message
from mediator._patterns import GlobPattern
from mediator.transport import BrokerLifecycle, DeliveryGuarantee

__all__ = [
    "DEFAULT_BUFFER",
    "DEFAULT_HISTORY",
    "DeadLetteredMessage",
    "InMemoryMessageBroker",
    "MemoryDelivery",
    "MemorySubscription",
]

DEFAULT_HISTORY = 10_000
"""How many published messages `InMemoryMessageBroker.messages` keeps."""
DEFAULT_BUFFER = 1_000
"""How many deliveries one subscription buffers before publishers wait."""


@attrs.frozen(kw_only=True)
class DeadLetteredMessage:
    """A message a consumer dead-lettered, with why."""

    channel: str
    data: bytes
    reason: str
    description: str
    delivery_count: int


class MemoryDelivery:
    """One message handed to one subscription."""

    __slots__ = ("_subscription", "channel", "data", "delivery_count", "settled")

    def __init__(
        self, subscription: MemorySubscription, channel: str, data: bytes, delivery_count: int = 1
    ) -> None:
        self._subscription = subscription
        self.channel = channel
        self.data = data
        self.delivery_count = delivery_count
        self.settled: str | None = None
        """How it was settled: "ack", "retry" or "dead_letter"; None until then."""

    def _settle(self, outcome: str) -> None:
        if self.settled is not None:
            raise RuntimeError(f"delivery on {self.channel} was already settled ({self.settled})")
        self.settled = outcome

    async def ack(self) -> None:
        """Done with it."""
        self._settle("ack")

    async def release(self) -> None:
        """Put it back at the end of its subscription's buffer (delivery count + 1);
        dropped when the subscription is closed, as at-most-once allows."""
        self._settle("retry")
        subscription = self._subscription
        if not subscription.closed:
            again = MemoryDelivery(subscription, self.channel, self.data, self.delivery_count + 1)
            await subscription._put(again)

    async def dead_letter(self, reason: str, description: str) -> None:
        """Keep it in the broker's `dead_letters`."""
        self._settle("dead_letter")
        self._subscription._broker.dead_letters.append(
            DeadLetteredMessage(
                channel=self.channel,
                data=self.data,
                reason=reason,
                description=description,
                delivery_count=self.delivery_count,
            )
        )


_CLOSED = object()


class MemorySubscription:
    """Deliveries for one subscriber; iterate it, close it to stop."""

    def __init__(
        self, broker: InMemoryMessageBroker, pattern: str, group: str | None, buffer_size: int
    ) -> None:
        self._broker = broker
        self.pattern = pattern
        self.group = group
        self._queue: asyncio.Queue[MemoryDelivery | object] = asyncio.Queue(buffer_size)
        self.closed = False

    async def _put(self, delivery: MemoryDelivery) -> None:
        await self._queue.put(delivery)

    def __aiter__(self) -> AsyncIterator[MemoryDelivery]:
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[MemoryDelivery]:
        queue = self._queue
        while not (self.closed and queue.empty()):
            item = await queue.get()
            if item is _CLOSED:
                return
            assert isinstance(item, MemoryDelivery)
            yield item

    async def close(self) -> None:
        """Stop receiving: the broker stops routing here and iteration ends
        after what is already buffered."""
        if self.closed:
            return
        self.closed = True
        self._broker._remove(self)
        # Wakes a reader waiting on an empty buffer; a full buffer ends
        # iteration once it is drained.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_CLOSED)

    @property
    def pending(self) -> int:
        """Deliveries buffered and not yet taken."""
        return self._queue.qsize()


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
    `history` (oldest dropped first) so a long-running process never grows.
    """

    delivery_guarantee = DeliveryGuarantee.AT_MOST_ONCE

    def __init__(
        self,
        *,
        channel_prefix: str = "mediator",
        history: int = DEFAULT_HISTORY,
        buffer_size: int = DEFAULT_BUFFER,
        dead_letter_history: int = DEFAULT_HISTORY,
    ) -> None:
        if history < 1 or buffer_size < 1 or dead_letter_history < 1:
            raise ValueError("history, buffer_size and dead_letter_history must be at least 1")
        self.channel_prefix = channel_prefix
        self.buffer_size = buffer_size
        self.messages: deque[Message] = deque(maxlen=history)
        self.dead_letters: deque[DeadLetteredMessage] = deque(maxlen=dead_letter_history)
        self._solo: list[tuple[GlobPattern, MemorySubscription]] = []
        self._groups: dict[tuple[str, str], tuple[GlobPattern, _Group]] = {}

    # -- publish -----------------------------------------------------------

    async def send_message(self, message: Message) -> None:
        """Publish one envelope to its logical channel."""
        self.messages.append(message)
        if self._solo or self._groups:
            await self._route(channel_for(self.channel_prefix, message), encode_message(message))

    async def send_messages(self, messages: Sequence[Message]) -> None:
        """Publish a batch, in order."""
        for message in messages:
            await self.send_message(message)

    async def publish_raw(self, channel: str, data: bytes) -> None:
        """Route bytes as they are, for tests of what consumers do with bad input."""
        await self._route(channel, data)

    async def _route(self, channel: str, data: bytes) -> None:
        targets = [sub for pattern, sub in self._solo if pattern.matches(channel)]
        targets.extend(
            group.pick() for pattern, group in self._groups.values() if pattern.matches(channel)
        )
        for subscription in targets:
            await subscription._put(MemoryDelivery(subscription, channel, data))

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
        return subscription

    def _remove(self, subscription: MemorySubscription) -> None:
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

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Nothing to open; present for the broker contract."""

    async def stop(self) -> None:
        """Close every subscription."""
        subscriptions = [s for _, s in self._solo]
        subscriptions.extend(m for _, g in self._groups.values() for m in g.members)
        for subscription in subscriptions:
            await subscription.close()

    def clear(self) -> None:
        """Forget every kept message and dead letter."""
        self.messages.clear()
        self.dead_letters.clear()
