"""Redis transports: Pub/Sub (`RedisPubSubBroker`, also importable as diator's
`RedisMessageBroker`) and Streams (`RedisStreamBroker`).

Both are built on `mediator.transport`: this module holds only what redis-py
needs. Both keep dead letters the same way: the stream
``{prefix}:dead-letter``, one entry per `DeadLetterRecord` (the body bounded
to 64 KiB, with its size and SHA-256), trimmed to `dead_letter_limit`;
`await broker.dead_letters()` returns them oldest first.

Pub/Sub: ``PUBLISH`` and ``PSUBSCRIBE``, at-most-once. A message reaches
the subscriptions live when it is published.

Streams: ``XADD`` and ``XREADGROUP`` in consumer groups, at-least-once. An
entry stays pending in its group until a consumer acknowledges it after its
handlers finished; acknowledgements are batched (one ``XACK`` per stream,
sent with the next read).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import uuid
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal, Self

try:
    from redis import exceptions as redis_errors
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub
    from redis.asyncio.connection import Connection
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "brokers.redis needs redis-py: pip install 'mediator-toolkit[redis]'"
    ) from exc

from mediator.transport import (
    DEFAULT_MAX_MESSAGE_SIZE,
    BrokerLifecycle,
    BrokerUnavailableError,
    CredentialError,
    DeadLetterRecord,
    DeliveryBase,
    DeliveryGuarantee,
    ErrorRow,
    ErrorTable,
    GlobPattern,
    Message,
    PublishError,
    ReconnectingSubscription,
    SubscriptionLostError,
    TransportError,
    being_cancelled,
    quote,
)

__all__ = [
    "RedisMessageBroker",
    "RedisPubSubBroker",
    "RedisPubSubDelivery",
    "RedisPubSubSubscription",
    "RedisStreamBroker",
    "RedisStreamDelivery",
    "RedisStreamSubscription",
]

logger = logging.getLogger("mediator.brokers.redis")

ChannelLayout = Literal["name", "diator"]
StartFrom = Literal["new", "beginning"]

_CREDENTIAL_ERRORS = (
    redis_errors.AuthenticationError,
    redis_errors.AuthorizationError,
    redis_errors.NoPermissionError,
)
_CONNECTION_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
_REDIS_ERRORS = (redis_errors.RedisError, OSError)
_PASSING = (
    "READONLY",  # a replica after a failover: writes come back with the new primary
    "OOM",  # full: room comes back as keys expire or are deleted
    "BUSY",  # a long script or function
    "LOADING",  # loading its data after a restart
    "MASTERDOWN",
    "MISCONF",  # snapshots failing: writes refused until they work again
    "NOREPLICAS",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "UNBLOCKED",  # a blocked read ended by the server (role change, key deleted)
)
"""Error replies of a server state that passes: wait (with backoff) and read again."""
_PMESSAGE = (b"pmessage", "pmessage")  # bytes, or str under RESP3 push parsing
_PSUBSCRIBE = (b"psubscribe", "psubscribe")


_CODES: tuple[tuple[type[BaseException], str], ...] = (
    # redis-py takes the code off the replies it has a class for.
    (redis_errors.ReadOnlyError, "READONLY"),
    (redis_errors.OutOfMemoryError, "OOM"),
    (redis_errors.TryAgainError, "TRYAGAIN"),
    (redis_errors.MasterDownError, "MASTERDOWN"),
    (redis_errors.ClusterDownError, "CLUSTERDOWN"),
    (redis_errors.NoPermissionError, "NOPERM"),
)


def _code(error: BaseException) -> str:
    """The error code of a Redis reply (``NOGROUP``, ``OOM`` ...)."""
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return str(error).split(" ", 1)[0]


def _describe(error: BaseException) -> str:
    """A Redis error reply as Redis wrote it, code first, bounded."""
    text = str(error)
    code = _code(error)
    return quote(text if text.startswith(code) else f"{code} {text}")


_ERRORS = ErrorTable(
    sdk=_REDIS_ERRORS,
    rows=[
        ErrorRow(  # subclasses of ConnectionError: first
            _CREDENTIAL_ERRORS,
            CredentialError,
            "check the user and password in the URL or on the client, and the user's ACL",
        ),
        ErrorRow(
            _CONNECTION_ERRORS,
            BrokerUnavailableError,
            "check the address, and that Redis runs and accepts connections",
        ),
    ],
    describe=_describe,
)
"""How redis-py's errors become the library's, with what to check."""


def _lost(error: Exception) -> TransportError:
    """A redis-py error of a subscription as the library's, with Redis's
    words only (the subscription's log line says which one it was)."""
    row = _ERRORS.row(error)
    return (TransportError if row is None else row.error)(_describe(error))


def _fatal(subscription: object, error: BaseException) -> BaseException | None:
    """What a subscription stops with after `error` (from `_lost`); None to
    wait and retry."""
    cause = error.__cause__
    if isinstance(error, CredentialError):
        return CredentialError(
            f"Redis refused the credential of {subscription!r} ({quote(str(cause))}); "
            "check the user's password and ACL, then start the consumer again"
        )
    if isinstance(cause, redis_errors.ResponseError) and _code(cause) not in _PASSING:
        return SubscriptionLostError(
            f"Redis answered {subscription!r} with an error that waiting does not mend "
            f"({_describe(cause)}); the consumer stops"
        )
    return None


def _names(messages: Sequence[Message]) -> str:
    """The names in a batch, each once with its count, bounded: for errors."""
    counts: dict[str, int] = {}
    for message in messages:
        counts[message.message_name] = counts.get(message.message_name, 0) + 1
    return quote(", ".join(f"{n} x{c}" if c > 1 else n for n, c in counts.items()))


async def _push_as_is(response: Any) -> Any:
    # redis-py's default handler logs every pushed message at DEBUG, building
    # the whole line even when DEBUG is off.
    return response


class _RedisBroker(BrokerLifecycle):
    """What both Redis brokers share: the client, `from_url`, `start`/`stop`,
    error mapping and the dead-letter stream."""

    def __init__(
        self,
        client: Redis,
        channel_prefix: str,
        dead_letter_limit: int,
        silence_timeout: float,
        max_message_size: int,
    ) -> None:
        name = type(self).__name__
        if not silence_timeout > 0:
            raise ValueError(f"{name}(silence_timeout={silence_timeout}): must be above 0")
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError(
                f"{name}: the Redis client decodes responses to str; envelopes are bytes. "
                "Build the client with decode_responses=False (the default)"
            )
        if dead_letter_limit < 1:
            raise ValueError(
                f"{name}(dead_letter_limit={dead_letter_limit}): must be at least 1; it caps "
                f"the dead-letter stream {channel_prefix}:dead-letter"
            )
        super().__init__(max_message_size=max_message_size)
        self.client = client
        """The redis-py client every command goes through."""
        self.channel_prefix = channel_prefix
        """The first part of every channel or stream key, and of the dead-letter key."""
        self.dead_letter_key = f"{channel_prefix}:dead-letter"
        """The stream that dead letters are appended to."""
        self.dead_letter_limit = dead_letter_limit
        """How many dead letters the stream keeps; older ones are trimmed."""
        self.silence_timeout = silence_timeout
        """Seconds a subscription waits on a silent connection before it checks
        it, and then for the check's answer; see the docs' "Connections"."""

    @classmethod
    def from_url(cls, url: str, channel_prefix: str = "mediator", **options: Any) -> Self:
        """A broker with a client of its own for `url` (``redis://``,
        ``rediss://``, ``unix://``); `stop()` closes that client.

        ```python
        async with RedisStreamBroker.from_url("redis://localhost:6379/0", "shop") as broker:
            ...
        ```
        """
        client = Redis.from_url(url)
        broker = cls(client, channel_prefix, **options)
        broker._owns_client = True
        # A command whose reply does not come is given up on, so a publish on a
        # connection gone silent fails instead of waiting for ever.
        kwargs = client.connection_pool.connection_kwargs
        if kwargs.get("socket_timeout") is None:
            kwargs["socket_timeout"] = broker._reply_due()
        return broker

    def _reply_due(self) -> float:
        """Seconds within which any reply from Redis is due."""
        return self.silence_timeout

    @property
    def address(self) -> str:
        """Where the client connects (``host:port`` or the socket path), for messages."""
        kwargs = self.client.connection_pool.connection_kwargs
        if "path" in kwargs:
            return str(kwargs["path"])
        return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"

    @contextlib.contextmanager
    def _mapped(self, doing: str) -> Iterator[None]:
        """redis-py's errors as the library's, saying what failed where, and
        what to check."""
        what = f"{doing} Redis at {self.address}"
        try:
            with _ERRORS.mapped(what):
                yield
        except TransportError as exc:
            if str(exc).startswith(what):
                raise
            # Mapped by a subscription already, in Redis's words: say where.
            cause = exc.__cause__
            row = None if cause is None else _ERRORS.row(cause)
            check = "" if row is None else f"; {row.check}"
            raise type(exc)(f"{what} failed: {exc}{check}") from cause

    async def _open(self) -> None:
        with self._mapped("PING to"):
            await self.client.ping()

    async def _close_client(self) -> None:
        await self.client.aclose()

    async def _subscribed(
        self, subscription: RedisPubSubSubscription | RedisStreamSubscription
    ) -> None:
        """Open `subscription`, or close it and raise why it could not open."""
        try:
            with self._mapped(f"subscribing to {quote(repr(subscription.pattern), 200)} on"):
                await subscription.open()
        except BaseException:
            await subscription.close()
            raise

    async def dead_letters(self) -> list[DeadLetterRecord]:
        """What was dead-lettered (at most the newest `dead_letter_limit`), oldest first."""
        entries: Any = await self.client.xrange(self.dead_letter_key)
        return [DeadLetterRecord.from_fields(fields) for _, fields in entries]

    def _dead_letter_fields(self, record: DeadLetterRecord, **extra: str | bytes) -> Any:
        return {**record.fields(), **extra}


# -- Pub/Sub -------------------------------------------------------------------


class RedisPubSubDelivery(DeliveryBase):
    """One ``pmessage``. Pub/Sub keeps nothing to settle: ack does nothing,
    release drops it (with a WARNING), a dead letter goes to the broker's
    dead-letter stream."""

    __slots__ = ("_broker",)

    def __init__(self, broker: RedisPubSubBroker, channel: str, data: bytes) -> None:
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
        await broker.client.xadd(
            broker.dead_letter_key,
            broker._dead_letter_fields(record),
            maxlen=broker.dead_letter_limit,
            approximate=False,
        )


class RedisPubSubSubscription(ReconnectingSubscription[RedisPubSubDelivery]):
    """A ``PSUBSCRIBE`` on a connection of its own.

    Every reconnect goes through the kit's loop (logged when the link is
    lost and when it is back): replies are read from the connection
    directly, never through redis-py's retrying `PubSub.parse_response`,
    which would reconnect and re-subscribe silently.
    """

    logger = logger
    transient: ClassVar[tuple[type[BaseException], ...]] = (TransportError,)

    def __init__(self, broker: RedisPubSubBroker, pattern: str) -> None:
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

    async def _connect(self) -> None:
        pubsub = self._pubsub_broker.client.pubsub(push_handler_func=_push_as_is)
        try:
            try:
                await pubsub.psubscribe(self.pattern)
                connection: Connection = pubsub.connection  # type: ignore[assignment]
                # Live only once Redis confirmed the subscription.
                while True:
                    reply = await connection.read_response(timeout=math.inf, push_request=True)
                    if reply and reply[0] in _PSUBSCRIBE:
                        break
            except _REDIS_ERRORS as exc:
                raise _lost(exc) from exc
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
            except _REDIS_ERRORS:
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
        except _REDIS_ERRORS as exc:
            if self._silent:
                silence = self._pubsub_broker.silence_timeout
                raise BrokerUnavailableError(
                    f"Redis sent nothing for {2 * silence:g}s, not even the answer to a PING: "
                    "the connection went silent (a network partition, a dead peer)"
                ) from exc
            raise _lost(exc) from exc
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
        return _fatal(self, error)


class RedisPubSubBroker(_RedisBroker):
    """Publishes envelopes with ``PUBLISH`` and subscribes with ``PSUBSCRIBE``.

    Delivery guarantee: at-most-once. A message reaches the subscriptions
    that are live when it is published; a consumer that is down or
    reconnecting misses it.

    ```python
    from redis.asyncio import Redis
    broker = RedisPubSubBroker(client=Redis(), channel_prefix="shop")
    ```

    - Channels ``{prefix}:{message_type}:{message_name}``; with
      ``channel_layout="diator"``, ``{prefix}:{message_type}:{message_id}`` as
      diator published, so diator consumers keep working.
    - A subscription is ``PSUBSCRIBE`` with the pattern as given, on a
      connection of its own from the client's pool; overlapping patterns
      each get the message. No consumer groups.
    - The client is yours (configure AUTH, TLS or a unix socket on it, and
      close it), unless `from_url` built it.
    """

    delivery_guarantee = DeliveryGuarantee.AT_MOST_ONCE

    def __init__(
        self,
        client: Redis,
        channel_prefix: str = "mediator",
        *,
        channel_layout: ChannelLayout = "name",
        dead_letter_limit: int = 10_000,
        silence_timeout: float = 15.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        if channel_layout not in ("name", "diator"):
            raise ValueError(
                f"RedisPubSubBroker(channel_layout={channel_layout!r}): must be 'name' or 'diator'"
            )
        super().__init__(
            client, channel_prefix, dead_letter_limit, silence_timeout, max_message_size
        )
        self.channel_layout: ChannelLayout = channel_layout
        """``"name"`` or ``"diator"``: what the last part of a channel is."""

    @classmethod
    def diator_compatible(
        cls, client: Redis, channel_prefix: str = "python_diator_channel", **options: Any
    ) -> Self:
        """A broker publishing where diator's did, for the readers of diator's
        channels while a migration is under way: diator's default prefix and
        ``channel_layout="diator"`` (``{prefix}:{message_type}:{message_id}``).

        ```python
        broker = RedisMessageBroker.diator_compatible(redis_client)
        ```
        """
        return cls(client, channel_prefix, channel_layout="diator", **options)

    def channel(self, message: Message) -> str:
        """The channel `message` is published on."""
        last = str(message.message_id) if self.channel_layout == "diator" else message.message_name
        return f"{self.channel_prefix}:{message.message_type}:{last}"

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
        if len(messages) == 1:
            await self.send_message(messages[0])
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for message in messages:
                    pipe.publish(self.channel(message), self.encode(message))
                await pipe.execute()
        except redis_errors.RedisError as exc:
            raise PublishError(
                f"could not publish a batch ({_names(messages)}) to Redis at {self.address}: "
                f"{quote(str(exc))}"
            ) from exc

    async def subscribe(self, pattern: str, *, group: str | None = None) -> RedisPubSubSubscription:
        """``PSUBSCRIBE`` to `pattern`; returns once Redis confirmed it."""
        if group is not None:
            raise ValueError(
                f"Redis Pub/Sub has no consumer groups (asked for group {group!r}); every "
                "subscriber gets every message. Use RedisStreamBroker for groups."
            )
        subscription = RedisPubSubSubscription(self, pattern)
        await self._subscribed(subscription)
        return subscription


RedisMessageBroker = RedisPubSubBroker
"""diator's name for the Pub/Sub broker: the same class."""


# -- Streams -------------------------------------------------------------------

_ACK_DELAY = 0.05
"""Seconds an acknowledgement waits for the next read before it is sent alone
(well under `claim_idle`: a member's acknowledged entries are not renewed)."""
_PLAIN_FOR = 60.0
"""Seconds reads go without the script after Redis refused to run it."""
_CLAIM_CALLS = 10
"""``XAUTOCLAIM`` calls per stream in one claim pass: a pass claims at most
10 x `batch_size` entries of a stream and looks at no more than 100 x
`batch_size` of its pending entries (Redis looks at 10 x COUNT per call)."""
_SOLO = "solo:"
"""The group name prefix of an ungrouped subscription's private group."""

# Deletes a group member only if nothing is pending for it, atomically: a
# member deleted with pending entries would take them out of the group unhandled.
_DELETE_IF_IDLE = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return -1 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""


# Reads without BLOCK: acknowledges the entries waiting (ARGV: group, member,
# count, then for each stream in KEYS the number of its ids and the ids), then
# returns what XREADGROUP read, flat: per stream its key, its number of
# entries, and each entry's id and data. A third of the reply elements of a
# plain XREADGROUP, whose parsing in redis-py is most of a consumer's time.
_READ = """
local group, member = ARGV[1], ARGV[2]
local at = 4
for k = 1, #KEYS do
  local n = tonumber(ARGV[at])
  for first = at + 1, at + n, 1000 do
    redis.call('XACK', KEYS[k], group, unpack(ARGV, first, math.min(first + 999, at + n)))
  end
  at = at + n + 1
end
local command = {'XREADGROUP', 'GROUP', group, member, 'COUNT', ARGV[3], 'STREAMS'}
for k = 1, #KEYS do command[#command + 1] = KEYS[k] end
for k = 1, #KEYS do command[#command + 1] = '>' end
local reply = redis.call(unpack(command))
local out = {}
if not reply then return out end
for _, stream in ipairs(reply) do
  local entries = stream[2]
  out[#out + 1] = stream[1]
  out[#out + 1] = #entries
  for _, entry in ipairs(entries) do
    local fields, data = entry[2] or {}, ''
    for i = 1, #fields, 2 do
      if fields[i] == 'data' then data = fields[i + 1] break end
    end
    out[#out + 1] = entry[1]
    out[#out + 1] = data
  end
end
return out
"""


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RedisStreamDelivery(DeliveryBase):
    """One stream entry read in a consumer group; settle it exactly once."""

    __slots__ = ("_subscription", "entry_id")

    holds_back_releases = True  # a released entry waits `claim_idle` to be claimed

    def __init__(
        self,
        subscription: RedisStreamSubscription,
        channel: str,
        entry_id: bytes,
        data: bytes,
        delivery_count: int = 1,
    ) -> None:
        self._subscription = subscription
        self.entry_id = entry_id
        """The stream entry's id."""
        self.channel = channel
        self.data = data
        self.delivery_count = delivery_count
        self.settled = None

    async def _ack(self) -> None:
        """``XACK``, batched with the others of the stream and sent with the
        subscription's next read (or within `_ACK_DELAY`)."""
        subscription = self._subscription
        if subscription.closed:  # no read follows: acknowledge now
            subscription._forget(self)
            await subscription._client.xack(self.channel, subscription._group, self.entry_id)
        else:
            subscription._queue_ack(self)

    async def _release(self) -> None:
        """Leave it pending: a member of the group claims it (``XAUTOCLAIM``)
        once it has been idle for the broker's `claim_idle`."""
        self._subscription._forget(self)

    async def _dead_letter(self, reason: str, description: str) -> None:
        """``XADD`` it to the dead-letter stream, bounded, then ``XACK``, in one
        transaction."""
        await self._subscription._dead_letter(self, reason, description)


class RedisStreamSubscription(ReconnectingSubscription[RedisStreamDelivery]):
    """Reads every registered stream whose key matches a glob, in one group.

    - Streams are found in the broker's registry, re-read every
      `discovery_interval`; a stream found later, or deleted and back, is
      read from its first entry (its group is created at ``0``).
    - Entries idle in the group's pending list longer than `claim_idle` (a
      crashed or stopped member's, or released ones) are claimed every
      `claim_interval`, following each stream's ``XAUTOCLAIM`` cursor
      (`_CLAIM_CALLS` per pass); entries this subscription holds are kept from
      being claimed by renewing them (``XCLAIM ... JUSTID``) meanwhile.
    - Acknowledgements are collected and sent as one ``XACK`` per stream,
      in the same round trip as the next ``XREADGROUP``, or after a few
      milliseconds when the reader waits; never before the delivery's
      handlers finished, and all of them before `close()` returns.
    - Server errors of a passing state (READONLY, OOM, BUSY ...) are waited
      out with backoff; a deleted stream or group is recreated; a key of
      another type is skipped until it is a stream again; anything else
      ends iteration with a `SubscriptionLostError` naming the reply.
    - `close()` removes what the subscription made for itself: its private
      group (every stream), or its member name in a named group where
      nothing is pending for it.
    """

    logger = logger
    transient: ClassVar[tuple[type[BaseException], ...]] = (TransportError,)

    def __init__(self, broker: RedisStreamBroker, pattern: str, group: str | None) -> None:
        super().__init__(pattern, group, broker=broker)
        self._stream_broker = broker
        self._client = broker.client
        self._group = group if group is not None else f"{_SOLO}{uuid.uuid4().hex}"
        """The group read in: `group`, or a private one for an ungrouped subscription."""
        self.consumer = _consumer_name()
        """This subscription's member name in its group."""
        self._matcher = GlobPattern(pattern)
        self._reading: dict[str, str] = {}
        """Streams with the group, as XREADGROUP takes them (key -> ">")."""
        self._joined: set[str] = set()
        """Every stream the group was created or found on (for cleaning up)."""
        self._missing: set[str] = set()
        """Streams whose group must be made (again) before they are read."""
        self._misfits: set[str] = set()
        """Registered keys that hold another type than a stream."""
        self._held: dict[str, set[bytes]] = {}
        """Entries read and not settled yet, renewed so that no one claims them."""
        self._acks: dict[str, list[bytes]] = {}
        self._ack_timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self._keeper: asyncio.Task[None] | None = None
        self._opened = False
        self._read_script = self._client.register_script(_READ)
        self._plain_until = 0.0
        """Until when reads skip the script (after Redis refused it)."""
        self._ready: list[RedisStreamDelivery] = []
        """Deliveries a reconnect read, for the next `_receive`."""
        self._next_discovery = 0.0
        self._next_claim = 0.0
        self._claim_from: dict[str, str] = {}
        """Where each stream's next XAUTOCLAIM starts: the cursor the last one returned."""

    # -- the link --------------------------------------------------------------

    async def _connect(self) -> None:
        broker = self._stream_broker
        try:
            if not self._opened:
                # Where a group made on a stream that exists now starts.
                await self._discover("$" if broker.start_from == "new" else "0", strict=True)
                self._opened = True
                if not self.closed:  # close() waits only for what it can see
                    self._keeper = asyncio.create_task(self._keep(), name=f"keep {self!r}")
            else:
                # Back only once a read works (READONLY, OOM ... fail here).
                await self._discover("0")
                if self._reading:
                    self._ready = await self._read(block=False)
        except _REDIS_ERRORS as exc:
            raise _lost(exc) from exc
        self._next_discovery = asyncio.get_running_loop().time() + broker.discovery_interval

    async def _disconnect(self) -> None:
        """Nothing to drop: commands take pooled connections."""

    def _fatal(self, error: BaseException) -> BaseException | None:
        return _fatal(self, error)

    async def _discover(self, start: str, *, strict: bool = False) -> None:
        """Join the group on registered streams matching the pattern that it
        is not read on yet, and on those whose group must be made again."""
        keys: Any = await self._client.smembers(self._stream_broker.registry_key)
        found = {key for key in map(_text, keys) if key not in self._joined}
        wanted = sorted({key for key in found if self._matcher.matches(key)} | self._missing)
        if wanted:
            await self._join(wanted, start, strict=strict)

    async def _join(self, keys: list[str], start: str, *, strict: bool = False) -> None:
        """``XGROUP CREATE`` on `keys` (``MKSTREAM``; an existing group is
        kept as it is). A key that fails stays missing, to retry; with
        `strict`, a failure other than a misfit raises."""
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.xgroup_create(key, self._group, id=start, mkstream=True)
            results = await pipe.execute(raise_on_error=False)
        for key, result in zip(keys, results, strict=True):
            if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
                if "WRONGTYPE" in str(result):
                    self._misfit(key, result)
                    continue
                if strict:
                    raise result
                if key not in self._missing:
                    logger.warning(
                        "%r could not make its group on %s (%s); trying again every %.1fs",
                        self,
                        quote(key, 200),
                        _describe(result),
                        self._stream_broker.discovery_interval,
                    )
                self._missing.add(key)
                self._reading.pop(key, None)
                continue
            if key in self._misfits:
                self._misfits.discard(key)
                logger.info("%r reads %s again: it is a stream now", self, quote(key, 200))
            self._missing.discard(key)
            self._joined.add(key)
            self._reading[key] = ">"

    def _misfit(self, key: str, error: BaseException) -> None:
        # Found again by discovery once the key is a stream.
        self._reading.pop(key, None)
        self._missing.discard(key)
        self._joined.discard(key)
        if key not in self._misfits:
            self._misfits.add(key)
            logger.warning(
                "%r skips %s: the key holds another type than a stream (%s); it is read "
                "once it is a stream again",
                self,
                quote(key, 200),
                _describe(error),
            )

    # -- receiving --------------------------------------------------------------

    async def _receive(self) -> list[RedisStreamDelivery]:
        broker = self._stream_broker
        # Every command's reply is due within the read's BLOCK (or the wait
        # for a first stream) plus silence_timeout; a connection that went
        # silent is noticed by that and replaced.
        due = broker._reply_due()
        try:
            async with asyncio.timeout(due):
                return await self._receive_now()
        except TimeoutError:
            raise BrokerUnavailableError(
                f"Redis did not answer within {due:g}s (BLOCK plus silence_timeout): the "
                "connection went silent (a network partition, a dead peer)"
            ) from None

    async def _receive_now(self) -> list[RedisStreamDelivery]:
        broker = self._stream_broker
        now = asyncio.get_running_loop().time()
        try:
            if now >= self._next_discovery:
                await self._discover("0")
                self._next_discovery = now + broker.discovery_interval
            claimed: list[RedisStreamDelivery] = []
            if now >= self._next_claim:
                claimed, more = await self._claim()
                # A pass cut short by its bound goes on at the next receive.
                self._next_claim = now if more else now + broker.claim_interval
            # What a reconnect read is taken only now: nothing read is dropped.
            deliveries, self._ready = self._ready + claimed, []
            if deliveries:
                pass
            elif self._reading:
                deliveries = await self._read(block=True)
            else:
                # No stream yet: look again at the next discovery.
                await asyncio.sleep(broker.discovery_interval)
        except _REDIS_ERRORS as exc:
            raise _lost(exc) from exc
        if being_cancelled():  # a cancellation redis-py swallowed
            raise asyncio.CancelledError
        return deliveries

    async def _read(self, *, block: bool) -> list[RedisStreamDelivery]:
        """Send the acknowledgements waiting and read the next batch, in one
        round trip: through the read script while entries are waiting, else
        with a blocking ``XREADGROUP``."""
        if asyncio.get_running_loop().time() >= self._plain_until:
            deliveries = await self._read_scripted()
            if deliveries or (deliveries is not None and not block):
                return deliveries
        return await self._read_plain(block=block)

    async def _read_scripted(self) -> list[RedisStreamDelivery] | None:
        """The read script; None when Redis refused it (the plain read says why)."""
        keys = list(self._reading)
        acks = self._take_acks()
        sent = {key: acks.pop(key) for key in keys if key in acks}
        if acks:  # of streams no longer read: on their own
            self._requeue(acks)
            await self._flush()
        args: list[Any] = [self._group, self.consumer, self._stream_broker.batch_size]
        for key in keys:
            ids = sent.get(key, ())
            args.append(len(ids))
            args.extend(ids)
        try:
            flat: Any = await self._read_script(keys=keys, args=args)
        except BaseException as exc:
            self._requeue(sent)  # maybe not run: XACK again later (it is idempotent)
            if isinstance(exc, redis_errors.ResponseError):
                # OOM refuses scripts, an ACL may forbid them: read plainly a while.
                self._plain_until = asyncio.get_running_loop().time() + _PLAIN_FOR
                return None
            raise
        deliveries: list[RedisStreamDelivery] = []
        at, end = 0, len(flat)
        while at < end:
            key, count = _text(flat[at]), flat[at + 1]
            held = self._held.get(key)
            if held is None:
                held = self._held[key] = set()
            for i in range(at + 2, at + 2 + 2 * count, 2):
                entry_id = flat[i]
                held.add(entry_id)
                deliveries.append(RedisStreamDelivery(self, key, entry_id, flat[i + 1]))
            at += 2 + 2 * count
        return deliveries

    async def _read_plain(self, *, block: bool) -> list[RedisStreamDelivery]:
        """Send the acknowledgements waiting, then ``XREADGROUP``, pipelined."""
        broker = self._stream_broker
        acks = self._take_acks()
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, ids in acks.items():
                    pipe.xack(key, self._group, *ids)
                pipe.xreadgroup(
                    self._group,
                    self.consumer,
                    dict[Any, Any](self._reading),
                    count=broker.batch_size,
                    block=broker.block_ms if block else None,
                )
                results = await pipe.execute(raise_on_error=False)
        except BaseException:
            self._requeue(acks)  # maybe not sent: XACK again later (it is idempotent)
            raise
        self._check_acks(acks, results)
        replies = results[-1]
        if isinstance(replies, redis_errors.ResponseError):
            return await self._read_failed(replies)
        return self._deliveries_of(replies)

    def _deliveries_of(self, replies: Any) -> list[RedisStreamDelivery]:
        # RESP2 callbacks give [[key, entries]], RESP3 ones {key: [entries]}.
        pairs = replies.items() if isinstance(replies, dict) else replies or ()
        deliveries: list[RedisStreamDelivery] = []
        for stream, entries in pairs:
            if entries and isinstance(entries[0], list):
                entries = entries[0]
            key = _text(stream)
            held = self._held.get(key)
            if held is None:
                held = self._held[key] = set()
            for entry_id, fields in entries:
                held.add(entry_id)
                # An entry another producer wrote without our field decodes
                # as bad input (not JSON) and is dead-lettered.
                data = fields.get(b"data", b"") if fields else b""
                deliveries.append(RedisStreamDelivery(self, key, entry_id, data))
        return deliveries

    async def _read_failed(self, error: redis_errors.ResponseError) -> list[RedisStreamDelivery]:
        """A group or a stream was deleted, or a key became another type:
        mend what can be mended here; raise the rest to the reconnect loop."""
        code = _code(error)
        if self.closed:
            return []
        if code == "NOGROUP" or (code == "UNBLOCKED" and "no longer exists" in str(error)):
            logger.warning(
                "%r lost its group on a stream (%s); making it again, from each stream's "
                "first entry",
                self,
                _describe(error),
            )
            await self._join(sorted(self._missing.union(self._reading)), "0")
            return []
        if code == "WRONGTYPE":
            keys = list(self._reading)
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.type(key)
                types = await pipe.execute()
            wrong = [
                k for k, t in zip(keys, types, strict=True) if _text(t) not in ("stream", "none")
            ]
            for key in wrong:
                self._misfit(key, error)
            if wrong:
                return []
        raise error

    # -- claiming, renewing, cleaning up ------------------------------------------

    async def _claim(self) -> tuple[list[RedisStreamDelivery], bool]:
        """Claim entries idle past `claim_idle` (a crashed member's, or
        released), and remove idle members that hold nothing.

        Follows each stream's ``XAUTOCLAIM`` cursor, from pass to pass too,
        for up to `_CLAIM_CALLS` calls per stream; also returns whether a
        stream's cursor was still short of the end of its pending list."""
        broker = self._stream_broker
        idle_ms = int(broker.claim_idle * 1000)
        claimed: list[tuple[str, list[tuple[bytes, Any]]]] = []
        going = list(self._reading)
        for call in range(_CLAIM_CALLS):
            if not going:
                break
            keys, going = going, []
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.xautoclaim(
                        key,
                        self._group,
                        self.consumer,
                        idle_ms,
                        start_id=self._claim_from.get(key, "0-0"),
                        count=broker.batch_size,
                    )
                    if call == 0:
                        pipe.xinfo_consumers(key, self._group)
                results = await pipe.execute(raise_on_error=False)
            step = 2 if call == 0 else 1
            for index, key in enumerate(keys):
                reply = results[step * index]
                members = results[step * index + 1] if call == 0 else None
                if isinstance(reply, Exception) or isinstance(members, Exception):
                    continue  # a vanished group shows in the next read
                # Redis 7 takes entries deleted from the stream off the pending list
                # and lists their ids third; 6.2 returns them as nil, skipped here.
                cursor = self._claim_from[key] = _text(reply[0])
                entries = [(entry_id, fields) for entry_id, fields in reply[1] if fields]
                if entries:
                    claimed.append((key, entries))
                if cursor != "0-0":
                    going.append(key)
                if members is not None:
                    await self._remove_idle_members(key, members)
        return (await self._claimed(claimed) if claimed else []), bool(going)

    async def _claimed(
        self, claimed: list[tuple[str, list[tuple[bytes, Any]]]]
    ) -> list[RedisStreamDelivery]:
        """Deliveries of what each XAUTOCLAIM returned, with their counts (the
        consumer dead-letters those delivered too often)."""
        async with self._client.pipeline(transaction=False) as pipe:
            for key, entries in claimed:
                pipe.xpending_range(
                    key,
                    self._group,
                    min=entries[0][0],
                    max=entries[-1][0],
                    count=len(entries) * 2,
                    consumername=self.consumer,
                )
            pendings = await pipe.execute(raise_on_error=False)
        deliveries: list[RedisStreamDelivery] = []
        for (key, entries), pending in zip(claimed, pendings, strict=True):
            counts: dict[bytes, int] = (
                {}
                if isinstance(pending, Exception)
                else {p["message_id"]: p["times_delivered"] for p in pending}
            )
            for entry_id, fields in entries:
                delivery = RedisStreamDelivery(
                    self, key, entry_id, fields.get(b"data", b""), counts.get(entry_id, 2)
                )
                deliveries.append(delivery)
        # Held (renewed) only once handed out: a claim that failed half-way
        # leaves its entries to be claimed again.
        for delivery in deliveries:
            self._held.setdefault(delivery.channel, set()).add(delivery.entry_id)
        return deliveries

    async def _remove_idle_members(self, key: str, members: Any) -> None:
        limit = self._stream_broker.idle_consumer_timeout
        if limit is None:
            return
        for member in members:
            name = _text(member["name"])
            idle = member["idle"] / 1000
            if name == self.consumer or member["pending"] or idle <= limit:
                continue
            if await self._delete_member(key, name) == 0:
                logger.info(
                    "removed member %s of group %s on stream %s: idle for %.1fs with nothing "
                    "pending",
                    quote(repr(name), 200),
                    quote(repr(self._group), 200),
                    quote(key, 200),
                    idle,
                )

    async def _delete_member(self, key: str, name: str) -> int:
        """Delete member `name` of the group on `key` if nothing is pending
        for it: 0 when it is gone, -1 when it holds entries."""
        result: Any = await self._client.eval(_DELETE_IF_IDLE, 1, key, self._group, name)
        return int(result)

    async def _keep(self) -> None:
        """Renew the entries this subscription holds, so that no member claims
        them while their handlers run, every third of `claim_idle`."""
        every = self._stream_broker.claim_idle / 3
        while not being_cancelled():  # a cancellation redis-py swallowed ends it too
            await asyncio.sleep(every)
            held: dict[str, list[Any]] = {k: list(ids) for k, ids in self._held.items() if ids}
            if not held:
                continue
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for key, ids in held.items():
                        pipe.xclaim(key, self._group, self.consumer, 0, ids, justid=True)
                    await pipe.execute(raise_on_error=False)
            except _REDIS_ERRORS as exc:
                logger.warning(
                    "%r could not renew the entries it holds (%s); they may be claimed by "
                    "another member after claim_idle",
                    self,
                    _describe(exc),
                )
            except Exception:
                # Not Redis's answer: say so loudly, and renew at the next turn
                # (a dead renewal lets peers claim entries still being handled).
                logger.exception(
                    "%r could not renew the entries it holds; trying again in %.1fs",
                    self,
                    every,
                )

    # -- settling --------------------------------------------------------------

    def _forget(self, delivery: RedisStreamDelivery) -> None:
        held = self._held.get(delivery.channel)
        if held is not None:
            held.discard(delivery.entry_id)

    def _queue_ack(self, delivery: RedisStreamDelivery) -> None:
        self._forget(delivery)
        ids = self._acks.get(delivery.channel)
        if ids is None:
            self._acks[delivery.channel] = [delivery.entry_id]
        else:
            ids.append(delivery.entry_id)
        if self._ack_timer is None and not self.closed:
            loop = asyncio.get_running_loop()
            self._ack_timer = loop.call_later(_ACK_DELAY, self._flush_soon)

    def _take_acks(self) -> dict[str, list[bytes]]:
        acks, self._acks = self._acks, {}
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        return acks

    def _requeue(self, acks: dict[str, list[bytes]]) -> None:
        for key, ids in acks.items():
            self._acks.setdefault(key, []).extend(ids)

    def _check_acks(self, acks: dict[str, list[bytes]], results: list[Any]) -> None:
        """Queue again the XACKs Redis refused (READONLY, OOM ...); NOGROUP
        means the group is gone and there is nothing left to acknowledge."""
        refused = {
            key: ids
            for (key, ids), result in zip(acks.items(), results, strict=False)
            if isinstance(result, Exception) and _code(result) != "NOGROUP"
        }
        if refused:
            self._requeue(refused)
            logger.warning(
                "%r could not acknowledge %d entries (%s); they are sent again with the next read",
                self,
                sum(map(len, refused.values())),
                _describe(next(r for r in results if isinstance(r, Exception))),
            )

    def _flush_soon(self) -> None:
        # The reader waits in XREADGROUP: send the acknowledgements on their own.
        self._ack_timer = None
        if self.closed:  # close() sends what is queued, and waits for it
            return
        task = asyncio.get_running_loop().create_task(self._flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self) -> None:
        acks = self._take_acks()
        if not acks:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, ids in acks.items():
                    pipe.xack(key, self._group, *ids)
                self._check_acks(acks, await pipe.execute(raise_on_error=False))
        except _REDIS_ERRORS as exc:
            self._requeue(acks)
            logger.warning(
                "%r could not acknowledge %d entries (%s); they are sent again with the next read",
                self,
                sum(map(len, acks.values())),
                _describe(exc),
            )

    async def _dead_letter(
        self, delivery: RedisStreamDelivery, reason: str, description: str
    ) -> None:
        self._forget(delivery)
        broker = self._stream_broker
        record = DeadLetterRecord.of(
            delivery.channel, delivery.data, reason, description, delivery.delivery_count
        )
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xadd(
                broker.dead_letter_key,
                broker._dead_letter_fields(record, entry_id=delivery.entry_id, group=self._group),
                maxlen=broker.dead_letter_limit,
                approximate=False,
            )
            pipe.xack(delivery.channel, self._group, delivery.entry_id)
            await pipe.execute()

    # -- closing ---------------------------------------------------------------

    async def _closing(self) -> None:
        """Send the acknowledgements waiting, then remove what the
        subscription made for itself. The tasks it started (acknowledgements,
        renewals) are over when this returns: none of them uses the client
        afterwards (which `stop()` may close next), nor opens a connection."""
        # First, so that no flush starts while this waits: one that did went
        # on after close() returned, on a client closed meanwhile.
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        while self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
        try:
            await self._flush()
            if self.group is None:
                await self._destroy_private_group()
            else:
                await self._leave_group()
        except _REDIS_ERRORS as exc:
            logger.warning("%r could not clean up after itself: %s", self, _describe(exc))

    async def _destroy_private_group(self) -> None:
        keys = sorted(self._joined)
        if not keys:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.xgroup_destroy(key, self._group)
            await pipe.execute(raise_on_error=False)

    async def _leave_group(self) -> None:
        for key in sorted(self._joined):
            if await self._delete_member(key, self.consumer) < 0:
                pending: Any = await self._client.xpending_range(
                    key, self._group, min="-", max="+", count=1000, consumername=self.consumer
                )
                logger.info(
                    "%r leaves its member %s in group %s on stream %s with %d pending "
                    "entries: another member claims them after claim_idle (%.1fs), and the "
                    "member is removed once idle past idle_consumer_timeout",
                    self,
                    quote(repr(self.consumer), 200),
                    quote(repr(self._group), 200),
                    quote(key, 200),
                    len(pending),
                    self._stream_broker.claim_idle,
                )


class RedisStreamBroker(_RedisBroker):
    """Redis Streams: every logical channel is a stream, read in consumer groups.

    Delivery guarantee: at-least-once. An entry stays in its group's pending
    list until a consumer acknowledges it (``XACK``) after its handlers
    finished; entries of a member that crashed or stopped are claimed by
    another (``XAUTOCLAIM``) once idle for `claim_idle` seconds. The
    consumer dead-letters an entry delivered more than its `max_deliveries`
    times to the stream ``{prefix}:dead-letter``, with the reason.

    ```python
    broker = RedisStreamBroker(client=Redis(), channel_prefix="shop", maxlen=100_000)
    ```

    - One stream per logical channel, key ``{prefix}:{message_type}:{message_name}``,
      entry field ``data`` holding the envelope; producers register each
      stream key in the set ``{prefix}:streams`` (`registry_key`).
    - A subscription reads the registered streams whose key matches its
      glob; streams that appear later are found within `discovery_interval`
      and read from their first entry.
    - `subscribe(pattern, group="billing")` joins (or creates) the group on
      every matching stream; without a group the subscription gets a
      private group of its own, removed when it closes.
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
        batch_size: int = 100,
        max_deliveries: int | None = None,
        dead_letter_limit: int = 10_000,
        idle_consumer_timeout: float | None = 3600.0,
        silence_timeout: float = 15.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        if start_from not in ("new", "beginning"):
            raise ValueError(
                f"RedisStreamBroker(start_from={start_from!r}): must be 'new' or 'beginning'"
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
                raise ValueError(f"RedisStreamBroker({name}={value}): must be above 0")
        if max_deliveries is not None:
            warnings.warn(
                f"RedisStreamBroker(max_deliveries={max_deliveries}) is no longer used: the one "
                "delivery limit is EventConsumer(max_deliveries=...), which also dead-letters "
                "an entry delivered more often without being settled; pass it there",
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
        self.registry_key = f"{channel_prefix}:streams"
        """The set of every stream key producers published to."""

    def _reply_due(self) -> float:
        return max(self.block_ms / 1000, self.discovery_interval) + self.silence_timeout

    def channel(self, message: Message) -> str:
        """The stream key `message` is appended to (its logical channel)."""
        return f"{self.channel_prefix}:{message.message_type}:{message.message_name}"

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
                    f"could not append {_names(messages)} to Redis streams at {self.address}: "
                    f"{quote(str(exc))}"
                ) from exc

    async def subscribe(self, pattern: str, *, group: str | None = None) -> RedisStreamSubscription:
        """Read the streams matching `pattern` in consumer `group` (a private
        group when None); returns once the group exists on every stream that
        matches now."""
        subscription = RedisStreamSubscription(self, pattern, group)
        await self._subscribed(subscription)
        return subscription
