"""`DeliveryBase`: a received message that a transport settles exactly once."""

from __future__ import annotations

import abc
import asyncio
from typing import ClassVar

from mediator._error_mapping import being_cancelled
from mediator._limits import quote

__all__ = ["DeliveryBase"]


class DeliveryBase(abc.ABC):
    """A received message that is settled exactly once: a transport implements
    `_ack`, `_release` and `_dead_letter`, and the public verbs refuse a
    second settlement with a RuntimeError naming the first."""

    __slots__ = ("channel", "data", "delivery_count", "settled")

    holds_back_releases: ClassVar[bool] = False
    """True where the broker waits before delivering a released message again."""

    def __init__(self, channel: str, data: bytes, delivery_count: int = 1) -> None:
        self.channel = channel
        self.data = data
        self.delivery_count = delivery_count
        self.settled: str | None = None
        """How it was settled: "ack", "release" or "dead_letter"; None until then."""

    def next_in_order(self) -> DeliveryBase | None:
        """The delivery to handle after this one in the same task; None here
        (a transport that hands records on in order overrides it)."""
        return None

    def ack_nowait(self) -> bool:
        """Acknowledge at once where the transport settles in memory (Kafka
        moves an offset): True when done, False when `ack()` is to be awaited
        (as here). The consumer tries it first, saving a coroutine a delivery."""
        return False

    def _settling(self, outcome: str) -> None:
        if self.settled is not None:
            raise RuntimeError(
                f"a delivery from {quote(self.channel, 200)} was already settled "
                f"({self.settled}); settle each delivery once"
            )
        self.settled = outcome

    # Each verb raises a cancellation that its SDK reported as its own error
    # (it landed mid-command) as the cancellation it is: no settle verb of any
    # transport swallows one.

    async def ack(self) -> None:
        """Done: the message will not be delivered again."""
        if self.settled is not None:
            self._settling("ack")  # raises, naming the first settlement
        self.settled = "ack"
        try:
            await self._ack()
        except Exception as exc:
            if being_cancelled():
                raise asyncio.CancelledError from exc
            raise

    async def release(self) -> None:
        """Give the message back for a later delivery (where the transport can)."""
        self._settling("release")
        try:
            await self._release()
        except Exception as exc:
            if being_cancelled():
                raise asyncio.CancelledError from exc
            raise

    async def dead_letter(self, reason: str, description: str) -> None:
        """Move the message to the transport's dead-letter place. When that
        fails the delivery is not settled: it can still be released."""
        self._settling("dead_letter")
        try:
            await self._dead_letter(reason, description)
        except Exception as exc:
            self.settled = None
            if being_cancelled():
                raise asyncio.CancelledError from exc
            raise

    @abc.abstractmethod
    async def _ack(self) -> None: ...

    @abc.abstractmethod
    async def _release(self) -> None: ...

    @abc.abstractmethod
    async def _dead_letter(self, reason: str, description: str) -> None: ...
