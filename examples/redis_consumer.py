"""The consumer service: the billing group reads Order* events from Redis Streams.

It subscribes to ``{prefix}:notification_event:Order*`` in the consumer group
``billing``, prints one line per event it handles, and stops after `count`
events. A new group starts at the beginning of the streams, so it does not
matter whether the producer (examples/redis_producer.py) ran first. Each
event name is a stream of its own: order holds within a name, not across.

Run it with ``python examples/redis_consumer.py [prefix] [count]``. The server
is ``REDIS_URL`` (default ``redis://127.0.0.1:6379``); the prefix is the first
argument, else ``SHOP_PREFIX``, else ``shop``; `count` defaults to 3.
"""

from __future__ import annotations

import asyncio
import os
import sys

import attrs
from redis.asyncio import Redis

from brokers.redis import RedisStreamBroker
from mediator import EventConsumer, EventMap, NotificationEvent, current_message


# The consumer's own classes: what must match the producer's is the event
# name and the payload fields, not the Python class.
@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int
    total_cents: int


@attrs.frozen(kw_only=True)
class OrderCancelled(NotificationEvent):
    order_id: int


events = EventMap()


@events.bind(OrderPlaced)
async def bill(event: OrderPlaced) -> None:
    message = current_message()
    correlation = message.headers["correlation_id"] if message else "?"
    print(f"billing order {event.order_id}: {event.total_cents} cents ({correlation})", flush=True)


@events.bind(OrderCancelled)
async def refund(event: OrderCancelled) -> None:
    print(f"refunding order {event.order_id}", flush=True)


async def main() -> None:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
    prefix = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SHOP_PREFIX", "shop")
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 3

    async with Redis.from_url(url) as client:
        broker = RedisStreamBroker(client=client, channel_prefix=prefix, start_from="beginning")
        consumer = EventConsumer(broker=broker, event_map=events)
        await consumer.subscribe(f"{prefix}:notification_event:Order*", group="billing")
        async with consumer:  # the group exists on every matching stream from here
            try:
                await consumer.wait_until(lambda stats: stats.handled >= count, timeout=30)
            except TimeoutError:
                sys.exit(f"handled {consumer.stats.handled} of {count} events in 30 s")


if __name__ == "__main__":
    asyncio.run(main())
