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

from redis.asyncio import Redis

from brokers.redis import RedisStreamMessageBroker
from mediator import EventConsumer
from mediator.testing import wait_until
from shop import billing_events


async def main() -> None:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
    prefix = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SHOP_PREFIX", "shop")
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 3

    async with Redis.from_url(url) as client:
        broker = RedisStreamMessageBroker(
            client=client, channel_prefix=prefix, start_from="beginning"
        )
        consumer = EventConsumer(broker=broker, event_map=billing_events())
        await consumer.subscribe(f"{prefix}:notification_event:Order*", group="billing")
        async with consumer:  # the group exists on every matching stream from here
            try:
                await wait_until(consumer, lambda stats: stats.handled >= count, timeout=30)
            except TimeoutError:
                sys.exit(f"handled {consumer.stats.handled} of {count} events in 30 s")


if __name__ == "__main__":
    asyncio.run(main())
