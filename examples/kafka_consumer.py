"""The consumer service: the billing group reads Order* events from Kafka.

It subscribes to ``{prefix}:notification_event:Order*`` in the consumer
group ``billing`` (the Kafka group ``{prefix}.billing``), prints one line per
event it handles, and stops after `count` events. A new group starts at the
beginning of the topics (``start_from="beginning"``), and topics that appear
later are read from their first record, so it does not matter whether the
producer (examples/kafka_producer.py) ran first. Each event name is a topic
of its own: order holds within a topic, not across.

Run it with ``python examples/kafka_consumer.py [prefix] [count]``. The
cluster is ``KAFKA_URL`` (default ``kafka://127.0.0.1:9092``); the prefix is
the first argument, else ``SHOP_PREFIX``, else ``shop``; `count` defaults to 3.
"""

from __future__ import annotations

import asyncio
import os
import sys

from brokers.kafka import KafkaMessageBroker
from mediator import EventConsumer
from mediator.testing import wait_until
from shop import billing_events


async def main() -> None:
    url = os.environ.get("KAFKA_URL", "kafka://127.0.0.1:9092")
    prefix = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SHOP_PREFIX", "shop")
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 3

    # Topics appearing while it runs are found within a second.
    broker = KafkaMessageBroker.from_url(
        url, prefix, start_from="beginning", discovery_interval=1.0
    )
    async with broker:
        consumer = EventConsumer(broker=broker, event_map=billing_events())
        await consumer.subscribe(f"{prefix}:notification_event:Order*", group="billing")
        async with consumer:  # the group has its partitions from here
            try:
                await wait_until(consumer, lambda stats: stats.handled >= count, timeout=30)
            except TimeoutError:
                sys.exit(f"handled {consumer.stats.handled} of {count} events in 30 s")


if __name__ == "__main__":
    asyncio.run(main())
