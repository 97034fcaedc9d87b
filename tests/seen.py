"""What a test's handlers received, counted by a key of each event (its
`n` unless told), with a wake-up per arrival: the transport suites wait on
it instead of sleeping."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any


def _number(event: Any) -> Any:
    return event.n


class Seen:
    """Counts of what arrived, by `key(event)`."""

    def __init__(self, key: Callable[[Any], Hashable] = _number, *, timeout: float = 30.0) -> None:
        self.counts: Counter[Any] = Counter()
        self._key = key
        self._timeout = timeout
        self._changed = asyncio.Event()

    async def __call__(self, event: Any) -> None:
        self.counts[self._key(event)] += 1
        self._changed.set()

    async def until(self, wanted: set[Any], timeout: float | None = None) -> None:
        """Return once every key of `wanted` arrived; TimeoutError after `timeout` s."""
        async with asyncio.timeout(self._timeout if timeout is None else timeout):
            while not wanted <= self.counts.keys():
                self._changed.clear()
                await self._changed.wait()

    def lost(self, wanted: set[Any]) -> set[Any]:
        return wanted - self.counts.keys()

    def duplicates(self) -> int:
        return sum(count - 1 for count in self.counts.values())
