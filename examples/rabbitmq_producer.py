"""The producer service: commands through a Mediator, events to RabbitMQ.

Each notification event is published, persistent and confirmed, to the
topic exchange named by the prefix with the routing key
``notification_event.{name}``. This producer publishes with
``mandatory=True``: an event that no queue is bound for is refused with
PublishError, so it knows that the billing consumer
(examples/rabbitmq_consumer.py) has run once and declared its group's queue,
which keeps the events from then on whether the consumer runs or not. By
default such an event would be kept in the queue ``{prefix}.unroutable``
instead, where the consumer does not read it.

Run it with ``python examples/rabbitmq_producer.py [prefix]``. The server is
``AMQP_URL`` (default ``amqp://guest:guest@127.0.0.1:5672/``); the prefix is
the first argument, else ``SHOP_PREFIX``, else ``shop``.
"""

from __future__ import annotations

import asyncio
import os
import sys

from brokers.rabbitmq import RabbitMQMessageBroker
from mediator import EventEmitter, Mediator, PublishError
from shop import place_orders, shop_requests


async def main() -> None:
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    prefix = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SHOP_PREFIX", "shop")
    async with RabbitMQMessageBroker.from_url(
        url, prefix, connection_name="shop producer", mandatory=True
    ) as broker:
        mediator = Mediator(
            request_map=shop_requests(), event_emitter=EventEmitter(message_broker=broker)
        )
        try:
            await place_orders(mediator)
        except PublishError as exc:
            sys.exit(f"not sent: {exc}")
    print(f"sent 3 commands; their events are on the exchange {prefix}")


if __name__ == "__main__":
    asyncio.run(main())
