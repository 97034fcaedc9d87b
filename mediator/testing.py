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

import asyncio
import inspect
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from mediator._broker import MessageBroker
from mediator._consumer import CONSUMER_CREATED, ConsumerStats, EventConsumer, Settled
from mediator._events import Event
from mediator._limits import quote
from mediator._message import Message
from mediator._transport import DeadLetterRecord

__all__ = [
    "CapturingBroker",
    "Settled",
    "WaitTimeout",
    "dead_letters",
    "wait_for_event",
    "wait_until",
]

E = TypeVar("E", bound=Event)

_RECENT = 20
"""How many settled deliveries a `WaitTimeout` lists."""
_HISTORY = 10_000
"""How many handled events each consumer's history keeps for `wait_for_event`."""

_handled: weakref.WeakKeyDictionary[EventConsumer, deque[Event]] = weakref.WeakKeyDictionary()


def _watch_from_the_start(consumer: EventConsumer) -> None:
    # Every consumer built once this module is imported keeps its handled
    # events, so a wait that starts after the event arrived still sees it.
    history: deque[Event] = deque(maxlen=_HISTORY)
    _handled[consumer] = history

    def record(settled: Settled) -> None:
        if settled.outcome == "handled" and settled.event is not None:
            history.append(settled.event)

    consumer.add_listener(record)


CONSUMER_CREATED.append(_watch_from_the_start)


class WaitTimeout(TimeoutError):
    """A wait in `mediator.testing` ran out of time; the message says what
    was awaited, the consumer's counters and the last deliveries it settled."""


def _describe(predicate: Callable[..., Any]) -> str:
    try:
        source = inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        source = getattr(predicate, "__qualname__", repr(predicate))
    return quote(source, 300)


def _timeout(
    what: str, timeout: float, consumer: EventConsumer, recent: Sequence[Settled]
) -> WaitTimeout:
    stats = consumer.stats
    lines = [
        f"waited {timeout} s for {what}",
        f"the consumer received {stats.received}, handled {stats.handled}, released "
        f"{stats.released}, dead-lettered {stats.dead_lettered} "
        f"{dict(stats.dead_lettered_by_reason) or ''}, in flight {stats.in_flight}; "
        f"running: {consumer.running}",
    ]
    if recent:
        lines.append("last settled:")
        for settled in recent:
            name = "?" if settled.message is None else settled.message.message_name
            ident = "?" if settled.message is None else settled.message.message_id
            why = "" if settled.reason is None else f" ({quote(settled.reason, 200)})"
            lines.append(f"  {settled.outcome}: {quote(name, 100)} {ident}{why}")
    else:
        lines.append("nothing was settled while waiting")
    return WaitTimeout("\n".join(lines))


async def _watch(
    consumer: EventConsumer,
    done: Callable[[Settled | None], bool],
    what: str,
    timeout: float,
) -> None:
    """Wait until `done(settled)` holds; `done(None)` is asked first."""
    if done(None):
        return
    changed = asyncio.Event()
    recent: deque[Settled] = deque(maxlen=_RECENT)
    finished = False

    def listener(settled: Settled) -> None:
        nonlocal finished
        recent.append(settled)
        if not finished and done(settled):
            finished = True
            changed.set()

    remove = consumer.add_listener(listener)
    try:
        async with asyncio.timeout(timeout):
            await changed.wait()
    except TimeoutError:
        raise _timeout(what, timeout, consumer, list(recent)) from None
    finally:
        remove()


async def wait_until(
    consumer: EventConsumer, predicate: Callable[[ConsumerStats], bool], timeout: float = 5.0
) -> ConsumerStats:
    """Wait until `predicate(consumer.stats)` holds, checked again after every
    settled delivery; returns the stats.

    ```python
    await wait_until(consumer, lambda stats: stats.handled >= 3)
    ```
    """
    await _watch(
        consumer, lambda _: predicate(consumer.stats), f"stats: {_describe(predicate)}", timeout
    )
    return consumer.stats


async def wait_for_event(
    consumer: EventConsumer,
    event_type: type[E],
    *,
    where: Callable[[E], bool] | None = None,
    timeout: float = 5.0,
) -> E:
    """Return the first `event_type` event (matching `where`, if given) the
    consumer handled, waiting for it if it has not been handled yet.

    "First" counts from when the consumer was built, for every consumer
    built after `mediator.testing` was imported (it keeps the last 10,000
    handled events of each), so it does not matter whether the event arrived
    before or after the wait began; otherwise it counts from the call.

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
        what += f" where {_describe(where)}"
    await _watch(consumer, done, what, timeout)
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
