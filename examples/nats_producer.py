"""The producer service: commands through a Mediator, events to NATS JetStream.

Each notification event is published to the subject of its logical
channel, ``{prefix}.notification_event.{name}``, and kept by the stream
``{prefix}`` (made on the first publish) for the consumer
(examples/nats_consumer.py), whether that runs already or starts later.
JetStream acknowledges every publish; the message id is the
``Nats-Msg-Id``, so publishing the same event again within two minutes is
dropped as a duplicate.

Run it with ``python examples/nats_producer.py [prefix]``. The server is
``NATS_URL`` (default ``nats://127.0.0.1:4222``); the prefix is the first
argument, else ``SHOP_PREFIX``, else ``shop``.
"""

from __future__ import annotations

import asyncio
import os
import sys

from brokers.nats import NatsMessageBroker
from mediator import EventEmitter, Mediator
from shop import place_orders, shop_requests


async def main() -> None:
    url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    prefix = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SHOP_PREFIX", "shop")
    async with NatsMessageBroker.from_url(url, prefix) as broker:
        mediator = Mediator(
            request_map=shop_requests(), event_emitter=EventEmitter(message_broker=broker)
        )
        await place_orders(mediator)
    print(f"sent 3 commands; their events are in the stream {broker.stream}")


if __name__ == "__main__":
    asyncio.run(main())
