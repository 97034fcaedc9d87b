"""Dead letters, from poison to replay, through the in-memory broker.

Billing cannot charge orders while its tariff table is missing: its handler
raises, and the `DeadLetter` policy dead-letters each order at once. A body
that is not JSON is dead-lettered too. The operator lists the dead letters
grouped by reason and event, mends the handler, replays the failed orders
(each is handled once) and purges what cannot be mended. Against a real
broker the same steps are ``mediator dead-letters list|replay|purge``
(docs/dead-letters.md).

Run it with ``python examples/dead_letters.py``; no server is needed.
"""

from __future__ import annotations

import asyncio

import attrs

from brokers.memory import InMemoryMessageBroker
from mediator import DeadLetter, EventConsumer, EventEmitter, EventMap, NotificationEvent
from mediator.testing import wait_until


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int
    total_cents: int


class Billing:
    def __init__(self) -> None:
        self.tariffs: dict[str, float] | None = None  # missing until mended
        self.charged: list[int] = []

    async def charge(self, event: OrderPlaced) -> None:
        if self.tariffs is None:
            raise LookupError(f"order {event.order_id}: the tariff table is missing")
        self.charged.append(event.order_id)


async def main() -> None:
    broker = InMemoryMessageBroker(channel_prefix="shop")
    billing = Billing()
    events = EventMap()
    events.bind(OrderPlaced, billing.charge, policy=DeadLetter())
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe("shop:notification_event:*")
    async with consumer:
        emitter = EventEmitter(message_broker=broker)
        for order_id in (1, 2, 3):
            await emitter.emit(OrderPlaced(order_id=order_id, total_cents=1000 * order_id))
        await broker.publish_raw("shop:notification_event:OrderPlaced", b"{garbled")
        await wait_until(consumer, lambda stats: stats.dead_lettered >= 4)

        dead = await broker.dead_letters()
        groups: dict[str, int] = {}
        for record in dead:
            groups[record.reason] = groups.get(record.reason, 0) + 1
        for reason, count in sorted(groups.items()):
            print(f"{count} dead-lettered: {reason}")

        billing.tariffs = {"standard": 1.0}  # mended
        failed = [record for record in dead if record.reason == "handler_failed"]
        async for record in broker.replay_dead_letters(failed):
            print(f"replayed {record.channel} (replayed {record.replay_count} times before)")
        await wait_until(consumer, lambda stats: stats.handled >= 3)
        print(f"charged orders {sorted(billing.charged)}")

        rest = await broker.dead_letters()
        purged = await broker.purge_dead_letters(rest)
        print(f"purged {purged}: {rest[0].reason}; left {len(await broker.dead_letters())}")


if __name__ == "__main__":
    asyncio.run(main())
