"""The shop on a Redis Cluster: Streams spread over the primaries, read in a group.

The producer's three commands raise events of three names, so three streams,
``{prefix}:notification_event:{name}``, each in the hash slot of its key, on
the primary that holds that slot. The billing group reads the ``Order*``
streams wherever they are: one read per slot, each on its primary
(docs/redis-cluster.md). The script prints the primary of each stream, then
what billing handled, and deletes its keys at the end.

Run it with ``python examples/redis_cluster.py [prefix]``. The cluster is
``REDIS_CLUSTER_URL``, the ``redis://host:port`` of any of its nodes
(default ``redis://127.0.0.1:7000``); the prefix is the first argument,
else ``SHOP_PREFIX``, else ``shop``.
"""

from __future__ import annotations

import asyncio
import os
import sys

from brokers.redis import RedisStreamMessageBroker
from mediator import EventConsumer, EventEmitter, Mediator
from mediator.testing import wait_until
from shop import billing_events, place_orders, shop_requests


async def main() -> None:
    node = os.environ.get("REDIS_CLUSTER_URL", "redis://127.0.0.1:7000")
    prefix = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SHOP_PREFIX", "shop")
    # redis+cluster:// builds a RedisCluster client, which finds the
    # other nodes from this one; the broker owns it and closes it on stop().
    url = node.replace("redis://", "redis+cluster://", 1)
    async with RedisStreamMessageBroker.from_url(url, prefix, start_from="beginning") as broker:
        mediator = Mediator(
            request_map=shop_requests(), event_emitter=EventEmitter(message_broker=broker)
        )
        await place_orders(mediator)
        client = broker.client
        for key in sorted(k.decode() for k in await client.smembers(broker.registry_key)):
            print(f"{key} is on the primary {client.get_node_from_key(key).name}")

        consumer = EventConsumer(broker=broker, event_map=billing_events())
        await consumer.subscribe(f"{prefix}:notification_event:Order*", group="billing")
        try:
            async with consumer:
                await wait_until(consumer, lambda stats: stats.handled >= 3, timeout=30)
        finally:
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
            if keys:
                await client.delete(*keys)  # redis-py deletes them slot by slot


if __name__ == "__main__":
    asyncio.run(main())
