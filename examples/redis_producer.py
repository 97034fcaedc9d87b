"""The producer service: commands through a Mediator, events to Redis Streams.

Each notification event is appended to the stream of its logical channel,
``{prefix}:notification_event:{name}``, where it waits for the consumer
(examples/redis_consumer.py), whether that runs already or starts later.

Run it with ``python examples/redis_producer.py [prefix]``. The server is
``REDIS_URL`` (default ``redis://127.0.0.1:6379``); the prefix is the first
argument, else ``SHOP_PREFIX``, else ``shop``.
"""

from __future__ import annotations

import asyncio
import os
import sys

from redis.asyncio import Redis

from brokers.redis import RedisStreamMessageBroker
from mediator import EventEmitter, Mediator
from shop import place_orders, shop_requests


async def main() -> None:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
    prefix = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SHOP_PREFIX", "shop")
    async with Redis.from_url(url) as client:
        broker = RedisStreamMessageBroker(client=client, channel_prefix=prefix, maxlen=10_000)
        mediator = Mediator(
            request_map=shop_requests(), event_emitter=EventEmitter(message_broker=broker)
        )
        await place_orders(mediator)
    print(f"sent 3 commands; their events are in the streams {prefix}:notification_event:*")


if __name__ == "__main__":
    asyncio.run(main())
