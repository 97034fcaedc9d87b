"""The consumer service: reads Order* events from an Azure Service Bus topic subscription.

It receives from the subscription ``SERVICEBUS_SUBSCRIPTION`` (default
``billing``) of the topic ``SERVICEBUS_TOPIC`` (default ``orders``) the events
whose channel matches ``{topic}:notification_event:Order*``, prints one line
per event it handles, and stops after `count` events. The subscription must
exist in Azure; what it holds waits there, so it does not matter whether the
producer (examples/azure_producer.py) ran first.

The pattern is matched here, on the client: a message it does not match (the
newsletter event) is completed, taken off the subscription. Give the
subscription the SQL rule ``sql_filter(pattern)`` and Azure keeps such messages
away in the first place.

Run it with ``python examples/azure_consumer.py [count]``; `count` defaults to 3.
The namespace is ``SERVICEBUS_CONNECTION_STRING``.
"""

from __future__ import annotations

import asyncio
import os
import sys

from brokers.azure import AzureMessageBroker
from mediator import EventConsumer
from mediator.testing import wait_until
from shop import billing_events


async def main() -> None:
    connection_string = os.environ.get("SERVICEBUS_CONNECTION_STRING")
    if not connection_string:
        sys.exit("SERVICEBUS_CONNECTION_STRING is not set: give it a namespace's connection string")
    topic = os.environ.get("SERVICEBUS_TOPIC", "orders")
    subscription = os.environ.get("SERVICEBUS_SUBSCRIPTION", "billing")
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3

    async with AzureMessageBroker.from_connection_string(
        connection_string, topic, subscription=subscription
    ) as broker:
        consumer = EventConsumer(broker=broker, event_map=billing_events())
        await consumer.subscribe(f"{topic}:notification_event:Order*")  # from `subscription`
        async with consumer:  # the receiver is open from here
            try:
                await wait_until(consumer, lambda stats: stats.handled >= count, timeout=30)
            except TimeoutError:
                sys.exit(f"handled {consumer.stats.handled} of {count} events in 30 s")


if __name__ == "__main__":
    asyncio.run(main())
