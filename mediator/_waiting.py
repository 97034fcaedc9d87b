"""Waiting on a consumer's settlements with a deadline: `EventConsumer.wait_until`
(a health probe as much as a test helper) and `mediator.testing`'s waits."""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mediator._limits import quote

if TYPE_CHECKING:
    from mediator._consumer import EventConsumer
    from mediator._handling import Settled

__all__ = ["WaitTimeout", "describe", "watch"]

_RECENT = 20
"""How many settled deliveries a `WaitTimeout` lists."""


class WaitTimeout(TimeoutError):
    """A wait (`EventConsumer.wait_until`, `mediator.testing`'s) ran out of
    time; the message says what was awaited, the consumer's counters and the
    last deliveries it settled."""


def describe(predicate: Callable[..., Any]) -> str:
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


async def watch(
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
