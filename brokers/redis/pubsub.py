"""Redis Pub/Sub: ``PUBLISH`` and ``PSUBSCRIBE``, at-most-once
(docs/redis-pubsub.md)."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import Any, ClassVar, Self

from redis import exceptions as redis_errors
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection

from brokers.redis._base import _RedisBroker
from brokers.redis._client import Client
from brokers.redis._dead_letters import append_dead_letter
from brokers.redis._errors import REDIS_ERRORS, batch_names, fatal, lost
from brokers.redis._naming import ChannelLayout, channel_name
from mediator.transport import (
    DEFAULT_MAX_MESSAGE_SIZE,
    BrokerUnavailableError,
    DeadLetterRecord,
    DeliveryBase,
    DeliveryGuarantee,
    Message,
    PublishError,
    ReconnectingSubscription,
    TransportError,
    being_cancelled,
    quote,
)

__all__ = [
    "RedisMessageBroker",
    "RedisPubSubDelivery",
    "RedisPubSubMessageBroker",
    "RedisPubSubSubscription",
]

logger = logging.getLogger("mediator.brokers.redis")

_PMESSAGE = (b"pmessage", "pmessage")  # bytes, or str under RESP3 push parsing
_PSUBSCRIBE = (b"psubscribe", "psubscribe")


async def _push_as_is(response: Any) -> Any:
    # redis-py's default handler logs every pushed message at DEBUG, building
    # the whole line even when DEBUG is off.
    return response


class RedisPubSubDelivery(DeliveryBase):
    """One ``pmessage``: ack does nothing, release drops it (with a
    WARNING), a dead letter goes to the broker's dead-letter stream."""

    __slots__ = ("_broker",)

    def __init__(self, broker: RedisPubSubMessageBroker, channel: str, data: bytes) -> None:
        self._broker = broker
        self.channel = channel
        self.data = data
        self.delivery_count = 1
        self.settled = None

    async def _ack(self) -> None:
        """Nothing to do: Redis forgot the message once it sent it."""

    async def _release(self) -> None:
        logger.warning(
            "Redis Pub/Sub cannot redeliver; dropping a message from %s", quote(self.channel, 200)
        )

    async def _dead_letter(self, reason: str, description: str) -> None:
        broker = self._broker
        record = DeadLetterRecord.of(self.channel, self.data, reason, description)
        await append_dead_letter(
            broker.client, broker.dead_letter_key, broker.dead_letter_limit, record
        )


class RedisPubSubSubscription(ReconnectingSubscription[RedisPubSubDelivery]):
    """A ``PSUBSCRIBE`` on a connection of its own.

    Replies are read from the connection directly, never through redis-py's
    retrying `PubSub.parse_response`, which would reconnect and re-subscribe
    silently: every reconnect goes through the kit's loop, and is logged.

    On a cluster, classic Pub/Sub is broadcast to every node, so the pattern
    is subscribed on one node (primary or replica), the next one in turn at
    every (re)connect: a node that died is left for another
    (docs/redis-cluster.md, "Pub/Sub").
    """

    logger = logger
    transient: ClassVar[tuple[type[BaseException], ...]] = (TransportError,)

    def __init__(self, broker: RedisPubSubMessageBroker, pattern: str) -> None:
        super().__init__(pattern, None, broker=broker)
        self._pubsub_broker = broker
        self._pubsub: PubSub | None = None
        self._connection: Connection | None = None
        self._names: dict[bytes | str, str] = {}
        self._heard = 0
        """Replies read on the connection: what the watchdog looks at."""
        self._silent = False
        """The watchdog dropped the connection: it had gone silent."""
        self._watchdog: asyncio.Task[None] | None = None
        self._turn = 0
        """On a cluster: how many nodes were tried, to take the next one."""
        self.node: str | None = None
        """On a cluster: the node (``host:port``) subscribed on, as last connected."""

    async def _new_pubsub(self) -> PubSub:
        client = self._pubsub_broker.client
        if not isinstance(client, RedisCluster):
            return client.pubsub(push_handler_func=_push_as_is)
        try:
            await client.initialize()
            nodes = sorted(client.get_nodes(), key=lambda node: node.name)
        except REDIS_ERRORS as exc:
            raise lost(exc) from exc
        node = nodes[self._turn % len(nodes)]
        self._turn += 1
        self.node = node.name
        return client.pubsub(node=node, push_handler_func=_push_as_is)

    async def _connect(self) -> None:
        pubsub = await self._new_pubsub()
        try:
            try:
                await pubsub.psubscribe(self.pattern)
                connection: Connection = pubsub.connection  # type: ignore[assignment]
                # Live only once Redis confirmed the subscription; a pooled
                # connection gone silent (a partition) confirms nothing.
                due = self._pubsub_broker.silence_timeout
                while True:
                    reply = await connection.read_response(timeout=due, push_request=True)
                    if reply is None:  # what redis-py returns when the time is up
                        raise redis_errors.TimeoutError(
                            f"no confirmation of the PSUBSCRIBE within {due:g}s"
                        )
                    if reply[0] in _PSUBSCRIBE:
                        break
            except REDIS_ERRORS as exc:
                raise lost(exc) from exc
        except BaseException:
            # Cancelled or failed half-way: never leave a subscribed connection behind.
            await asyncio.shield(pubsub.aclose())
            raise
        if self.closed:  # closed while subscribing
            await pubsub.aclose()
            return
        self._pubsub, self._connection = pubsub, connection
        self._silent = False
        self._watchdog = asyncio.create_task(self._watch(connection), name=f"watch {self!r}")

    async def _watch(self, connection: Connection) -> None:
        """Send a PING on a connection that carried nothing for
        `silence_timeout`, and drop it when even that gets no answer in as
        long again: the blocked read then fails, and the kit reconnects. (A
        timeout on each read would cost a timer per message.)"""
        silence = self._pubsub_broker.silence_timeout
        while True:
            heard = self._heard
            await asyncio.sleep(silence)
            if self._heard != heard:
                continue
            if not connection.is_connected:
                # Dropped already (the read failed, or close()): a PING would
                # connect it again, unsubscribed, behind the reconnect loop.
                return
            try:
                await connection.send_command("PING", check_health=False)
            except REDIS_ERRORS:
                return  # broken: the read finds out by itself
            await asyncio.sleep(silence)
            if self._heard == heard:
                self._silent = True
                await connection.disconnect(nowait=True)
                return

    async def _receive(self) -> tuple[RedisPubSubDelivery, ...]:
        connection = self._connection
        if connection is None or not connection.is_connected:
            raise BrokerUnavailableError("the subscription's connection is closed")
        try:
            if connection.health_check_interval:
                await self._pubsub.check_health()  # type: ignore[union-attr]
            reply = await connection.read_response(timeout=math.inf, push_request=True)
        except REDIS_ERRORS as exc:
            if self._silent:
                silence = self._pubsub_broker.silence_timeout
                raise BrokerUnavailableError(
                    f"Redis sent nothing for {2 * silence:g}s, not even the answer to a PING: "
                    "the connection went silent (a network partition, a dead peer)"
                ) from exc
            raise lost(exc) from exc
        self._heard += 1
        if being_cancelled():  # a cancellation redis-py swallowed
            raise asyncio.CancelledError
        if not reply or reply[0] not in _PMESSAGE:
            return ()
        channel, data = reply[2], reply[3]
        name = self._names.get(channel)
        if name is None:
            name = channel.decode("utf-8", "replace") if isinstance(channel, bytes) else channel
            # Bounded: hostile channel names must not grow the cache.
            if len(name) <= 256:
                if len(self._names) >= 1024:
                    self._names.clear()
                self._names[channel] = name
        return (
            RedisPubSubDelivery(
                self._pubsub_broker, name, data.encode() if isinstance(data, str) else data
            ),
        )

    async def _disconnect(self) -> None:
        pubsub, self._pubsub, self._connection = self._pubsub, None, None
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except Exception:  # the connection is gone already
                logger.debug("closing a broken Redis subscription failed", exc_info=True)

    def _fatal(self, error: BaseException) -> BaseException | None:
        return fatal(self, error)


class RedisPubSubMessageBroker(_RedisBroker):
    """Publishes envelopes with ``PUBLISH`` and subscribes with ``PSUBSCRIBE``;
    at-most-once (docs/redis-pubsub.md).

    ```python
    from redis.asyncio import Redis
    broker = RedisPubSubMessageBroker(client=Redis(), channel_prefix="shop")
    ```

    The client is yours (configure AUTH, TLS or a unix socket on it, and
    close it), unless `from_url` built it. It may be a `RedisCluster`
    (docs/redis-cluster.md).
    """

    delivery_guarantee = DeliveryGuarantee.AT_MOST_ONCE

    def __init__(
        self,
        client: Client,
        channel_prefix: str = "mediator",
        *,
        channel_layout: ChannelLayout = "name",
        dead_letter_limit: int = 10_000,
        silence_timeout: float = 15.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        if channel_layout not in ("name", "diator"):
            raise ValueError(
                f"RedisPubSubMessageBroker(channel_layout={channel_layout!r}): "
                "must be 'name' or 'diator'"
            )
        super().__init__(
            client, channel_prefix, dead_letter_limit, silence_timeout, max_message_size
        )
        self.channel_layout: ChannelLayout = channel_layout
        """``"name"`` or ``"diator"``: what the last part of a channel is."""

    @classmethod
    def diator_compatible(
        cls, client: Client, channel_prefix: str = "python_diator_channel", **options: Any
    ) -> Self:
        """A broker publishing where diator's did: diator's default prefix and
        ``channel_layout="diator"``.

        ```python
        broker = RedisMessageBroker.diator_compatible(redis_client)
        ```
        """
        return cls(client, channel_prefix, channel_layout="diator", **options)

    def channel(self, message: Message) -> str:
        """The channel `message` is published on."""
        return channel_name(self.channel_prefix, message, self.channel_layout)

    async def send_message(self, message: Message) -> None:
        """``PUBLISH`` one envelope; raises PublishError when Redis cannot take it."""
        try:
            await self.client.publish(self.channel(message), self.encode(message))
        except redis_errors.RedisError as exc:
            raise PublishError(
                f"could not publish {message.message_name} ({message.message_id}) to Redis "
                f"at {self.address}: {quote(str(exc))}"
            ) from exc

    async def send_messages(self, messages: Sequence[Message]) -> None:
        """Publish a batch in one pipelined round trip, in order."""
        if len(messages) == 1 or isinstance(self.client, RedisCluster):
            # redis-py's cluster pipelines refuse PUBLISH: one after the other.
            for message in messages:
                await self.send_message(message)
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for message in messages:
                    pipe.publish(self.channel(message), self.encode(message))
                await pipe.execute()
        except redis_errors.RedisError as exc:
            raise PublishError(
                f"could not publish a batch ({batch_names(messages)}) to Redis at "
                f"{self.address}: {quote(str(exc))}"
            ) from exc

    async def _replay(self, record: DeadLetterRecord) -> None:
        """``PUBLISH`` the body to its channel, then ``XDEL`` the dead letter;
        when no subscriber received it, keep the dead letter and raise."""
        receivers = await self.client.publish(record.channel, record.data)
        if not receivers and isinstance(self.client, RedisCluster):
            # PUBLISH counts the receivers on its own node only: the others
            # are counted by their pattern subscriptions (which Redis does not
            # list), so a replay reached someone when any node has one.
            counts: Any = await self.client.execute_command(
                "PUBSUB NUMPAT", target_nodes=RedisCluster.ALL_NODES
            )
            receivers = sum(counts.values()) if isinstance(counts, dict) else int(counts)
        if not receivers:
            raise PublishError(
                f"no subscriber is listening on {quote(record.channel, 200)}, so the replay of "
                f"dead letter {record.id} reached no one (Pub/Sub keeps nothing); it stays a "
                "dead letter: start the consumer, then replay again"
            )
        await self.client.xdel(self.dead_letter_key, record.id)

    async def subscribe(self, pattern: str, *, group: str | None = None) -> RedisPubSubSubscription:
        """``PSUBSCRIBE`` to `pattern`; returns once Redis confirmed it."""
        if group is not None:
            raise ValueError(
                f"Redis Pub/Sub has no consumer groups (asked for group {group!r}); every "
                "subscriber gets every message. Use RedisStreamMessageBroker for groups."
            )
        subscription = RedisPubSubSubscription(self, pattern)
        await self._subscribed(subscription)
        return subscription


RedisMessageBroker = RedisPubSubMessageBroker
"""diator's name for the Pub/Sub broker: the same class."""

RedisPubSubBroker = RedisPubSubMessageBroker
"""The class's name before every broker was named ``<Transport>MessageBroker``."""
