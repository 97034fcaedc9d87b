"""The consumer service: the billing group reads Order* events from NATS JetStream.

It subscribes to ``{prefix}:notification_event:Order*`` in the consumer
group ``billing``: a durable pull consumer on the stream ``{prefix}``,
filtered by ``{prefix}.*.>`` and the glob in process,
shared by every instance of the service. It prints one line per event it
handles, and stops after `count` events. A new group starts with every
message the stream keeps (``start_from="beginning"``), so it does not matter
whether the producer (examples/nats_producer.py) ran first.

Run it with ``python examples/nats_consumer.py [prefix] [count]``. The
server is ``NATS_URL`` (default ``nats://127.0.0.1:4222``); the prefix is the
first argument, else ``SHOP_PREFIX``, else ``shop``; `count` defaults to 3.
"""

from __future__ import annotations

import asyncio
import os
import sys

from brokers.nats import NatsMessageBroker
from mediator import EventConsumer
from mediator.testing import wait_until
from shop import billing_events


async def main() -> None:
    url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    prefix = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SHOP_PREFIX", "shop")
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 3

    async with NatsMessageBroker.from_url(url, prefix, start_from="beginning") as broker:
        consumer = EventConsumer(broker=broker, event_map=billing_events())
        await consumer.subscribe(f"{prefix}:notification_event:Order*", group="billing")
        async with consumer:  # the group's consumer exists from here
            try:
                await wait_until(consumer, lambda stats: stats.handled >= count, timeout=30)
            except TimeoutError:
                sys.exit(f"handled {consumer.stats.handled} of {count} events in 30 s")


if __name__ == "__main__":
    asyncio.run(main())
