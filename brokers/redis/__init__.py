"""Redis transports: Pub/Sub (`RedisPubSubMessageBroker`, also importable as
diator's `RedisMessageBroker`), at-most-once, and Streams
(`RedisStreamMessageBroker`), at-least-once in consumer groups.

See docs/redis-pubsub.md and docs/redis-streams.md. Both keep dead letters
in the stream ``{prefix}:dead-letter``; `await broker.dead_letters()`
returns them oldest first. Both take a `redis.asyncio.cluster.RedisCluster`
client too, for a Redis Cluster (docs/redis-cluster.md).
"""

import importlib

try:
    # Here, before the package's modules, which may be imported already; and
    # `redis` itself first, as their `from redis import ...` would.
    importlib.import_module("redis")
    importlib.import_module("redis.asyncio")
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "brokers.redis needs redis-py: pip install 'mediator-toolkit[redis]'"
    ) from exc

from brokers.redis._naming import ChannelLayout as ChannelLayout
from brokers.redis.pubsub import RedisMessageBroker as RedisMessageBroker
from brokers.redis.pubsub import RedisPubSubBroker as RedisPubSubBroker
from brokers.redis.pubsub import RedisPubSubDelivery as RedisPubSubDelivery
from brokers.redis.pubsub import RedisPubSubMessageBroker as RedisPubSubMessageBroker
from brokers.redis.pubsub import RedisPubSubSubscription as RedisPubSubSubscription
from brokers.redis.streams import RedisStreamBroker as RedisStreamBroker
from brokers.redis.streams import RedisStreamDelivery as RedisStreamDelivery
from brokers.redis.streams import RedisStreamMessageBroker as RedisStreamMessageBroker
from brokers.redis.streams import RedisStreamSubscription as RedisStreamSubscription
from brokers.redis.streams import StartFrom as StartFrom

__all__ = [
    "RedisMessageBroker",
    "RedisPubSubDelivery",
    "RedisPubSubMessageBroker",
    "RedisPubSubSubscription",
    "RedisStreamDelivery",
    "RedisStreamMessageBroker",
    "RedisStreamSubscription",
]
