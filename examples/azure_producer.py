"""The producer service: commands through a Mediator, events to an Azure Service Bus topic.

Each notification event becomes one message on the topic, with the logical
channel ``{topic}:notification_event:{name}`` in its ``channel`` application
property. The messages wait in the topic's subscriptions for the consumer
(examples/azure_consumer.py), whether that runs already or starts later.

Run it with ``python examples/azure_producer.py``. The namespace is
``SERVICEBUS_CONNECTION_STRING``; the topic is ``SERVICEBUS_TOPIC`` (default
``orders``).
"""

from __future__ import annotations

import asyncio
import os
import sys

from brokers.azure import AzureMessageBroker
from mediator import EventEmitter, Mediator
from shop import place_orders, shop_requests


async def main() -> None:
    connection_string = os.environ.get("SERVICEBUS_CONNECTION_STRING")
    if not connection_string:
        sys.exit("SERVICEBUS_CONNECTION_STRING is not set: give it a namespace's connection string")
    topic = os.environ.get("SERVICEBUS_TOPIC", "orders")
    # The broker made from a connection string owns its client: leaving the block closes it.
    async with AzureMessageBroker.from_connection_string(connection_string, topic) as broker:
        mediator = Mediator(
            request_map=shop_requests(), event_emitter=EventEmitter(message_broker=broker)
        )
        await place_orders(mediator)
    print(f"sent 3 commands; their events are on topic {topic}")


if __name__ == "__main__":
    asyncio.run(main())
