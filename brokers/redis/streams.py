"""Redis Streams: ``XADD`` and ``XREADGROUP`` in consumer groups,
at-least-once (docs/redis-streams.md)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from brokers.redis._base import _RedisBroker
from brokers.redis._client import Client
from brokers.redis._errors import batch_names
from brokers.redis._naming import channel_name, registry_key
from brokers.redis._streams_subscription import RedisStreamDelivery, RedisStreamSubscription
from mediator.transport import (
    DEFAULT_MAX_MESSAGE_SIZE,
    REPLAY_COUNT_HEADER,
    DeadLetterRecord,
    DeliveryGuarantee,
    Message,
    PublishError,
    quote,
)

__all__ = ["RedisStreamDelivery", "RedisStreamMessageBroker", "RedisStreamSubscription"]

StartFrom = Literal["new", "beginning"]
"""Where a group made on an existing stream starts."""


class RedisStreamMessageBroker(_RedisBroker):
    """Redis Streams: every logical channel is a stream, read in consumer
    groups; at-least-once (docs/redis-streams.md).

    ```python
    broker = RedisStreamMessageBroker(client=Redis(), channel_prefix="shop", maxlen=100_000)
    ```

    `client` may be a `RedisCluster`: streams are then spread over the
    cluster's primaries by hash slot, and read slot by slot
    (docs/redis-cluster.md).

    Streams are keyed ``{prefix}:{message_type}:{message_name}``, an entry's
    field ``data`` holding the envelope; producers register each stream key
    in the set `registry_key`, where subscriptions find them.
    `subscribe(pattern, group="billing")` joins (or creates) the group on
    every matching stream; without a group a subscription gets a private
    group of its own, removed when it closes.
    """

    delivery_guarantee = DeliveryGuarantee.AT_LEAST_ONCE

    def __init__(
        self,
        client: Client,
        channel_prefix: str = "mediator",
        *,
        maxlen: int | None = None,
        start_from: StartFrom = "new",
        claim_idle: float = 30.0,
        claim_interval: float = 5.0,
        discovery_interval: float = 1.0,
        block_ms: int = 1000,
        batch_size: int = 100,
        max_deliveries: int | None = None,
        dead_letter_limit: int = 10_000,
        idle_consumer_timeout: float | None = 3600.0,
        silence_timeout: float = 15.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        if start_from not in ("new", "beginning"):
            raise ValueError(
                f"RedisStreamMessageBroker(start_from={start_from!r}): must be 'new' or 'beginning'"
            )
        for name, value in (
            ("claim_idle", claim_idle),
            ("claim_interval", claim_interval),
            ("discovery_interval", discovery_interval),
            ("block_ms", block_ms),
            ("batch_size", batch_size),
            ("idle_consumer_timeout", idle_consumer_timeout),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"RedisStreamMessageBroker({name}={value}): must be above 0")
        if max_deliveries is not None:
            warnings.warn(
                f"RedisStreamMessageBroker(max_deliveries={max_deliveries}) is no longer used: "
                "the one delivery limit is EventConsumer(max_deliveries=...), which also "
                "dead-letters an entry delivered more often without being settled; pass it there",
                DeprecationWarning,
                stacklevel=2,
            )
        super().__init__(
            client, channel_prefix, dead_letter_limit, silence_timeout, max_message_size
        )
        self.maxlen = maxlen
        """Trim each stream to about this many entries on every XADD; None: never."""
        self.start_from: StartFrom = start_from
        """Where a group made on an existing stream starts: "new" or "beginning"."""
        self.claim_idle = claim_idle
        """Seconds an entry stays pending, unsettled, before a member claims it."""
        self.claim_interval = claim_interval
        """Seconds between two claim passes, per subscription."""
        self.discovery_interval = discovery_interval
        """Seconds between two reads of the registry, per subscription."""
        self.block_ms = block_ms
        """Milliseconds each XREADGROUP waits for new entries."""
        self.batch_size = batch_size
        """Entries per XREADGROUP and per XAUTOCLAIM."""
        self.idle_consumer_timeout = idle_consumer_timeout
        """Seconds after which a group member with nothing pending is removed; None: never."""
        self.registry_key = registry_key(channel_prefix)
        """The set of every stream key producers published to."""

    def _reply_due(self) -> float:
        return max(self.block_ms / 1000, self.discovery_interval) + self.silence_timeout

    def channel(self, message: Message) -> str:
        """The stream key `message` is appended to (its logical channel)."""
        return channel_name(self.channel_prefix, message)

    async def send_message(self, message: Message) -> None:
        """``XADD`` one envelope; raises PublishError when Redis cannot take it."""
        await self.send_messages((message,))

    async def send_messages(self, messages: Sequence[Message]) -> None:
        """``XADD`` a batch in one pipelined round trip, in order.

        A batch that fails on a connection Redis had closed (an idle pooled
        connection after a restart or a ``CLIENT KILL``) is sent once more:
        at-least-once allows the duplicate, should the first have arrived.
        """
        entries = [(self.channel(message), self.encode(message)) for message in messages]
        for attempt in (1, 2):
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for key, data in entries:
                        pipe.xadd(key, {"data": data}, maxlen=self.maxlen, approximate=True)
                    # Registered on every batch (same round trip), so a registry
                    # lost with a restart or a flush comes back by itself.
                    pipe.sadd(self.registry_key, *{key for key, _ in entries})
                    await pipe.execute()
                return
            except redis_errors.RedisError as exc:
                if attempt == 1 and isinstance(exc, redis_errors.ConnectionError):
                    continue
                raise PublishError(
                    f"could not append {batch_names(messages)} to Redis streams at "
                    f"{self.address}: {quote(str(exc))}"
                ) from exc

    async def _replay(self, record: DeadLetterRecord) -> None:
        """``XADD`` the body to its stream with the replay counted, register
        the stream and ``XDEL`` the dead letter, in one transaction (on a
        cluster, where the keys are in different slots, one after the other)."""
        cluster = isinstance(self.client, RedisCluster)
        async with self.client.pipeline(transaction=not cluster) as pipe:
            pipe.xadd(
                record.channel,
                {"data": record.data, REPLAY_COUNT_HEADER: str(record.replay_count + 1)},
                maxlen=self.maxlen,
                approximate=True,
            )
            pipe.sadd(self.registry_key, record.channel)
            if not cluster:
                pipe.xdel(self.dead_letter_key, record.id)
            await pipe.execute()
        if cluster:
            await self.client.xdel(self.dead_letter_key, record.id)

    async def subscribe(self, pattern: str, *, group: str | None = None) -> RedisStreamSubscription:
        """Read the streams matching `pattern` in consumer `group` (a private
        group when None); returns once the group exists on every stream that
        matches now."""
        subscription = RedisStreamSubscription(self, pattern, group)
        await self._subscribed(subscription)
        return subscription


RedisStreamBroker = RedisStreamMessageBroker
"""The class's name before every broker was named ``<Transport>MessageBroker``."""
