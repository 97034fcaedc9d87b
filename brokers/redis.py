"""Redis transports: Pub/Sub (`RedisMessageBroker`) and Streams (`RedisStreamBroker`).

Pub/Sub: fire-and-forget publishing and pattern subscriptions.
Delivery guarantee: at-most-once. A message reaches the subscriptions live
when it is published; a consumer that is down or reconnecting misses it.

- Channel layout: ``{prefix}:{message_type}:{message_name}``; with
  ``channel_layout="diator"``, ``{prefix}:{message_type}:{message_id}`` as
  diator published, so diator consumers keep working.
- Subscribing is ``PSUBSCRIBE`` with the pattern as given; overlapping
  patterns each get the message, as Redis sends one ``pmessage`` per pattern.
- No consumer groups: Pub/Sub delivers to every subscriber.
- Dead letters go to the capped Redis list ``{prefix}:dead-letters`` (newest
  first), as JSON objects with channel, reason, description and the data.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, Protocol, Self

import orjson

try:
    from redis import exceptions as redis_errors
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "brokers.redis needs redis-py: pip install 'mediator-toolkit[redis]'"
    ) from exc

from mediator._exceptions import PublishError
from mediator._message import Message, encode_message
from mediator._patterns import GlobPattern
from mediator._policies import Backoff
from mediator.transport import BrokerLifecycle, DeliveryGuarantee, Reconnection

__all__ = [
    "RedisDelivery",
    "RedisMessageBroker",
    "RedisStreamBroker",
    "RedisStreamDelivery",
    "RedisStreamSubscription",
    "RedisSubscription",
]

logger = logging.getLogger("mediator.brokers.redis")

ChannelLayout = Literal["name", "diator"]
_RECONNECT = Backoff(initial=0.1, multiplier=2, maximum=5.0, jitter=0.2)
_PMESSAGE = (b"pmessage", "pmessage")  # bytes, or str with decode_responses=True


class RedisDelivery:
    """One ``pmessage``. Settling is local: Pub/Sub keeps nothing to settle,
    except a dead letter, which is written to the broker's dead-letter list."""

    __slots__ = ("_broker", "channel", "data")

    delivery_count = 1

    def __init__(self, broker: RedisMessageBroker, channel: str, data: bytes) -> None:
        self._broker = broker
        self.channel = channel
        self.data = data

    async def ack(self) -> None:
        """Nothing to do: Pub/Sub forgets a message once it is sent."""

    async def release(self) -> None:
        """Pub/Sub cannot deliver again; the message is dropped (at-most-once)."""
        logger.warning("Redis Pub/Sub cannot redeliver; dropping a message from %s", self.channel)

    async def dead_letter(self, reason: str, description: str) -> None:
        """Push the message onto the broker's capped dead-letter list."""
        await self._broker._dead_letter(self.channel, self.data, reason, description)


class RedisSubscription:
    """A ``PSUBSCRIBE`` on a connection of its own, re-established after a
    dropped connection with exponential backoff and jitter."""

    group = None

    def __init__(self, broker: RedisMessageBroker, pattern: str) -> None:
        self._broker = broker
        self.pattern = pattern
        self._pubsub: PubSub | None = None
        self._closed = False

    async def _connect(self) -> None:
        pubsub = self._broker.client.pubsub()
        try:
            await pubsub.psubscribe(self.pattern)
            # Live only once Redis confirmed the subscription.
            while True:
                reply = await pubsub.get_message(timeout=None)
                if reply is not None and reply["type"] == "psubscribe":
                    break
        except BaseException:
            # Cancelled or failed half-way: never leave a subscribed connection behind.
            await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]
            raise
        self._pubsub = pubsub

    def __aiter__(self) -> AsyncIterator[RedisDelivery]:
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[RedisDelivery]:
        retry = Reconnection(logger, _RECONNECT)
        channels: dict[bytes | str, str] = {}
        while not self._is_closed():
            try:
                if self._pubsub is None:
                    await self._connect()
                    retry.succeeded()
                assert self._pubsub is not None
                # The raw reply, not get_message(): that builds a dict and runs
                # redis-py's per-message hooks, a fifth of the consume cost.
                reply = await self._pubsub.parse_response(block=True)
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
                # Closed: close() broke the connection on purpose.
                if await retry.pause(
                    f"lost the Redis subscription {self.pattern!r}",
                    exc,
                    closed=self._is_closed(),
                    then="reconnecting",
                    before_wait=self._drop,
                ):
                    continue
                return
            if not reply or reply[0] not in _PMESSAGE:
                continue
            _, _, channel, data = reply
            name = channels.get(channel)
            if name is None:
                name = channels[channel] = (
                    channel.decode() if isinstance(channel, bytes) else channel
                )
                if len(channels) > 10_000:
                    channels.clear()
            yield RedisDelivery(
                self._broker, name, data.encode() if isinstance(data, str) else data
            )

    async def _drop(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            except Exception:  # the connection is gone already
                logger.debug("closing a broken Redis subscription failed", exc_info=True)

    def _is_closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Unsubscribe and close the connection."""
        self._closed = True
        self._broker._subscriptions.discard(self)
        await self._drop()


class _Closable(Protocol):
    async def close(self) -> None: ...


class _RedisBroker(BrokerLifecycle):
    """What both Redis brokers share: the client, `from_url`, start and stop."""

    client: Redis
    _subscriptions: set[Any]

    def __init__(self, client: Redis) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError(
                "the Redis client decodes responses to str; envelopes are bytes. Build the "
                "client with decode_responses=False (the default)"
            )
        self._owns_client = False

    @classmethod
    def from_url(cls, url: str, channel_prefix: str = "mediator", **options: Any) -> Self:
        """A broker with its own client for `url` (``redis://``, ``rediss://``,
        ``unix://``); `stop()` closes that client."""
        broker = cls(Redis.from_url(url), channel_prefix, **options)  # type: ignore[call-arg]
        broker._owns_client = True
        return broker

    async def start(self) -> None:
        """Check that Redis answers; publishing and subscribing connect on demand."""
        await self.client.ping()

    async def stop(self) -> None:
        """Close every subscription this broker opened, and the client if
        `from_url` made it (a client you passed in stays yours)."""
        subscriptions: list[_Closable] = list(self._subscriptions)
        for subscription in subscriptions:
            await subscription.close()
        if self._owns_client:
            await self.client.aclose()


class RedisMessageBroker(_RedisBroker):
    """Publishes envelopes with ``PUBLISH`` and subscribes with ``PSUBSCRIBE``.

    ```python
    from redis.asyncio import Redis
    broker = RedisMessageBroker(client=Redis(), channel_prefix="shop")
    ```

    The client is yours: configure AUTH, TLS or a unix socket on it, and
    close it yourself. One client serves every publish; each subscription
    takes a connection of its own from the client's pool.
    """

    delivery_guarantee = DeliveryGuarantee.AT_MOST_ONCE

    def __init__(
        self,
        client: Redis,
        channel_prefix: str = "mediator",
        *,
        channel_layout: ChannelLayout = "name",
        dead_letter_limit: int = 10_000,
    ) -> None:
        if channel_layout not in ("name", "diator"):
            raise ValueError(f"channel_layout must be 'name' or 'diator', got {channel_layout!r}")
        _RedisBroker.__init__(self, client)
        if dead_letter_limit < 1:
            raise ValueError(
                f"dead_letter_limit must be at least 1, got {dead_letter_limit}; it caps the "
                "dead-letter list"
            )
        self.client = client
        self.channel_prefix = channel_prefix
        self.channel_layout = channel_layout
        self.dead_letter_key = f"{channel_prefix}:dead-letters"
        self.dead_letter_limit = dead_letter_limit
        self._subscriptions: set[RedisSubscription] = set()

    def channel(self, message: Message) -> str:
        """The channel `message` is published on."""
        last = str(message.message_id) if self.channel_layout == "diator" else message.message_name
        return f"{self.channel_prefix}:{message.message_type}:{last}"

    # -- publish -----------------------------------------------------------

    async def send_message(self, message: Message) -> None:
        """``PUBLISH`` one envelope; raises PublishError when Redis cannot be reached."""
        try:
            await self.client.publish(self.channel(message), encode_message(message))
        except redis_errors.RedisError as exc:
            raise PublishError(
                f"could not publish {message.message_name} ({message.message_id}) to Redis: {exc}"
            ) from exc

    async def send_messages(self, messages: Sequence[Message]) -> None:
        """Publish a batch in one pipelined round trip, in order."""
        if len(messages) == 1:
            await self.send_message(messages[0])
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for message in messages:
                    pipe.publish(self.channel(message), encode_message(message))
                await pipe.execute()
        except redis_errors.RedisError as exc:
            names = ", ".join(m.message_name for m in messages)
            raise PublishError(f"could not publish a batch ({names}) to Redis: {exc}") from exc

    # -- subscribe ---------------------------------------------------------

    async def subscribe(self, pattern: str, *, group: str | None = None) -> RedisSubscription:
        """``PSUBSCRIBE`` to `pattern`; returns once Redis confirmed it."""
        if group is not None:
            raise ValueError(
                f"Redis Pub/Sub has no consumer groups (asked for group {group!r}); every "
                "subscriber gets every message. Use a Streams broker for groups."
            )
        subscription = RedisSubscription(self, pattern)
        await subscription._connect()
        self._subscriptions.add(subscription)
        return subscription

    async def _dead_letter(self, channel: str, data: bytes, reason: str, description: str) -> None:
        record = orjson.dumps(
            {
                "channel": channel,
                "reason": reason,
                "description": description,
                "data": data.decode("utf-8", "replace"),
            }
        )
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.lpush(self.dead_letter_key, record)
            pipe.ltrim(self.dead_letter_key, 0, self.dead_letter_limit - 1)
            await pipe.execute()

    async def dead_letters(self) -> list[dict[str, str]]:
        """What was dead-lettered, newest first."""
        records = await self.client.lrange(self.dead_letter_key, 0, -1)
        return [orjson.loads(record) for record in records]

    # -- lifecycle ---------------------------------------------------------


# -- Streams -------------------------------------------------------------------

StartFrom = Literal["new", "beginning"]


def _entry_data(fields: dict[bytes, bytes]) -> bytes:
    # An entry some other producer wrote without our field decodes as bad
    # input (not JSON) and is dead-lettered, rather than stopping the reader.
    return fields.get(b"data", b"")


def _consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RedisStreamDelivery:
    """One stream entry read in a consumer group; settle it exactly once."""

    __slots__ = ("_subscription", "channel", "data", "delivery_count", "entry_id")

    def __init__(
        self,
        subscription: RedisStreamSubscription,
        channel: str,
        entry_id: bytes,
        data: bytes,
        delivery_count: int,
    ) -> None:
        self._subscription = subscription
        self.channel = channel
        self.entry_id = entry_id
        self.data = data
        self.delivery_count = delivery_count

    async def ack(self) -> None:
        """``XACK``: the entry leaves the group's pending list."""
        await self._subscription._ack(self)

    async def release(self) -> None:
        """Leave it pending: it is claimed again (``XAUTOCLAIM``) once it has been
        idle for the broker's `claim_idle`, by this or another group member."""

    async def dead_letter(self, reason: str, description: str) -> None:
        """``XADD`` it to the dead-letter stream with the reason, then ``XACK``."""
        await self._subscription._dead_letter(self, reason, description)


class RedisStreamSubscription:
    """Reads every stream whose key matches a glob, in one consumer group.

    Streams are found in the broker's registry set, re-read every
    `discovery_interval`; entries idle in the group's pending list longer
    than `claim_idle` (a crashed or stopped member's) are claimed every
    `claim_interval`.
    """

    def __init__(self, broker: RedisStreamBroker, pattern: str, group: str | None) -> None:
        self._broker = broker
        self.pattern = pattern
        self.group = group
        # An ungrouped subscription is a group of its own, removed on close.
        self._group = group if group is not None else f"solo:{uuid.uuid4().hex}"
        self._consumer = _consumer_name()
        self._matcher = GlobPattern(pattern)
        self._streams: dict[str, bytes] = {}
        self._closed = False

    async def _prepare(self) -> None:
        start = "$" if self._broker.start_from == "new" else "0"
        await self._discover(start)

    async def _discover(self, start: str) -> None:
        for key in await self._broker._registered():
            if key not in self._streams and self._matcher.matches(key):
                await self._create_group(key, start)
                self._streams[key] = b">"

    async def _create_group(self, key: str, start: str) -> None:
        try:
            await self._broker.client.xgroup_create(key, self._group, id=start, mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _is_closed(self) -> bool:
        return self._closed

    def __aiter__(self) -> AsyncIterator[RedisStreamDelivery]:
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[RedisStreamDelivery]:
        broker = self._broker
        loop = asyncio.get_running_loop()
        next_discovery = next_claim = loop.time()
        retry = Reconnection(logger, _RECONNECT)
        while not self._is_closed():
            try:
                now = loop.time()
                if now >= next_discovery:
                    # A stream that appears later is read from its beginning.
                    await self._discover("0")
                    next_discovery = now + broker.discovery_interval
                if now >= next_claim:
                    for delivery in await self._claim():
                        yield delivery
                    next_claim = now + broker.claim_interval
                if not self._streams:
                    await asyncio.sleep(broker.discovery_interval)
                    continue
                # redis-py's reply types are loose; the shapes are documented.
                replies: Any = await broker.client.xreadgroup(
                    self._group,
                    self._consumer,
                    dict[Any, Any](self._streams),
                    count=broker.batch_size,
                    block=broker.block_ms,
                )
                retry.succeeded()
            except redis_errors.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # The stream or the group was deleted: find them again.
                logger.warning("stream group %s vanished (%s); recreating", self._group, exc)
                self._streams.clear()
                next_discovery = loop.time()
                continue
            except (redis_errors.RedisError, OSError) as exc:
                # Lost connections, but also READONLY after a failover, OOM or
                # a key of the wrong type: log, back off, try again.
                if await retry.pause(
                    f"lost Redis while reading streams for {self.pattern!r}",
                    exc,
                    closed=self._is_closed(),
                ):
                    continue
                return
            for stream, entries in replies or ():
                channel = stream.decode() if isinstance(stream, bytes) else stream
                for entry_id, fields in entries:
                    yield RedisStreamDelivery(self, channel, entry_id, _entry_data(fields), 1)

    async def _claim(self) -> list[RedisStreamDelivery]:
        broker = self._broker
        client = broker.client
        claimed: list[RedisStreamDelivery] = []
        idle_ms = int(broker.claim_idle * 1000)
        for key in list(self._streams):
            reply = await client.xautoclaim(
                key, self._group, self._consumer, idle_ms, start_id="0-0", count=broker.batch_size
            )
            entries = [(entry_id, fields) for entry_id, fields in reply[1] if fields]
            if not entries:
                continue
            pending: Any = await client.xpending_range(
                key,
                self._group,
                min=entries[0][0],
                max=entries[-1][0],
                count=len(entries) * 2,
                consumername=self._consumer,
            )
            counts: dict[bytes, int] = {p["message_id"]: p["times_delivered"] for p in pending}
            for entry_id, fields in entries:
                delivery = RedisStreamDelivery(
                    self, key, entry_id, _entry_data(fields), counts.get(entry_id, 2)
                )
                if delivery.delivery_count > broker.max_deliveries:
                    await self._dead_letter(
                        delivery,
                        "too_many_deliveries",
                        f"delivered {delivery.delivery_count} times without being settled",
                    )
                    continue
                claimed.append(delivery)
        return claimed

    async def _ack(self, delivery: RedisStreamDelivery) -> None:
        await self._broker.client.xack(delivery.channel, self._group, delivery.entry_id)

    async def _dead_letter(
        self, delivery: RedisStreamDelivery, reason: str, description: str
    ) -> None:
        broker = self._broker
        async with broker.client.pipeline(transaction=True) as pipe:
            pipe.xadd(
                broker.dead_letter_key,
                {
                    "stream": delivery.channel,
                    "entry_id": delivery.entry_id,
                    "group": self._group,
                    "reason": reason,
                    "description": description,
                    "delivery_count": delivery.delivery_count,
                    "data": delivery.data,
                },
                maxlen=broker.dead_letter_maxlen,
                approximate=True,
            )
            pipe.xack(delivery.channel, self._group, delivery.entry_id)
            await pipe.execute()

    async def close(self) -> None:
        """Stop reading; an ungrouped subscription also removes its own group."""
        if self._closed:
            return
        self._closed = True
        self._broker._subscriptions.discard(self)
        if self.group is None:
            for key in list(self._streams):
                try:
                    await self._broker.client.xgroup_destroy(key, self._group)
                except redis_errors.RedisError:
                    logger.debug("could not remove group %s of %s", self._group, key)


class RedisStreamBroker(_RedisBroker):
    """Redis Streams: every logical channel is a stream, read in consumer groups.

    Delivery guarantee: at-least-once. An entry stays in its group's pending
    list until a consumer acknowledges it (``XACK``) after its handlers
    succeeded; entries of a member that crashed or stopped are claimed by
    another (``XAUTOCLAIM``) once idle for `claim_idle` seconds. An entry
    delivered more than `max_deliveries` times goes to the dead-letter
    stream ``{prefix}:dead-letter`` with the reason.

    ```python
    broker = RedisStreamBroker(client=Redis(), channel_prefix="shop", maxlen=100_000)
    ```

    - Layout: one stream per logical channel, key
      ``{prefix}:{message_type}:{message_name}``, entry field ``data`` holding
      the envelope; producers register each stream key in the set
      ``{prefix}:streams`` (one ``SADD`` per key and process).
    - Patterns: a subscription reads the registered streams whose key matches
      its glob, the same match as Pub/Sub's ``PSUBSCRIBE``. Streams that
      appear later are picked up within `discovery_interval` and read from
      their first entry, so nothing published to them is missed.
    - Groups: `subscribe(pattern, group="billing")` joins (or creates) the
      named group on every matching stream; without a group the subscription
      gets a private group of its own, removed when it closes. A new group
      starts at the streams' end (`start_from="new"`) or their first entry
      (`start_from="beginning"`).
    - `maxlen` caps each stream approximately (``XADD MAXLEN ~``).
    """

    delivery_guarantee = DeliveryGuarantee.AT_LEAST_ONCE

    def __init__(
        self,
        client: Redis,
        channel_prefix: str = "mediator",
        *,
        maxlen: int | None = None,
        start_from: StartFrom = "new",
        claim_idle: float = 30.0,
        claim_interval: float = 5.0,
        discovery_interval: float = 1.0,
        block_ms: int = 1000,
        batch_size: int = 16,
        max_deliveries: int = 10,
        dead_letter_maxlen: int = 10_000,
    ) -> None:
        if start_from not in ("new", "beginning"):
            raise ValueError(f"start_from must be 'new' or 'beginning', got {start_from!r}")
        _RedisBroker.__init__(self, client)
        self.client = client
        self.channel_prefix = channel_prefix
        self.maxlen = maxlen
        self.start_from = start_from
        self.claim_idle = claim_idle
        self.claim_interval = claim_interval
        self.discovery_interval = discovery_interval
        self.block_ms = block_ms
        self.batch_size = batch_size
        self.max_deliveries = max_deliveries
        self.dead_letter_maxlen = dead_letter_maxlen
        self.registry_key = f"{channel_prefix}:streams"
        self.dead_letter_key = f"{channel_prefix}:dead-letter"
        self._subscriptions: set[RedisStreamSubscription] = set()

    def channel(self, message: Message) -> str:
        """The stream key `message` is appended to (its logical channel)."""
        return f"{self.channel_prefix}:{message.message_type}:{message.message_name}"

    # -- publish -----------------------------------------------------------

    async def send_message(self, message: Message) -> None:
        """``XADD`` one envelope; raises PublishError when Redis cannot be reached."""
        await self.send_messages((message,))

    async def send_messages(self, messages: Sequence[Message]) -> None:
        """``XADD`` a batch in one pipelined round trip, in order."""
        keys: set[str] = set()
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for message in messages:
                    key = self.channel(message)
                    keys.add(key)
                    pipe.xadd(
                        key,
                        {"data": encode_message(message)},
                        maxlen=self.maxlen,
                        approximate=True,
                    )
                # Registered on every batch (same round trip), so a registry
                # lost with a restart or a flush comes back by itself.
                pipe.sadd(self.registry_key, *keys)
                await pipe.execute()
        except redis_errors.RedisError as exc:
            names = ", ".join(m.message_name for m in messages)
            raise PublishError(f"could not append {names} to Redis streams: {exc}") from exc

    async def _registered(self) -> list[str]:
        keys = await self.client.smembers(self.registry_key)
        return sorted(k.decode() if isinstance(k, bytes) else k for k in keys)

    # -- subscribe ---------------------------------------------------------

    async def subscribe(self, pattern: str, *, group: str | None = None) -> RedisStreamSubscription:
        """Read the streams matching `pattern` in consumer `group` (a private
        group when None); returns once the group exists on every stream that
        matches now."""
        subscription = RedisStreamSubscription(self, pattern, group)
        await subscription._prepare()
        self._subscriptions.add(subscription)
        return subscription

    async def dead_letters(self) -> list[dict[str, str]]:
        """What was dead-lettered, oldest first (decoded to text)."""
        entries: Any = await self.client.xrange(self.dead_letter_key)
        return [
            {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()}
            for _, fields in entries
        ]

    # -- lifecycle ---------------------------------------------------------
