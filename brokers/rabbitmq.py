"""RabbitMQ: a durable topic exchange per prefix, a quorum queue per consumer group.

Delivery guarantee: at-least-once for consumer groups. A message routed to a
group's queue stays there until a consumer acknowledges it after its
handlers succeeded; a message released, or unsettled when its channel
closed, is delivered again with RabbitMQ's delivery count one higher. A
subscription without a group reads an exclusive queue of its own, which
RabbitMQ deletes with its channel: it gets every matching message while it
is connected, and what is published while it reconnects is lost to it
(at-most-once across reconnects).

- Layout: one durable topic exchange named by the prefix, declared once per
  connection; routing key ``{message_type}.{message_name}``; persistent
  messages with ``message_id`` (the envelope's id), ``content_type``
  ``application/json``, ``type`` (the event name) and the envelope headers
  as AMQP headers. A message no queue is bound for goes through the
  exchange's alternate exchange ``{prefix}.unroutable`` to the durable queue
  ``{prefix}.unroutable`` (`unroutable()`), or, published with `mandatory`,
  comes back as a `PublishError`; never a silent drop.
- A group is the durable quorum queue ``{prefix}.{group}``, dead-lettering
  to ``{prefix}.dead-letter``; every subscription of the group shares it and
  binds its pattern once; bindings are never removed by the broker. A
  subscription without a group has an exclusive, server-named queue.
- Patterns: AMQP's ``*`` is one whole word, so a glob binds the narrowest
  key that covers it (`binding_key`) and each delivery is matched against
  the glob in process. A delivery goes to the subscription that received it
  when its glob matches, else to another subscription of the same group (in
  this broker) whose glob does. One that matches none is acknowledged and
  counted in `RabbitMQMessageBroker.unmatched`, never dead-lettered; when no
  binding of the group's subscriptions here brought it, a WARNING says which
  binding did and how to remove it (once per routing key).
- Settlement: ack after the handlers; release is ``basic.nack`` with
  requeue; a dead letter is published (confirmed) to the fanout exchange
  ``{prefix}.dead-letter`` with the reason in its headers, then acknowledged.
  The durable queue ``{prefix}.dead-letter`` keeps the newest
  `dead_letter_limit` of them, read back with `dead_letters()`.
- Connections: one ``connect_robust`` connection; a channel with publisher
  confirms for publishing and a channel per subscription with `prefetch`
  unacknowledged deliveries. After a lost connection or channel each
  subscription opens a new channel and declares, binds and consumes again;
  deliveries taken on the dead channel are never settled on the new one.

Lifecycle, reconnection and settle-once come from `mediator.transport`; this
module holds what aio-pika needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import re
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, ClassVar, NamedTuple, Self
from urllib.parse import urlsplit

try:
    import aio_pika
    from aio_pika.abc import AbstractRobustConnection
    from aiormq import exceptions as amqp_errors
    from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
    from pamqp import commands as spec
    from pamqp.common import FieldTable
    from yarl import URL
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "brokers.rabbitmq needs aio-pika: pip install 'mediator-toolkit[rabbitmq]'"
    ) from exc

from mediator.transport import (
    DEFAULT_MAX_MESSAGE_SIZE,
    RECONNECT,
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
    MessageTooLargeError,
    PublishError,
    ReconnectingSubscription,
    SubscriptionLostError,
    TransportError,
    being_cancelled,
    quote,
)

__all__ = [
    "DEFAULT_PREFETCH",
    "RabbitMQDelivery",
    "RabbitMQMessageBroker",
    "RabbitMQSubscription",
    "binding_key",
]

logger = logging.getLogger("mediator.brokers.rabbitmq")

DEFAULT_PREFETCH = 16
"""Unacknowledged deliveries per subscription channel: `EventConsumer`'s
default `max_concurrency`, so nothing waits in the process for a slot."""
DEFAULT_HEARTBEAT = 15
"""Seconds between heartbeats that `from_url` asks for: a connection gone
silent is noticed within 3 x (heartbeat + 1) s."""
DEAD_LETTER_HEADER = "dead_letter_"
"""Prefix of the headers a dead letter carries its record in (``dead_letter_reason``...)."""
"""The dead-letter reason of a group delivery that no binding of the group's
subscriptions in this process brought (a pattern dropped from the group)."""
UNROUTABLE = "unroutable"
"""The reason of the records `RabbitMQMessageBroker.unroutable` returns."""

_MANDATORY_KEY = "mediator:mandatory"
"""The routing key a mandatory publish adds in a ``BCC`` header (stripped by
RabbitMQ before delivery): the alternate exchange binds it to itself, which
leads to no queue, so RabbitMQ returns such a message. One word holding ``:``,
so no key `binding_key` makes matches it but ``#``, which matches the message anyway."""

_SPECIAL = frozenset("*?[\\")
_CONNECTION_LOST = (
    ConnectionError,
    OSError,
    amqp_errors.AMQPError,
    amqp_errors.ChannelInvalidStateError,
    asyncio.CancelledError,
)
"""What a publish or a settlement fails with when its channel or connection went away
(a cancelled command future among them); `_raise_if_cancelled` tells a cancellation
of the running task apart."""
_FAILURES = (amqp_errors.AMQPError, amqp_errors.ChannelInvalidStateError, OSError, TimeoutError)
"""Every error aio-pika raises for a broker that refused or did not answer."""


# -- patterns --------------------------------------------------------------------


def _tokens(pattern: str) -> Iterator[str | None]:
    """The glob's characters, unescaped; None for each ``*``, ``?`` or ``[...]``."""
    i, end = 0, len(pattern)
    while i < end:
        char = pattern[i]
        if char == "\\" and i + 1 < end:
            i += 1
            yield pattern[i]
        elif char in "*?":
            yield None
        elif char == "[":
            # The set ends at the first unescaped "]" (or with the pattern).
            i += 1
            while i < end and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
            yield None
        else:
            yield char
        i += 1


def _plain_words(text: str) -> bool:
    # A word that is exactly "*" or "#" would be a wildcard in a binding key.
    return all(word not in ("*", "#") for word in text.split("."))


def binding_key(pattern: str, prefix: str) -> str:
    """The narrowest AMQP topic binding key that covers every routing key
    whose logical channel `pattern` can match on the exchange of `prefix`.

    AMQP matches whole dot-separated words (``*`` one word, ``#`` any
    number), so the key covers at least what the glob means; the broker then
    filters deliveries by the glob in process.

    ```python
    assert binding_key("shop:notification_event:OrderPlaced", "shop") == (
        "notification_event.OrderPlaced"
    )
    assert binding_key("shop:notification_event:Order*", "shop") == "notification_event.#"
    assert binding_key("shop:*:Order?", "shop") == "#"
    ```

    Raises ValueError when `pattern` can match no channel of `prefix`.
    """
    head = f"{prefix}:"
    tokens = list(_tokens(pattern))
    for index, expected in enumerate(head):
        if index >= len(tokens) or (tokens[index] is not None and tokens[index] != expected):
            raise ValueError(
                f"pattern {quote(pattern, 200)} can match no channel of prefix {prefix!r} "
                f"(every channel on this broker starts with {head!r}); subscribe on a broker "
                "with the pattern's prefix, or fix the pattern"
            )
        if tokens[index] is None:
            return "#"  # a wildcard within the prefix: this exchange holds only its channels
    rest = tokens[len(head) :]
    if ":" not in rest or None in rest[: rest.index(":")]:
        return "#"  # the type part is not pinned down
    colon = rest.index(":")
    kind = "".join(t for t in rest[:colon] if t is not None)
    name = rest[colon + 1 :]
    if not kind or "." in kind or not _plain_words(kind):
        return "#"
    if None not in name:
        literal = "".join(t for t in name if t is not None)
        return f"{kind}.{literal}" if _plain_words(literal) else f"{kind}.#"
    # Whole words before the first wildcard pin the key down further; the
    # rest may hold dots, so it is "#", never "*".
    literal_head = "".join(t for t in name[: name.index(None)] if t is not None)
    words = literal_head.split(".")[:-1]
    if not _plain_words(".".join(words)):
        words = []
    return ".".join([kind, *words, "#"])


def _covers(key: str, routing_key: str) -> bool:
    """Whether a key that `binding_key` made matches `routing_key` in AMQP."""
    if key == "#":
        return True
    if key.endswith(".#"):
        head = key[:-2]
        return routing_key == head or routing_key.startswith(f"{head}.")
    return key == routing_key


def _regex_literal(name: str) -> str:
    return re.sub(r"[.^$*+?{}\[\]|()\\]", lambda m: f"\\{m.group()}", name)


# -- errors ------------------------------------------------------------------------


class _LinkLost(ConnectionError):
    """A subscription's channel closed, or RabbitMQ cancelled its consumer."""


_ERRORS = ErrorTable(
    sdk=_FAILURES,
    rows=[
        ErrorRow(
            (amqp_errors.ProbableAuthenticationError, amqp_errors.AuthenticationError),
            CredentialError,
            "RabbitMQ refused the login: check the user and password in the URL",
        ),
        ErrorRow(
            amqp_errors.ConnectionNotAllowed,
            CredentialError,
            "RabbitMQ refused the virtual host: check that it exists and the user may use it "
            "(rabbitmqctl set_permissions)",
        ),
        ErrorRow(
            amqp_errors.ChannelAccessRefused,
            CredentialError,
            "RabbitMQ refused access: grant the user the configure, write and read "
            "permissions on the broker's exchanges and queues (rabbitmqctl set_permissions)",
        ),
        ErrorRow(
            amqp_errors.ChannelPreconditionFailed,
            TransportError,
            "RabbitMQ refused a declaration: a queue or exchange of that name exists with "
            "other settings (a classic queue where a quorum queue is declared, another "
            "dead-letter exchange or limit): delete it, or use another group or prefix",
        ),
        ErrorRow(
            amqp_errors.ChannelLockedResource,
            TransportError,
            "RabbitMQ refused: the queue is exclusive to another connection",
        ),
    ],
)
"""How aio-pika's errors become the library's: a row is a refusal that
retrying cannot mend; anything else is the error the call site names."""


def _refusal(what: str, exc: BaseException) -> TransportError | None:
    """The library's error for a refusal retrying cannot mend, else None."""
    if _ERRORS.row(exc) is None:
        return None
    return _ERRORS.lift(exc, what, TransportError)


def _raise_if_cancelled(error: BaseException) -> None:
    """Raise a cancellation of the running task that `error` stands for:
    aiormq reports one that lands as a channel closes as the channel's error."""
    if being_cancelled():
        if isinstance(error, asyncio.CancelledError):
            raise error
        raise asyncio.CancelledError from error


async def _settle(command: Awaitable[None]) -> BaseException | None:
    """Await a settlement command; the error of a lost channel instead of
    raising it. A cancellation of the running task is raised: the message is
    then not settled here, and RabbitMQ delivers it again."""
    try:
        await command
    except _CONNECTION_LOST as exc:
        _raise_if_cancelled(exc)
        return exc
    return None


# -- deliveries ------------------------------------------------------------------


class RabbitMQDelivery(DeliveryBase):
    """One message delivered on a subscription's channel, settled on that
    channel: ack, nack with requeue (release), or a confirmed copy to the
    dead-letter exchange and then ack.

    A settlement on a channel that has closed since (a lost connection, a
    reconnect, the subscription closed) is logged, never raised: RabbitMQ
    has put the message back already and delivers it again. A settlement
    cancelled midway (``asyncio.timeout``, a stopping consumer) raises the
    cancellation, and the message counts as unsettled. A dead letter that
    cannot be written raises `PublishError` and leaves the delivery unsettled.
    """

    __slots__ = ("_channel", "_subscription", "delivery_tag", "message")

    def __init__(
        self,
        subscription: RabbitMQSubscription,
        message: DeliveredMessage,
        delivery_tag: int,
        channel: str,
        delivery_count: int,
    ) -> None:
        super().__init__(channel, message.body, delivery_count)
        self.message = message
        """aiormq's message: its properties (``message.header.properties``) and routing key."""
        self.delivery_tag = delivery_tag
        self._channel: AbstractChannel = message.channel
        self._subscription = subscription

    async def _ack(self) -> None:
        error = await _settle(self._channel.basic_ack(self.delivery_tag))
        if error is not None:
            self._unsettled("acknowledge", error)

    async def _release(self) -> None:
        self._subscription._remember_release(self)
        error = await _settle(self._channel.basic_nack(self.delivery_tag, requeue=True))
        if error is not None:
            self._unsettled("release", error)

    async def _dead_letter(self, reason: str, description: str) -> None:
        if self._channel.is_closed:
            self._unsettled("dead-letter", _LinkLost("its channel is closed"))
            return
        record = DeadLetterRecord.of(
            self.channel, self.data, reason, description, self.delivery_count
        )
        owner = self._subscription._owner
        try:
            await owner._publish_dead_letter(record, self.message)
        except (TransportError, MessageTooLargeError) as exc:
            _raise_if_cancelled(exc)
            # Unsettled: whoever settles it releases it, after a wait of its choosing.
            raise PublishError(
                f"could not dead-letter message {self._message_id()} from "
                f"{quote(self.channel, 200)} to exchange {owner.dead_letter_exchange!r}: "
                f"{quote(str(exc), 500)}; it is not settled: release it to try again later"
            ) from exc
        await self._ack()

    def _message_id(self) -> str:
        return quote(str(self.message.header.properties.message_id), 200)

    def _unsettled(self, outcome: str, error: BaseException) -> None:
        logger.warning(
            "could not %s message %s from %s: its channel closed (%s); RabbitMQ delivers it again",
            outcome,
            self._message_id(),
            quote(self.channel, 200),
            quote(repr(error), 200),
        )


class RabbitMQSubscription(ReconnectingSubscription[RabbitMQDelivery]):
    """A consumer on a queue of its own channel (prefetch = the broker's
    `prefetch`): the group's quorum queue, consumed from the first read, or an
    exclusive one without a group. Reopened with backoff after its channel or
    connection is lost; a refused permission or an incompatible queue ends it for good.
    """

    logger = logger
    transient: ClassVar[tuple[type[BaseException], ...]] = (
        ConnectionError,
        OSError,
        TimeoutError,
        amqp_errors.AMQPError,
        amqp_errors.ChannelInvalidStateError,
    )

    def __init__(
        self, broker: RabbitMQMessageBroker, pattern: str, group: str | None, key: str
    ) -> None:
        super().__init__(pattern, group, broker=broker)
        self._owner = broker
        self.binding_key = key
        """The AMQP key the queue is bound with (see `binding_key`)."""
        self.queue: str | None = None if group is None else broker.group_queue(group)
        """The queue consumed: ``{prefix}.{group}``, or the server's name for an exclusive one."""
        self._glob = GlobPattern(pattern)
        self._channel: AbstractChannel | None = None
        self._consuming = False
        self._waiting: deque[RabbitMQDelivery] = deque()
        self._wakeup = asyncio.Event()
        self._broken: _LinkLost | None = None
        # Without a group the queue is classic, which counts no deliveries:
        # the count of each released message is kept here until it is back.
        self._released: OrderedDict[str, int] = OrderedDict()

    def matches(self, channel: str) -> bool:
        """Whether `channel` matches this subscription's glob."""
        return self._glob.matches(channel)

    async def _connect(self) -> None:
        owner = self._owner
        async with asyncio.timeout(owner.connect_timeout):
            connection = await owner._underlay()
            await owner._declare_topology(connection)
            channel = await connection.channel(publisher_confirms=False)
        try:
            await channel.basic_qos(prefetch_count=owner.prefetch)
            if self.group is None:
                declared = await channel.queue_declare("", exclusive=True, auto_delete=True)
                queue = declared.queue or ""
            else:
                queue = owner.group_queue(self.group)
                await channel.queue_declare(
                    queue, durable=True, arguments=owner._group_queue_arguments()
                )
            await channel.queue_bind(queue, owner.exchange, routing_key=self.binding_key)
            channel.on_consumer_cancel_callbacks.add(functools.partial(self._cancelled, channel))
            channel.closing.add_done_callback(functools.partial(self._lost, channel))
            self._channel, self.queue, self._consuming = channel, queue, False
            if self.group is None:
                await self._consume()
            # A group's queue is consumed from the first read: a consumer that
            # subscribes several patterns of the group has subscribed them all
            # by then, so none takes what a later one is there for.
        except BaseException:
            self._channel = None
            await _close_quietly(channel)
            raise

    async def _consume(self) -> None:
        assert self._channel is not None
        assert self.queue is not None
        await self._channel.basic_consume(self.queue, self._on_message)
        self._consuming = True

    async def _on_message(self, message: DeliveredMessage) -> None:
        deliver = message.delivery
        assert isinstance(deliver, spec.Basic.Deliver)
        if self.closed:
            return  # its channel is closing, and puts the message back
        owner = self._owner
        routing_key = deliver.routing_key or ""
        channel = owner._channel_name(routing_key)
        target = self if self._glob.matches(channel) else owner._member_for(self, channel)
        count = self._delivery_count(message, bool(deliver.redelivered))
        delivery = RabbitMQDelivery(self, message, deliver.delivery_tag or 0, channel, count)
        if target is not None:
            target._waiting.append(delivery)
            target._wakeup.set()
        else:
            logger.debug("acknowledging a delivery from %s: matches no subscription", channel)
            if await _settle(message.channel.basic_ack(delivery.delivery_tag)) is None:
                owner.unmatched += 1
            if self.group is not None and not owner._bound_for(self.group, routing_key):
                # A binding none of the group's subscriptions here made brought
                # it: a pattern dropped from the group, or one only other
                # members subscribe. Acknowledged and counted as any unmatched
                # delivery, and said (once per routing key): it is not handled.
                owner._warn_unmatched(self.group, routing_key)

    def _delivery_count(self, message: DeliveredMessage, redelivered: bool) -> int:
        if not redelivered:
            return 1
        if self.group is not None:
            # Quorum queues count earlier deliveries in x-delivery-count.
            previous = (message.header.properties.headers or {}).get("x-delivery-count")
            return previous + 1 if isinstance(previous, int) and previous >= 0 else 2
        return self._released.pop(_release_key(message), 1) + 1

    def _remember_release(self, delivery: RabbitMQDelivery) -> None:
        if self.group is None:
            released = self._released
            released[_release_key(delivery.message)] = delivery.delivery_count
            if len(released) > 10_000:
                released.popitem(last=False)

    async def _receive(self) -> list[RabbitMQDelivery]:
        if not self._consuming:
            await self._consume()
        waiting = self._waiting
        while True:
            while waiting:
                delivery = waiting.popleft()
                # Taken on a channel that closed since: RabbitMQ has put it
                # back and delivers it again; never settle it on another.
                if not delivery._channel.is_closed:
                    return [delivery]
            if self._broken is not None:
                raise self._broken
            if self.closed:
                return []
            self._wakeup.clear()
            await self._wakeup.wait()

    def _lost(self, channel: AbstractChannel, closing: asyncio.Future[Any]) -> None:
        if channel is not self._channel:
            return
        error = None if closing.cancelled() else closing.exception()
        self._broken = _LinkLost(f"the channel of {self!r} closed: {quote(repr(error), 300)}")
        self._wakeup.set()

    def _cancelled(self, channel: AbstractChannel, frame: spec.Basic.Cancel) -> None:
        if channel is not self._channel:
            return
        self._broken = _LinkLost(
            f"RabbitMQ cancelled the consumer of {self!r} on queue {self.queue!r} "
            "(was the queue deleted?)"
        )
        self._wakeup.set()

    async def _disconnect(self) -> None:
        channel, self._channel = self._channel, None
        self._broken = None
        if channel is not None:
            await _close_quietly(channel)

    def _fatal(self, error: BaseException) -> BaseException | None:
        connection = self._owner._connection
        if connection is not None and connection.is_closed:
            return SubscriptionLostError(
                f"{self!r} lost its RabbitMQ connection for good: it was closed by its owner. "
                "Stop the consumers before closing the connection"
            )
        refused = _refusal(f"subscribing {self!r}", error)
        if refused is None or isinstance(refused, CredentialError):
            return refused
        return SubscriptionLostError(str(refused))

    async def _closing(self) -> None:
        self._owner._leave(self)
        # What other members handed over and nobody took goes back to the
        # queue now; what its own channel holds goes back as that closes.
        waiting = self._waiting
        while waiting:
            delivery = waiting.popleft()
            if delivery._channel is not self._channel and not delivery._channel.is_closed:
                await _settle(delivery._channel.basic_nack(delivery.delivery_tag, requeue=True))
        self._wakeup.set()


def _release_key(message: DeliveredMessage) -> str:
    message_id = message.header.properties.message_id
    return message_id if message_id else hashlib.sha256(message.body).hexdigest()


async def _close_quietly(channel: AbstractChannel) -> None:
    if channel.is_closed:
        return
    try:
        await channel.close()
    except Exception:  # the connection is gone already
        logger.debug("closing a channel failed", exc_info=True)


# -- the broker ------------------------------------------------------------------


class _Outgoing(NamedTuple):
    routing_key: str
    body: bytes
    properties: spec.Basic.Properties
    label: str


class RabbitMQMessageBroker(BrokerLifecycle):
    """Publishes envelopes to a topic exchange; consumes from quorum queues.

    ```python
    import aio_pika
    connection = await aio_pika.connect_robust("amqp://guest:guest@localhost/")
    broker = RabbitMQMessageBroker(connection, channel_prefix="shop")
    ```

    The connection is yours (configure TLS, heartbeats and the reconnect
    interval on it, and close it yourself); it must come from
    ``aio_pika.connect_robust``, which reconnects by itself. The broker opens
    a channel for publishing and one per subscription; `stop()` closes them.
    `from_url` builds a connection the broker owns and closes.
    """

    delivery_guarantee = DeliveryGuarantee.AT_LEAST_ONCE

    channel_prefix: str
    """The first part of every logical channel, and the name of the topic exchange."""
    prefetch: int
    """Unacknowledged deliveries per subscription; set it to the consumer's `max_concurrency`."""
    mandatory: bool
    """Whether a message no queue is bound for raises `PublishError` (else it
    goes to the queue ``{prefix}.unroutable``)."""
    publish_timeout: float
    """Seconds a publish may take, waiting for the connection and every confirm."""
    connect_timeout: float
    """Seconds `start()` and each (re)subscription wait for the connection."""
    dead_letter_limit: int
    """How many messages the queues ``{prefix}.dead-letter`` and ``{prefix}.unroutable``
    each keep (the newest)."""
    unmatched: int
    """Deliveries acknowledged because they matched no subscription's glob."""
    _connection: AbstractRobustConnection | None

    def __init__(
        self,
        connection: AbstractRobustConnection,
        channel_prefix: str = "mediator",
        *,
        prefetch: int = DEFAULT_PREFETCH,
        mandatory: bool = False,
        publish_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        dead_letter_limit: int = 10_000,
    ) -> None:
        if not isinstance(connection, AbstractRobustConnection):
            raise TypeError(
                f"RabbitMQMessageBroker needs a robust connection, got {type(connection).__name__}:"
                " make it with aio_pika.connect_robust(url), which reconnects after a drop, or "
                "use RabbitMQMessageBroker.from_url(url)"
            )
        self._setup(
            channel_prefix,
            prefetch=prefetch,
            mandatory=mandatory,
            publish_timeout=publish_timeout,
            connect_timeout=connect_timeout,
            dead_letter_limit=dead_letter_limit,
        )
        self._connection = connection

    @classmethod
    def from_url(
        cls,
        url: str,
        channel_prefix: str = "mediator",
        *,
        connection_name: str | None = None,
        reconnect_interval: float = 1.0,
        **options: Any,
    ) -> Self:
        """A broker with its own ``connect_robust`` connection to `url`
        (``amqp://`` or ``amqps://``), opened by `start()` (or the first use)
        and closed by `stop()`. `connection_name` is shown by ``rabbitmqctl
        list_connections``; `reconnect_interval` is the wait between attempts
        to reconnect; `options` are the broker's own keywords. The heartbeat is
        `DEFAULT_HEARTBEAT` seconds unless the URL names one (``?heartbeat=``)."""
        broker = cls.__new__(cls)
        broker._setup(channel_prefix, **options)
        broker._url = url
        broker._connect_options = {
            "reconnect_interval": reconnect_interval,
            "client_properties": {
                "connection_name": connection_name or f"mediator {channel_prefix}"
            },
        }
        if "heartbeat" not in urlsplit(url).query:
            # RabbitMQ proposes 60 s, so a silent connection (a network
            # partition) took 3 x 61 s to notice; 15 s: within 48 s.
            broker._connect_options["heartbeat"] = DEFAULT_HEARTBEAT
        broker._owns_client = True
        return broker

    def _setup(
        self,
        channel_prefix: str,
        *,
        prefetch: int = DEFAULT_PREFETCH,
        mandatory: bool = False,
        publish_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        dead_letter_limit: int = 10_000,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        if not channel_prefix or channel_prefix.startswith("amq."):
            raise ValueError(
                f"channel_prefix {channel_prefix!r} cannot name a RabbitMQ exchange: it must be "
                "non-empty and not start with 'amq.' (reserved by RabbitMQ)"
            )
        if len(f"{channel_prefix}.unroutable.keep".encode()) > 255:
            raise ValueError(
                f"channel_prefix {quote(channel_prefix, 100)} is too long: RabbitMQ names are at "
                "most 255 bytes, and the broker adds '.unroutable.keep' and group names to it"
            )
        for name, value in (
            ("prefetch", prefetch),
            ("dead_letter_limit", dead_letter_limit),
        ):
            if value < 1:
                raise ValueError(f"RabbitMQMessageBroker({name}={value}): must be at least 1")
        if prefetch > 65535:
            raise ValueError(f"prefetch={prefetch}: RabbitMQ takes at most 65535")
        super().__init__(max_message_size=max_message_size)
        self.channel_prefix = channel_prefix
        self.prefetch = prefetch
        self.mandatory = mandatory
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.dead_letter_limit = dead_letter_limit
        self.unmatched = 0
        self._warned_unmatched: set[tuple[str, str]] = set()
        self._connection = None
        self._url: str | None = None
        self._connect_options: dict[str, Any] = {}
        self._start_lock = asyncio.Lock()
        self._publisher: AbstractChannel | None = None
        self._publisher_lock = asyncio.Lock()
        self._declared_on: AbstractConnection | None = None
        self._topology_lock = asyncio.Lock()
        self._groups: dict[str, list[RabbitMQSubscription]] = {}
        self._names: dict[str, str] = {}

    # -- names ---------------------------------------------------------------

    @property
    def exchange(self) -> str:
        """The durable topic exchange every message is published to (the prefix)."""
        return self.channel_prefix

    @property
    def dead_letter_exchange(self) -> str:
        """The fanout exchange dead letters go through: ``{prefix}.dead-letter``."""
        return f"{self.channel_prefix}.dead-letter"

    @property
    def dead_letter_queue(self) -> str:
        """The durable queue that keeps dead letters: ``{prefix}.dead-letter``."""
        return f"{self.channel_prefix}.dead-letter"

    @property
    def unroutable_exchange(self) -> str:
        """The exchange's alternate exchange: ``{prefix}.unroutable``. It returns
        a mandatory publish and passes any other on to the queue ``{prefix}.unroutable``."""
        return f"{self.channel_prefix}.unroutable"

    @property
    def unroutable_queue(self) -> str:
        """The durable queue that keeps messages no queue was bound for: ``{prefix}.unroutable``."""
        return f"{self.channel_prefix}.unroutable"

    @property
    def _kept_exchange(self) -> str:
        """The fanout exchange into `unroutable_queue`, the alternate exchange's own."""
        return f"{self.channel_prefix}.unroutable.keep"

    def group_queue(self, group: str) -> str:
        """The durable quorum queue of consumer group `group`: ``{prefix}.{group}``."""
        return f"{self.channel_prefix}.{group}"

    @property
    def connection(self) -> AbstractRobustConnection:
        """The aio-pika connection (from `from_url`: once started)."""
        if self._connection is None:
            raise RuntimeError(
                "this RabbitMQMessageBroker connects on start(); await broker.start() first"
            )
        return self._connection

    @staticmethod
    def routing_key(message: Message) -> str:
        """The routing key of `message`: ``{message_type}.{message_name}``."""
        return f"{message.message_type}.{message.message_name}"

    def _channel_name(self, routing_key: str) -> str:
        """The logical channel of a routing key on this broker's exchange."""
        name = self._names.get(routing_key)
        if name is None:
            kind, dot, rest = routing_key.partition(".")
            name = (
                f"{self.channel_prefix}:{kind}:{rest}" if dot else f"{self.channel_prefix}:{kind}"
            )
            if len(self._names) >= 4096:
                self._names.clear()
            self._names[routing_key] = name
        return name

    def _group_queue_arguments(self) -> dict[str, Any]:
        return {"x-queue-type": "quorum", "x-dead-letter-exchange": self.dead_letter_exchange}

    # -- connection ----------------------------------------------------------

    async def _open(self) -> None:
        async with self._start_lock:
            if self._connection is None:
                assert self._url is not None
                where = f"connecting to RabbitMQ at {_safe(self._url)}"
                with _ERRORS.mapped(where, BrokerUnavailableError):
                    self._connection = await aio_pika.connect_robust(
                        self._url, timeout=self.connect_timeout, **self._connect_options
                    )
        with _ERRORS.mapped("starting the RabbitMQ broker", BrokerUnavailableError):
            async with asyncio.timeout(self.connect_timeout):
                await self._declare_topology(await self._underlay())

    async def _underlay(self) -> AbstractConnection:
        """aiormq's connection under the robust one, once it is connected
        (waiting while it reconnects; callers bound the wait)."""
        if self._connection is None:
            await self.start()
        connection = self.connection
        while True:
            if connection.is_closed:
                raise BrokerUnavailableError(
                    "the RabbitMQ connection was closed by its owner, and a closed connection "
                    "never comes back; stop the consumers before closing the connection, or "
                    "give the broker a new one"
                )
            transport = connection.transport
            if connection.connected.is_set():
                if transport is not None and not transport.connection.is_closed:
                    return transport.connection
                await asyncio.sleep(0.01)  # the lost connection is still being noticed
            else:
                await connection.connected.wait()

    async def _declare_topology(self, connection: AbstractConnection) -> None:
        """Declare the exchange with its alternate exchange, the unroutable and
        the dead-letter exchanges and queues, once per connection."""
        if self._declared_on is connection:
            return
        async with self._topology_lock:
            if self._declared_on is connection:
                return
            channel = await connection.channel(publisher_confirms=False)
            try:
                await channel.exchange_declare(
                    self._kept_exchange, exchange_type="fanout", durable=True
                )
                await channel.queue_declare(
                    self.unroutable_queue,
                    durable=True,
                    arguments={"x-max-length": self.dead_letter_limit},
                )
                await channel.queue_bind(self.unroutable_queue, self._kept_exchange, "")
                await channel.exchange_declare(
                    self.unroutable_exchange,
                    exchange_type="direct",
                    durable=True,
                    arguments={"alternate-exchange": self._kept_exchange},
                )
                # Bound to itself: routed, to no queue, so RabbitMQ returns it.
                await channel.exchange_bind(
                    self.unroutable_exchange, self.unroutable_exchange, _MANDATORY_KEY
                )
                try:
                    await channel.exchange_declare(
                        self.exchange,
                        exchange_type="topic",
                        durable=True,
                        arguments={"alternate-exchange": self.unroutable_exchange},
                    )
                except amqp_errors.ChannelPreconditionFailed as exc:
                    if "alternate-exchange" not in str(exc):
                        raise
                    logger.info(
                        "exchange %r was declared without the alternate exchange %r (by an "
                        "earlier version or another program), and RabbitMQ cannot change that "
                        "by declaring it again: it is used as it is. Unless a policy gives it "
                        "one, a message no queue is bound for raises PublishError; the policy: %s",
                        self.exchange,
                        self.unroutable_exchange,
                        self._alternate_exchange_policy(),
                    )
                    channel = await connection.channel(publisher_confirms=False)
                await channel.exchange_declare(
                    self.dead_letter_exchange, exchange_type="fanout", durable=True
                )
                await channel.queue_declare(
                    self.dead_letter_queue,
                    durable=True,
                    arguments={"x-max-length": self.dead_letter_limit},
                )
                await channel.queue_bind(self.dead_letter_queue, self.dead_letter_exchange, "")
            finally:
                await _close_quietly(channel)
            self._declared_on = connection

    def _alternate_exchange_policy(self) -> str:
        """The command giving an exchange declared without one its alternate exchange."""
        definition = json.dumps(
            {"alternate-exchange": self.unroutable_exchange}, separators=(",", ":")
        )
        return (
            f"rabbitmqctl set_policy {self.exchange}-unroutable "
            f"'^{_regex_literal(self.exchange)}$' '{definition}' "
            "--apply-to exchanges"
        )

    async def _publish_channel(self) -> AbstractChannel:
        channel = self._publisher
        if channel is not None and not channel.is_closed and self._declared_on is not None:
            return channel
        async with self._publisher_lock:
            connection = await self._underlay()
            await self._declare_topology(connection)  # again, after something was found gone
            channel = self._publisher
            if channel is None or channel.is_closed:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                self._publisher = channel
            return channel

    # -- publish -------------------------------------------------------------

    def _outgoing(self, message: Message) -> _Outgoing:
        key = self.routing_key(message)
        if len(key.encode()) > 255:
            raise PublishError(
                f"the routing key of {quote(message.message_name, 100)} is over 255 bytes, "
                "RabbitMQ's limit; give the event a shorter name"
            )
        headers: FieldTable | None = dict(message.headers) if message.headers else None
        if self.mandatory:
            headers = {**(headers or {}), "BCC": [_MANDATORY_KEY]}
        return _Outgoing(
            key,
            self.encode(message),
            spec.Basic.Properties(
                content_type="application/json",
                delivery_mode=2,
                message_id=str(message.message_id),
                message_type=message.message_name,
                headers=headers,
            ),
            f"{message.message_name} ({message.message_id})",
        )

    async def send_message(self, message: Message) -> None:
        """Publish one envelope and wait for RabbitMQ's confirm."""
        await self._publish(
            self.exchange, [self._outgoing(message)], redeclare_on_return=not self.mandatory
        )

    async def send_messages(self, messages: Sequence[Message]) -> None:
        """Publish a batch concurrently, in order, and wait for every confirm.

        Raises PublishError when RabbitMQ refuses a message (nack), returns
        it (no queue bound for it, with `mandatory`), or does not confirm it
        within `publish_timeout`. A publish caught by a lost connection is sent
        again once the connection is back, so RabbitMQ may get it twice (with
        the same message id).
        """
        if messages:
            outgoing = [self._outgoing(message) for message in messages]
            await self._publish(self.exchange, outgoing, redeclare_on_return=not self.mandatory)

    async def _publish(
        self, exchange: str, outgoing: list[_Outgoing], *, redeclare_on_return: bool
    ) -> None:
        """Publish mandatory, confirmed: a return means no queue took the message
        (and, on the main exchange, no alternate exchange either)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        attempt = 0
        while True:
            attempt += 1
            results: list[BaseException | None]
            try:
                async with asyncio.timeout_at(deadline):
                    channel = await self._publish_channel()
                    if len(outgoing) == 1:
                        results = [await _publish_one(channel, exchange, outgoing[0])]
                    else:
                        results = list(
                            await asyncio.gather(
                                *(_publish_one(channel, exchange, o) for o in outgoing)
                            )
                        )
            except TimeoutError as exc:
                raise PublishError(
                    f"RabbitMQ did not confirm {_labels(outgoing)} within {self.publish_timeout}s "
                    f"(attempt {attempt}; is the connection down?); they may or may not have "
                    "been delivered"
                ) from exc
            except BrokerUnavailableError as exc:
                raise PublishError(f"could not publish {_labels(outgoing)}: {exc}") from exc
            except _CONNECTION_LOST as exc:
                _raise_if_cancelled(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                results = [exc] * len(outgoing)
            failed = [(o, e) for o, e in zip(outgoing, results, strict=True) if e is not None]
            if not failed:
                return
            retry: list[_Outgoing] = []
            for item, error in failed:
                if isinstance(error, amqp_errors.PublishError):
                    if redeclare_on_return and attempt == 1:
                        self._declared_on = None  # the queue behind the exchange is gone
                        retry.append(item)
                        continue
                    raise self._returned(exchange, item) from error
                if isinstance(error, amqp_errors.DeliveryError):
                    raise PublishError(
                        f"RabbitMQ refused {quote(item.label, 200)} (nack): a queue may be at its "
                        "length limit, or the server low on resources; try again later"
                    ) from error
                if isinstance(error, amqp_errors.ChannelPreconditionFailed) and "size" in str(
                    error
                ):
                    raise MessageTooLargeError(
                        f"RabbitMQ refused {quote(item.label, 200)}: {quote(str(error), 300)}; "
                        "send less data per event or raise the server's max_message_size"
                    ) from error
                refused = _refusal(f"publishing to exchange {exchange!r}", error)
                if isinstance(refused, CredentialError):
                    raise refused from error
                if refused is not None:
                    raise PublishError(str(refused)) from error
                if isinstance(error, amqp_errors.ChannelNotFoundEntity):
                    self._declared_on = None  # the exchange was deleted: declare it again
                elif not isinstance(error, _CONNECTION_LOST):
                    raise PublishError(
                        f"could not publish {quote(item.label, 200)}: {quote(repr(error))}"
                    ) from error
                retry.append(item)
            if loop.time() >= deadline:
                raise PublishError(
                    f"could not publish {_labels(retry)} to RabbitMQ within "
                    f"{self.publish_timeout}s: {quote(repr(failed[0][1]))}"
                ) from failed[0][1]
            logger.warning(
                "publishing %s was cut off (%s); publishing again (attempt %d)",
                _labels(retry),
                quote(repr(failed[0][1]), 300),
                attempt + 1,
            )
            await asyncio.sleep(min(RECONNECT.delay(attempt), max(0.0, deadline - loop.time())))
            outgoing = retry

    def _returned(self, exchange: str, item: _Outgoing) -> PublishError:
        """The error for a message RabbitMQ returned: no queue took it."""
        returned = (
            f"RabbitMQ returned {quote(item.label, 200)}: no queue is bound to exchange "
            f"{exchange!r} for routing key {item.routing_key!r}"
        )
        if exchange != self.exchange:
            return PublishError(
                f"{returned}, even after declaring {self.dead_letter_queue!r} again; "
                "check what deletes it"
            )
        if self.mandatory:
            return PublishError(
                f"{returned} (mandatory=True). Start a consumer of it first (its group's queue "
                "keeps messages from then on), or publish with mandatory=False, the default, to "
                f"keep such messages in the queue {self.unroutable_queue!r}"
            )
        return PublishError(
            f"{returned}, and the exchange has no alternate exchange to keep it: it was "
            "declared without one (by an earlier version or another program), which RabbitMQ "
            "cannot change by declaring it again. Add one with a policy: "
            f"{self._alternate_exchange_policy()}; or start a consumer of it first"
        )

    async def _publish_dead_letter(
        self, record: DeadLetterRecord, original: DeliveredMessage
    ) -> None:
        properties = original.header.properties
        headers: dict[str, Any] = {
            k: v for k, v in (properties.headers or {}).items() if not k.startswith("x-")
        }
        for name, value in record.fields().items():
            if name != "data":
                headers[f"{DEAD_LETTER_HEADER}{name}"] = value
        key = original.routing_key or ""
        outgoing = _Outgoing(
            key,
            record.data,
            spec.Basic.Properties(
                content_type=properties.content_type,
                delivery_mode=2,
                message_id=properties.message_id,
                message_type=properties.message_type,
                headers=headers,
            ),
            f"the dead letter of {quote(str(properties.message_id), 100)} from {record.channel}",
        )
        await self._publish(self.dead_letter_exchange, [outgoing], redeclare_on_return=True)

    # -- subscribe -----------------------------------------------------------

    async def subscribe(self, pattern: str, *, group: str | None = None) -> RabbitMQSubscription:
        """Consume the messages whose channel matches `pattern`: from the
        group's quorum queue ``{prefix}.{group}`` (declared and bound to the
        pattern's `binding_key`), or from an exclusive queue of its own
        without a group. Returns once the queue is bound: a group's queue keeps
        what it is sent from then on, and is consumed from the first read."""
        if group is not None:
            if not group or group in ("dead-letter", "unroutable"):
                raise ValueError(
                    f"group {group!r} cannot name a queue: it must be non-empty and neither "
                    "'dead-letter' nor 'unroutable', which name the broker's own queues"
                )
            if len(self.group_queue(group).encode()) > 255:
                raise ValueError(
                    f"group {quote(group, 100)} is too long: the queue name "
                    "'{prefix}.{group}' must be at most 255 bytes"
                )
        key = binding_key(pattern, self.channel_prefix)
        subscription = RabbitMQSubscription(self, pattern, group, key)
        if group is not None:
            # A member from now: what another member receives for it waits for it.
            self._groups.setdefault(group, []).append(subscription)
        try:
            with _ERRORS.mapped(
                f"subscribing to {quote(pattern, 200)} on RabbitMQ", BrokerUnavailableError
            ):
                await subscription.open()
        except BaseException:
            await subscription.close()
            raise
        return subscription

    def _member_for(
        self, receiver: RabbitMQSubscription, channel: str
    ) -> RabbitMQSubscription | None:
        """Another live subscription of `receiver`'s group whose glob matches."""
        if receiver.group is None:
            return None
        for member in self._groups.get(receiver.group, ()):
            if member is not receiver and not member.closed and member.matches(channel):
                return member
        return None

    def _bound_for(self, group: str, routing_key: str) -> bool:
        """Whether a live subscription of `group` here bound a key matching `routing_key`."""
        return any(
            _covers(member.binding_key, routing_key)
            for member in self._groups.get(group, ())
            if not member.closed
        )

    def _warn_unmatched(self, group: str, routing_key: str) -> None:
        if (group, routing_key) in self._warned_unmatched:
            return
        if len(self._warned_unmatched) >= 1024:  # bounded: routing keys come from producers
            self._warned_unmatched.clear()
        self._warned_unmatched.add((group, routing_key))
        logger.warning(
            "%s; its deliveries are acknowledged unhandled (counted in unmatched)",
            self._unmatched_description(group, routing_key),
        )

    def _unmatched_description(self, group: str, routing_key: str) -> str:
        members = [m for m in self._groups.get(group, ()) if not m.closed]
        patterns = ", ".join(m.pattern for m in members) or "nothing"
        keys = ", ".join(sorted({m.binding_key for m in members})) or "nothing"
        return quote(
            f"routing key {routing_key!r} reached queue {self.group_queue(group)!r} through a "
            f"binding that none of group {group!r}'s subscriptions in this process made "
            f"(patterns: {patterns}; bound with: {keys}): a pattern dropped from the group, or "
            "one that only other members subscribe. If no member subscribes it any more, "
            "unbind it from the queue (see 'Groups and their patterns' in the RabbitMQ docs)"
        )

    def _leave(self, subscription: RabbitMQSubscription) -> None:
        members = self._groups.get(subscription.group or "")
        if members is not None and subscription in members:
            members.remove(subscription)
            if not members:
                del self._groups[subscription.group or ""]

    # -- dead letters --------------------------------------------------------

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetterRecord]:
        """Up to `limit` (default `dead_letter_limit`) records of the queue
        ``{prefix}.dead-letter``, oldest first. They are read and put back,
        so they stay in the queue, in their order.

        ```python
        for record in await broker.dead_letters():
            print(record.reason, record.description, record.size)
        ```
        """
        return await self._read_back(self.dead_letter_queue, limit, self._record)

    async def unroutable(self, *, limit: int | None = None) -> list[DeadLetterRecord]:
        """Up to `limit` (default `dead_letter_limit`) records, reason
        "unroutable", of the messages no queue was bound for, oldest first;
        they stay in the queue ``{prefix}.unroutable``, as `dead_letters()` leaves its own."""
        return await self._read_back(self.unroutable_queue, limit, self._unroutable_record)

    async def unroutable_count(self) -> int:
        """How many messages the queue ``{prefix}.unroutable`` holds."""
        async with self._reading(self.unroutable_queue) as channel:
            declared = await channel.queue_declare(self.unroutable_queue, passive=True)
        return declared.message_count or 0

    @contextlib.asynccontextmanager
    async def _reading(self, queue: str) -> AsyncIterator[AbstractChannel]:
        """A channel of its own to read `queue` on; closing it puts back every
        message read and not acknowledged, in its place."""
        with _ERRORS.mapped(f"reading {queue}", BrokerUnavailableError):
            async with asyncio.timeout(self.connect_timeout):
                connection = await self._underlay()
                await self._declare_topology(connection)
                channel = await connection.channel(publisher_confirms=False)
            try:
                yield channel
            finally:
                await _close_quietly(channel)

    async def _read_back(
        self,
        queue: str,
        limit: int | None,
        record: Callable[[DeliveredMessage], DeadLetterRecord],
    ) -> list[DeadLetterRecord]:
        wanted = self.dead_letter_limit if limit is None else limit
        records: list[DeadLetterRecord] = []
        async with self._reading(queue) as channel:
            while len(records) < wanted:
                message = await channel.basic_get(queue, no_ack=False)
                if not isinstance(message.delivery, spec.Basic.GetOk):
                    break
                records.append(record(message))
        return records

    def _unroutable_record(self, message: DeliveredMessage) -> DeadLetterRecord:
        key = message.routing_key or ""
        return DeadLetterRecord.of(
            self._channel_name(key),
            message.body,
            UNROUTABLE,
            f"published to exchange {self.exchange!r} with routing key {quote(key, 300)!r} "
            "while no queue was bound for it",
        )

    def _record(self, message: DeliveredMessage) -> DeadLetterRecord:
        headers = message.header.properties.headers or {}
        ours = {
            name[len(DEAD_LETTER_HEADER) :]: value
            for name, value in headers.items()
            if name.startswith(DEAD_LETTER_HEADER)
        }
        if ours:
            return DeadLetterRecord.from_fields({**ours, "data": message.body})
        # Dead-lettered by RabbitMQ itself (a delivery limit set by policy,
        # a message TTL): x-death says why.
        deaths = headers.get("x-death")
        death = deaths[0] if isinstance(deaths, list) and deaths else {}
        reason = str(death.get("reason", "unknown")) if isinstance(death, dict) else "unknown"
        queue = death.get("queue", "?") if isinstance(death, dict) else "?"
        previous = headers.get("x-delivery-count")
        return DeadLetterRecord.of(
            self._channel_name(message.routing_key or ""),
            message.body,
            reason,
            f"dead-lettered by RabbitMQ from queue {quote(str(queue), 200)}: {reason}",
            previous + 1 if isinstance(previous, int) else 1,
        )

    # -- lifecycle -----------------------------------------------------------

    async def _close(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await _close_quietly(publisher)

    async def _close_client(self) -> None:
        connection, self._connection = self._connection, None
        self._declared_on = None
        if connection is not None:
            await connection.close()


async def _publish_one(
    channel: AbstractChannel, exchange: str, outgoing: _Outgoing
) -> BaseException | None:
    """Publish mandatory and await the confirm; the error instead of raising it."""
    try:
        await channel.basic_publish(
            outgoing.body,
            exchange=exchange,
            routing_key=outgoing.routing_key,
            properties=outgoing.properties,
            mandatory=True,
        )
    except (*_CONNECTION_LOST, amqp_errors.AMQPError) as exc:
        _raise_if_cancelled(exc)
        return exc  # a CancelledError here: the channel closed under it
    return None


def _labels(outgoing: Sequence[_Outgoing]) -> str:
    return quote(", ".join(o.label for o in outgoing), 300)


def _safe(url: str) -> str:
    parsed = URL(url)
    return str(parsed.with_password("***") if parsed.password else parsed)
