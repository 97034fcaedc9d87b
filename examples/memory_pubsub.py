"""A producer and a consumer talking through the in-memory broker by pattern.

The producer service sends commands through its Mediator; their notification
events are published on ``shop:notification_event:{name}``. The billing
service subscribes to ``shop:notification_event:Order*``: its handlers get
typed events, and the newsletter event, on another channel, never reaches
them. The first order's events carry the correlation id of its checkout.

Run it with ``python examples/memory_pubsub.py``; no server is needed. The
same shop runs over Redis and Azure Service Bus in the examples beside it.
"""

from __future__ import annotations

import asyncio

from brokers.memory import InMemoryMessageBroker
from mediator import EventConsumer, EventEmitter, Mediator
from mediator.testing import wait_until
from shop import billing_events, place_orders, shop_requests


async def main() -> None:
    broker = InMemoryMessageBroker(channel_prefix="shop")
    mediator = Mediator(
        request_map=shop_requests(), event_emitter=EventEmitter(message_broker=broker)
    )

    billing = EventConsumer(broker=broker, event_map=billing_events())
    await billing.subscribe("shop:notification_event:Order*")
    async with billing:  # live from here: nothing published below is missed
        await place_orders(mediator)
        await wait_until(billing, lambda stats: stats.handled >= 3)

    stats = billing.stats
    print(f"received {stats.received}, handled {stats.handled}")
    print(f"published {len(broker.messages)}, newsletter included")


if __name__ == "__main__":
    asyncio.run(main())
