"""The producer service: commands through a Mediator, events to Kafka topics.

Each notification event becomes a record of the topic of its logical
channel, ``{prefix}.notification_event.{name}``, where it stays for the
consumer (examples/kafka_consumer.py), whether that runs already or starts
later. The topics are created with one partition each: the shop's events
carry no partition key, and one partition keeps them in the order they were
placed (events naming a key with ``partition_key=`` keep their order per key
over many partitions).

Run it with ``python examples/kafka_producer.py [prefix]``. The cluster is
``KAFKA_URL`` (default ``kafka://127.0.0.1:9092``); set ``KAFKA_IDEMPOTENCE=0``
for a broker without idempotent producers (Tansu). The prefix is the first
argument, else ``SHOP_PREFIX``, else ``shop``.
"""

from __future__ import annotations

import asyncio
import os
import sys

from brokers.kafka import KafkaMessageBroker
from mediator import EventEmitter, Mediator
from shop import place_orders, shop_requests


async def main() -> None:
    url = os.environ.get("KAFKA_URL", "kafka://127.0.0.1:9092")
    prefix = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SHOP_PREFIX", "shop")
    idempotence = os.environ.get("KAFKA_IDEMPOTENCE", "1") != "0"
    async with KafkaMessageBroker.from_url(
        url, prefix, partitions=1, idempotence=idempotence
    ) as broker:
        mediator = Mediator(
            request_map=shop_requests(), event_emitter=EventEmitter(message_broker=broker)
        )
        await place_orders(mediator)
    print(f"sent 3 commands; their events are in the topics {prefix}.notification_event.*")


if __name__ == "__main__":
    asyncio.run(main())
