"""Redis Pub/Sub: fire-and-forget publishing and pattern subscriptions.

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
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Literal

import orjson

try:
    from redis import exceptions as redis_errors
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "brokers.redis needs redis-py: pip install 'mediator-toolkit[redis]'"
    ) from exc

from mediator._broker import DeliveryGuarantee
from mediator._exceptions import PublishError
from mediator._message import Message, encode_message
from mediator._policies import Backoff

__all__ = ["RedisDelivery", "RedisMessageBroker", "RedisSubscription"]

logger = logging.getLogger("mediator.brokers.redis")

ChannelLayout = Literal["name", "diator"]
_RECONNECT = Backoff(initial=0.1, multiplier=2, maximum=5.0, jitter=0.2)


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

    async def retry(self) -> None:
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
        await pubsub.psubscribe(self.pattern)
        # Live only once Redis confirmed the subscription.
        while True:
            reply = await pubsub.get_message(timeout=None)
            if reply is not None and reply["type"] == "psubscribe":
                break
        self._pubsub = pubsub

    def __aiter__(self) -> AsyncIterator[RedisDelivery]:
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[RedisDelivery]:
        attempt = 0
        while not self._is_closed():
            try:
                if self._pubsub is None:
                    await self._connect()
                    attempt = 0
                assert self._pubsub is not None
                reply = await self._pubsub.get_message(timeout=None)
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
                if self._is_closed():  # close() broke the connection on purpose
                    return
                attempt += 1
                delay = _RECONNECT.delay(attempt)
                logger.warning(
                    "lost the Redis subscription %r (%r); reconnecting in %.2fs",
                    self.pattern,
                    exc,
                    delay,
                )
                await self._drop()
                await asyncio.sleep(delay)
                continue
            if reply is None or reply["type"] != "pmessage":
                continue
            channel = reply["channel"]
            yield RedisDelivery(
                self._broker,
                channel.decode() if isinstance(channel, bytes) else channel,
                reply["data"],
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


class RedisMessageBroker:
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
        self.client = client
        self.channel_prefix = channel_prefix
        self.channel_layout = channel_layout
        self.dead_letter_key = f"{channel_prefix}:dead-letters"
        self.dead_letter_limit = dead_letter_limit
        self._subscriptions: set[RedisSubscription] = set()

    @classmethod
    def from_url(
        cls, url: str, channel_prefix: str = "mediator", **options: Any
    ) -> RedisMessageBroker:
        """A broker with its own client for `url` (``redis://``, ``rediss://``, ``unix://``)."""
        return cls(Redis.from_url(url), channel_prefix, **options)

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

    async def start(self) -> None:
        """Check that Redis answers; publishing and subscribing connect on demand."""
        await self.client.ping()

    async def stop(self) -> None:
        """Close every subscription this broker opened (not the client)."""
        for subscription in list(self._subscriptions):
            await subscription.close()

    async def __aenter__(self) -> RedisMessageBroker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
