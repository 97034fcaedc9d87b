"""What happens to a delivery once its handlers ran, decided in one place for
every transport; a transport only carries out the verbs (`DeliveryBase`)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter

import attrs

from mediator._broker import Delivery
from mediator._limits import quote
from mediator._policies import Backoff

__all__ = [
    "DEFAULT_REDELIVERY_BACKOFF",
    "HANDLED",
    "HANDLER_FAILED",
    "REJECTED",
    "TOO_MANY_DELIVERIES",
    "ConsumerStats",
    "Report",
    "Settlement",
]

logger = logging.getLogger("mediator.consumer")

HANDLER_FAILED = "handler_failed"
"""Dead-letter reason of a message whose handler failed past its policy."""
REJECTED = "rejected"
"""Dead-letter reason of a message an `incoming` hook refused."""
TOO_MANY_DELIVERIES = "too_many_deliveries"
"""Dead-letter reason of a message delivered `max_deliveries` times already."""

DEFAULT_REDELIVERY_BACKOFF = Backoff(initial=0.5, multiplier=2.0, maximum=30.0, jitter=0.2)
"""How long a released delivery waits before it goes back, by its delivery
count: 0.5 s, 1 s, 2 s, ... up to 30 s, each ±20 %."""

Report = tuple[str, str | None]
"""How a delivery was settled ("handled", "released", "dead_lettered",
"duplicate") and why."""
HANDLED: Report = ("handled", None)
DUPLICATE: Report = ("duplicate", None)


@attrs.define
class ConsumerStats:
    """Counters for health checks; read them from `EventConsumer.stats`."""

    received: int = 0
    """Deliveries taken from the broker."""
    handled: int = 0
    """Deliveries whose handlers all finished (acknowledged)."""
    retried: int = 0
    """Handler calls repeated under a Retry policy."""
    released: int = 0
    """Deliveries given back to the broker for redelivery (fail-fast, stop, publish errors)."""
    dead_lettered: int = 0
    """Deliveries moved to the dead-letter place, all reasons."""
    dead_lettered_by_reason: Counter[str] = attrs.field(factory=Counter)
    """Dead letters per reason: a `DecodeFailure` value, "handler_failed" or "rejected"."""
    in_flight: int = 0
    """Deliveries being handled right now."""
    duplicates: int = 0
    """Deliveries an inbox recognised as handled before: acknowledged, not handled."""

    @property
    def settled(self) -> int:
        """Deliveries settled one way or another."""
        return self.handled + self.released + self.dead_lettered + self.duplicates


class Settlement:
    """The one place a consumer's deliveries are settled.

    - Acknowledge after the handlers.
    - Release after a redelivery backoff by delivery count (none while
      stopping, none where the broker holds released messages back itself);
      a stop cuts every wait short.
    - Dead-letter past the delivery limit (`max_deliveries`, compared here
      only), on a handler's policy, or for bad input. A dead-letter write that
      fails is logged once and the delivery released after the same backoff:
      never a hot loop.

    Every outcome is counted in `stats`, and returned as a `Report`.
    """

    def __init__(
        self,
        stats: ConsumerStats,
        *,
        max_deliveries: int,
        backoff: Backoff = DEFAULT_REDELIVERY_BACKOFF,
        guarantee: str = "",
    ) -> None:
        self.stats = stats
        self.max_deliveries = max_deliveries
        self.backoff = backoff
        self._guarantee = guarantee
        self.stopping = asyncio.Event()
        """Set when the consumer stops: releases waiting out their delay go now."""

    async def ack(self, delivery: Delivery) -> Report:
        await delivery.ack()
        self.stats.handled += 1
        return HANDLED

    async def duplicate(self, delivery: Delivery) -> Report:
        await delivery.ack()
        self.stats.duplicates += 1
        return DUPLICATE

    async def delivered_too_often(self, delivery: Delivery) -> Report:
        """Dead-letter a delivery that came more than `max_deliveries` times
        without being settled (the members handling it died or hung each time)."""
        why = (
            f"delivered {delivery.delivery_count} times without being settled (its handlers "
            f"died or hung each time); the limit is max_deliveries={self.max_deliveries}"
        )
        logger.error("dead-lettering a message from %s: %s", quote(delivery.channel, 200), why)
        return await self.dead_letter(delivery, TOO_MANY_DELIVERIES, why)

    async def dead_letter(self, delivery: Delivery, reason: str, description: str) -> Report:
        try:
            await delivery.dead_letter(reason, quote(description))
        except Exception as exc:
            # Not written: the message must not be lost, so it goes back.
            logger.error(
                "could not dead-letter a message from %s (%s): %s; releasing it instead",
                quote(delivery.channel, 200),
                reason,
                quote(repr(exc)),
            )
            await self._give_back(delivery, None, self._delay(delivery, wait=True))
            return ("released", quote(f"dead-lettering it ({reason}) failed: {exc!r}"))
        self.stats.dead_lettered += 1
        self.stats.dead_lettered_by_reason[reason] += 1
        return ("dead_lettered", reason)

    async def release(
        self, delivery: Delivery, why: str, message_id: uuid.UUID | None, *, wait: bool = True
    ) -> Report:
        """Give `delivery` back for redelivery, after the redelivery backoff
        unless `wait` is False (the consumer is stopping) or the broker holds
        released messages back itself; dead-letter it at the delivery limit."""
        if delivery.delivery_count >= self.max_deliveries:
            logger.error(
                "dead-lettering message %s from %s after %d deliveries: %s",
                message_id,
                quote(delivery.channel, 200),
                delivery.delivery_count,
                quote(why),
            )
            return await self.dead_letter(delivery, TOO_MANY_DELIVERIES, why)
        delay = self._delay(delivery, wait=wait)
        logger.info(
            "releasing message %s from %s (%s) in %.2fs: %s",
            message_id,
            quote(delivery.channel, 200),
            self._guarantee,
            delay,
            quote(why),
        )
        await self._give_back(delivery, message_id, delay)
        return ("released", quote(why))

    def _delay(self, delivery: Delivery, *, wait: bool) -> float:
        if not wait or self.stopping.is_set() or delivery.holds_back_releases:
            return 0.0
        return self.backoff.delay(delivery.delivery_count)

    async def _give_back(
        self, delivery: Delivery, message_id: uuid.UUID | None, delay: float = 0.0
    ) -> None:
        """Release `delivery` after `delay` seconds, or sooner if the consumer
        stops meanwhile (a cancelled wait releases at once)."""
        if delay > 0:
            try:
                async with asyncio.timeout(delay):
                    await self.stopping.wait()
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                await self._give_back(delivery, message_id)
                raise
        try:
            await delivery.release()
        except Exception:
            logger.exception("could not release message %s from %s", message_id, delivery.channel)
        self.stats.released += 1
