"""Settlement: what happens to a delivery after its handlers, decided once
for every transport; tested on a delivery that records what it was told."""

from __future__ import annotations

import asyncio

import pytest

from mediator._settlement import ConsumerStats, Settlement
from mediator.transport import Backoff, DeliveryBase

WAIT = 10.0
AN_HOUR = Backoff(initial=3600, maximum=3600, jitter=0)


class Recorded(DeliveryBase):
    """A delivery that records its settlement; its dead-letter place may be down."""

    def __init__(self, delivery_count: int = 1, *, dead_letters_fail: bool = False) -> None:
        super().__init__("shop:notification_event:OrderPlaced", b"{}", delivery_count)
        self.dead_letters_fail = dead_letters_fail
        self.done: list[str] = []
        self.released = asyncio.Event()

    async def _ack(self) -> None:
        self.done.append("ack")

    async def _release(self) -> None:
        self.done.append("release")
        self.released.set()

    async def _dead_letter(self, reason: str, description: str) -> None:
        if self.dead_letters_fail:
            raise ConnectionError("the dead-letter place is down")
        self.done.append(f"dead_letter {reason}")


class HeldBack(Recorded):
    holds_back_releases = True


def settlement(max_deliveries: int = 3, backoff: Backoff = AN_HOUR) -> Settlement:
    return Settlement(ConsumerStats(), max_deliveries=max_deliveries, backoff=backoff)


async def test_a_release_waits_its_backoff_and_a_stop_cuts_the_wait_short() -> None:
    settle = settlement()
    delivery = Recorded()
    releasing = asyncio.create_task(settle.release(delivery, "its follow-ups failed", None))
    await asyncio.sleep(0)  # let it start waiting (an hour)
    assert delivery.done == []
    settle.stopping.set()
    async with asyncio.timeout(WAIT):
        report = await releasing
    assert report == ("released", "its follow-ups failed")
    assert delivery.done == ["release"]
    assert settle.stats.released == 1


@pytest.mark.parametrize("delivery", [HeldBack(), Recorded()], ids=["held-back", "no-wait"])
async def test_no_wait_where_the_broker_holds_back_or_the_caller_says_so(
    delivery: Recorded,
) -> None:
    settle = settlement()
    async with asyncio.timeout(WAIT):
        await settle.release(delivery, "stopped", None, wait=isinstance(delivery, HeldBack))
    assert delivery.done == ["release"]


async def test_a_release_at_the_delivery_limit_is_a_dead_letter() -> None:
    settle = settlement(max_deliveries=3)
    delivery = Recorded(delivery_count=3)
    report = await settle.release(delivery, "its follow-ups failed", None)
    assert report == ("dead_lettered", "too_many_deliveries")
    assert delivery.done == ["dead_letter too_many_deliveries"]
    assert settle.stats.dead_lettered_by_reason == {"too_many_deliveries": 1}


async def test_a_delivery_that_came_too_often_unsettled_is_dead_lettered() -> None:
    settle = settlement(max_deliveries=3)
    delivery = Recorded(delivery_count=4)
    assert await settle.delivered_too_often(delivery) == ("dead_lettered", "too_many_deliveries")
    assert delivery.done == ["dead_letter too_many_deliveries"]


async def test_a_failed_dead_letter_write_releases_after_the_backoff_never_at_once() -> None:
    settle = settlement()
    delivery = Recorded(dead_letters_fail=True)
    settling = asyncio.create_task(settle.dead_letter(delivery, "handler_failed", "boom"))
    await asyncio.sleep(0)
    assert delivery.done == []  # waiting its backoff, not straight back
    assert delivery.settled is None  # the failed write left it unsettled
    settle.stopping.set()
    async with asyncio.timeout(WAIT):
        outcome, why = await settling
    assert outcome == "released"
    assert why is not None
    assert "dead-lettering it (handler_failed) failed" in why
    assert delivery.done == ["release"]
    assert (settle.stats.released, settle.stats.dead_lettered) == (1, 0)


async def test_acknowledged_and_duplicates_are_counted_apart() -> None:
    settle = settlement()
    assert await settle.ack(Recorded()) == ("handled", None)
    assert await settle.duplicate(Recorded()) == ("duplicate", None)
    assert (settle.stats.handled, settle.stats.duplicates) == (1, 1)
