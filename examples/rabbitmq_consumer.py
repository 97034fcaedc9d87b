"""The consumer service: the billing group reads Order* events from RabbitMQ.

It subscribes to ``{prefix}:notification_event:Order*`` in the consumer group
``billing``: the durable quorum queue ``{prefix}.billing``, bound to the
exchange with ``notification_event.#`` (AMQP cannot match part of a word),
of which the broker hands on only what the glob matches. It prints one line
per event it handles and stops after `count` events; with a count of 0 it
declares the queue and stops at once, and the queue keeps what is published
until the consumer runs again.

Run it with ``python examples/rabbitmq_consumer.py [prefix] [count]``. The
server is ``AMQP_URL`` (default ``amqp://guest:guest@127.0.0.1:5672/``); the
prefix is the first argument, else ``SHOP_PREFIX``, else ``shop``; `count`
is the second, else ``SHOP_COUNT``, else 3.
"""

from __future__ import annotations

import asyncio
import os
import sys

from brokers.rabbitmq import RabbitMQMessageBroker
from mediator import EventConsumer
from mediator.testing import wait_until
from shop import billing_events


async def main() -> None:
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    prefix = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SHOP_PREFIX", "shop")
    count = int(sys.argv[2] if len(sys.argv) > 2 else os.environ.get("SHOP_COUNT", "3"))

    async with RabbitMQMessageBroker.from_url(
        url, prefix, connection_name="shop billing"
    ) as broker:
        consumer = EventConsumer(broker=broker, event_map=billing_events())
        await consumer.subscribe(f"{prefix}:notification_event:Order*", group="billing")
        async with consumer:  # the queue is declared, bound and consumed from here
            print(f"billing reads {broker.group_queue('billing')}", file=sys.stderr, flush=True)
            try:
                await wait_until(consumer, lambda stats: stats.handled >= count, timeout=30)
            except TimeoutError:
                sys.exit(f"handled {consumer.stats.handled} of {count} events in 30 s")


if __name__ == "__main__":
    asyncio.run(main())
