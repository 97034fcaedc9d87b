"""What your own tests need: capture what was published, wait for a
consumer, read dead letters. Nothing here is used by production code.

```python
from mediator.testing import CapturingBroker, wait_for_event, wait_until

broker = CapturingBroker(InMemoryMessageBroker(channel_prefix="shop"))
consumer = EventConsumer(broker=broker, event_map=events)
await consumer.subscribe("shop:notification_event:*")
async with consumer:
    await Mediator(request_map=requests, event_emitter=EventEmitter(
        event_map=events, message_broker=broker)).send(PlaceOrder(total_cents=4200))
    placed = await wait_for_event(consumer, OrderPlaced)
assert broker.names() == ["OrderPlaced"]
```

Every wait takes a `timeout` (seconds) and raises `WaitTimeout`, which says
what was awaited and what the consumer settled meanwhile, instead of hanging.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from mediator._broker import MessageBroker
from mediator._consumer import ConsumerStats, EventConsumer
from mediator._dead_letters import DeadLetterRecord
from mediator._events import Event
from mediator._handling import Settled
from mediator._message import Message
from mediator._waiting import WaitTimeout, describe, watch

__all__ = [
    "CapturingBroker",
    "Settled",
    "WaitTimeout",
    "dead_letters",
    "keep_handled",
    "wait_for_event",
    "wait_until",
]

E = TypeVar("E", bound=Event)

_HISTORY = 10_000
"""How many handled events each consumer's history keeps for `wait_for_event`."""

_handled: weakref.WeakKeyDictionary[EventConsumer, deque[Event]] = weakref.WeakKeyDictionary()


def keep_handled(consumer: EventConsumer, *, limit: int = _HISTORY) -> EventConsumer:
    """Keep the last `limit` events `consumer` handles, so that
    `wait_for_event` also finds one handled before the wait began. Call it
    right after building the consumer; returns the consumer.

    ```python
    consumer = keep_handled(EventConsumer(broker=broker, event_map=events))
    ```
    """
    if consumer in _handled:
        return consumer
    history: deque[Event] = deque(maxlen=limit)
    _handled[consumer] = history

    def record(settled: Settled) -> None:
        if settled.outcome == "handled" and settled.event is not None:
            history.append(settled.event)

    consumer.add_listener(record)
    return consumer


async def wait_until(
    consumer: EventConsumer, predicate: Callable[[ConsumerStats], bool], timeout: float = 5.0
) -> ConsumerStats:
    """Wait until `predicate(consumer.stats)` holds, checked again after every
    settled delivery; returns the stats.

    ```python
    await wait_until(consumer, lambda stats: stats.handled >= 3)
    ```
    """
    return await consumer.wait_until(predicate, timeout)


async def wait_for_event(
    consumer: EventConsumer,
    event_type: type[E],
    *,
    where: Callable[[E], bool] | None = None,
    timeout: float = 5.0,
) -> E:
    """Return the first `event_type` event (matching `where`, if given) the
    consumer handled, waiting for it if it has not been handled yet.

    "First" counts from `keep_handled(consumer)` for a consumer given to it
    (so it does not matter whether the event arrived before or after the
    wait began), and from the call for any other consumer.

    ```python
    paid = await wait_for_event(consumer, OrderPaid, where=lambda e: e.order_id == 7)
    ```
    """
    found: list[E] = []

    def matches(event: Event | None) -> bool:
        if isinstance(event, event_type) and (where is None or where(event)):
            found.append(event)
            return True
        return False

    def done(settled: Settled | None) -> bool:
        if settled is None:
            return any(matches(event) for event in _handled.get(consumer, ()))
        return settled.outcome == "handled" and matches(settled.event)

    what = f"a handled {event_type.__qualname__}"
    if where is not None:
        what += f" where {describe(where)}"
    await watch(consumer, done, what, timeout)
    return found[0]


async def dead_letters(broker: Any, *, reason: str | None = None) -> list[DeadLetterRecord]:
    """The broker's dead letters, oldest first (only those with `reason`, if given).

    ```python
    [dead] = await dead_letters(broker, reason="not_json")
    ```
    """
    records: list[DeadLetterRecord] = await broker.dead_letters()
    return [r for r in records if reason is None or r.reason == reason]


class CapturingBroker:
    """Wraps any broker and keeps every envelope published through it
    (newest last, at most `limit`); everything else goes to the broker.

    Pass it wherever the broker goes (emitter, consumer): publishing is
    recorded, subscribing and the lifecycle are the wrapped broker's.
    """

    def __init__(self, broker: MessageBroker, *, limit: int = 10_000) -> None:
        self.broker = broker
        self.messages: deque[Message] = deque(maxlen=limit)

    async def send_message(self, message: Message) -> None:
        """Record, then publish through the wrapped broker."""
        self.messages.append(message)
        await self.broker.send_message(message)

    async def send_messages(self, messages: Sequence[Message]) -> None:
        """Record, then publish the batch (one batch where the broker can)."""
        self.messages.extend(messages)
        send_messages = getattr(self.broker, "send_messages", None)
        if send_messages is not None:
            await send_messages(messages)
        else:
            for message in messages:
                await self.broker.send_message(message)

    def names(self) -> list[str]:
        """The `message_name` of each recorded envelope, in publish order."""
        return [message.message_name for message in self.messages]

    def clear(self) -> None:
        """Forget what was recorded."""
        self.messages.clear()

    def __getattr__(self, name: str) -> Any:
        # subscribe, start, stop, channel_prefix, delivery_guarantee, ...
        return getattr(self.broker, name)
