"""RabbitMQ: a subscription's consumer, its deliveries and their settlement.

Each subscription consumes its queue on a channel of its own, and settles
each delivery on the channel that received it; after a lost channel or
connection it opens a new channel and declares, binds and consumes again.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, ClassVar

from aiormq import exceptions as amqp_errors
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp import commands as spec

from brokers.rabbitmq._errors import (
    LinkLost,
    close_quietly,
    raise_if_cancelled,
    refusal,
    settle,
)
from mediator.transport import (
    CredentialError,
    DeadLetterRecord,
    DeliveryBase,
    GlobPattern,
    MessageTooLargeError,
    PublishError,
    ReconnectingSubscription,
    SubscriptionLostError,
    TransportError,
    quote,
    replay_count_of,
)

if TYPE_CHECKING:
    from brokers.rabbitmq._broker import RabbitMQMessageBroker

__all__ = ["RabbitMQDelivery", "RabbitMQSubscription", "ReleaseCounts"]

logger = logging.getLogger("mediator.brokers.rabbitmq")


class RabbitMQDelivery(DeliveryBase):
    """One message delivered on a subscription's channel, settled on that
    channel: ack, nack with requeue (release), or a confirmed copy to the
    dead-letter exchange and then ack."""

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
        error = await settle(self._channel.basic_ack(self.delivery_tag))
        if error is not None:
            self._unsettled("acknowledge", error)

    async def _release(self) -> None:
        self._subscription._remember_release(self)
        error = await settle(self._channel.basic_nack(self.delivery_tag, requeue=True))
        if error is not None:
            self._unsettled("release", error)

    async def _dead_letter(self, reason: str, description: str) -> None:
        if self._channel.is_closed:
            self._unsettled("dead-letter", LinkLost("its channel is closed"))
            return
        record = DeadLetterRecord.of(
            self.channel,
            self.data,
            reason,
            description,
            self.delivery_count,
            replay_count=replay_count_of(self.message.header.properties.headers),
        )
        owner = self._subscription._owner
        try:
            await owner._publish_dead_letter(record, self.message)
        except (TransportError, MessageTooLargeError) as exc:
            raise_if_cancelled(exc)
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


class ReleaseCounts:
    """The delivery count of each message released from an exclusive queue,
    kept until it is delivered again: a classic queue counts no deliveries."""

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._counts: OrderedDict[str, int] = OrderedDict()

    def released(self, message_id: str | None, body: bytes, delivery_count: int) -> None:
        """Remember a release (the oldest are forgotten past the limit)."""
        self._counts[_release_key(message_id, body)] = delivery_count
        if len(self._counts) > self._limit:
            self._counts.popitem(last=False)

    def redelivered(self, message_id: str | None, body: bytes) -> int:
        """The delivery count of a redelivery: one more than at its release."""
        return self._counts.pop(_release_key(message_id, body), 1) + 1


def _release_key(message_id: str | None, body: bytes) -> str:
    return message_id if message_id else hashlib.sha256(body).hexdigest()


class RabbitMQSubscription(ReconnectingSubscription[RabbitMQDelivery]):
    """A consumer on a queue of its own channel (prefetch = the broker's
    `prefetch`): the group's quorum queue, consumed from the first read, or
    an exclusive one without a group. The queue's depth (`lag`) is measured
    every `lag_interval` on a short-lived channel."""

    logger = logger
    transient: ClassVar[tuple[type[BaseException], ...]] = (
        ConnectionError,
        OSError,
        TimeoutError,
        amqp_errors.AMQPError,
        amqp_errors.ChannelInvalidStateError,
    )
    lag_interval: ClassVar[float] = 5.0
    """Seconds between two measures of `lag`."""

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
        self._broken: LinkLost | None = None
        self._released = ReleaseCounts()
        self.lag: int | None = None
        """Messages ready in the queue, not sent to a consumer yet, as last
        measured; None until then, or when the last measure failed."""
        self._measurer: asyncio.Task[None] | None = None
        self._measure: asyncio.Future[int | None] | None = None

    def matches(self, channel: str) -> bool:
        """Whether `channel` matches this subscription's glob."""
        return self._glob.matches(channel)

    async def _connect(self) -> None:
        owner = self._owner
        async with asyncio.timeout(owner.connect_timeout):
            connection = await owner._ready()
            channel = await connection.channel(publisher_confirms=False)
        try:
            await channel.basic_qos(prefetch_count=owner.prefetch)
            if self.group is None:
                declared = await channel.queue_declare("", exclusive=True, auto_delete=True)
                queue = declared.queue or ""
            else:
                queue = owner.group_queue(self.group)
                await channel.queue_declare(
                    queue, durable=True, arguments=owner._layout.group_queue_arguments()
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
            await close_quietly(channel)
            raise
        if self._measurer is None and not self.closed:
            self._measurer = asyncio.create_task(self._measure_lag(), name=f"lag of {self!r}")

    async def _measure_lag(self) -> None:
        """Set `lag` every `lag_interval`, while the subscription lives."""
        while not self.closed:
            await asyncio.sleep(self.lag_interval)
            # Shielded: a channel open cancelled half-way can leave aiormq's
            # connection stuck; `_closing` waits for the measure instead.
            self._measure = asyncio.ensure_future(self._queue_depth())
            self.lag = await asyncio.shield(self._measure)

    async def _queue_depth(self) -> int | None:
        """The messages ready in the queue, by a passive ``queue.declare`` on
        a channel of its own (a failure there never closes the consuming
        one); None while the link is down or the measure fails."""
        channel, queue = self._channel, self.queue
        if channel is None or channel.is_closed or not queue:
            return None
        probe: AbstractChannel | None = None
        try:
            async with asyncio.timeout(self._owner.connect_timeout):
                probe = await channel.connection.channel(publisher_confirms=False)
                declared = await probe.queue_declare(queue, passive=True)
        except Exception as exc:
            logger.debug("%r could not measure its lag: %s", self, quote(repr(exc), 300))
            return None
        finally:
            if probe is not None:
                await close_quietly(probe)
        return declared.message_count

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
        channel = owner._layout.channel(routing_key)
        target = owner._groups.member_for(self, channel)
        count = self._delivery_count(message, bool(deliver.redelivered))
        delivery = RabbitMQDelivery(self, message, deliver.delivery_tag or 0, channel, count)
        if target is not None:
            target._waiting.append(delivery)
            target._wakeup.set()
        else:
            logger.debug("acknowledging a delivery from %s: matches no subscription", channel)
            if await settle(message.channel.basic_ack(delivery.delivery_tag)) is None:
                owner.unmatched += 1
            if self.group is not None and not owner._groups.bound_for(self.group, routing_key):
                # A binding none of the group's subscriptions here made brought
                # it: a pattern dropped from the group, or one only other
                # members subscribe. Acknowledged and counted as any unmatched
                # delivery, and said (once per routing key): it is not handled.
                owner._groups.warn_unmatched(self.group, routing_key)

    def _delivery_count(self, message: DeliveredMessage, redelivered: bool) -> int:
        if not redelivered:
            return 1
        if self.group is not None:
            # Quorum queues count earlier deliveries in x-delivery-count.
            previous = (message.header.properties.headers or {}).get("x-delivery-count")
            return previous + 1 if isinstance(previous, int) and previous >= 0 else 2
        return self._released.redelivered(message.header.properties.message_id, message.body)

    def _remember_release(self, delivery: RabbitMQDelivery) -> None:
        if self.group is None:
            message = delivery.message
            self._released.released(
                message.header.properties.message_id, message.body, delivery.delivery_count
            )

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
        self._broken = LinkLost(f"the channel of {self!r} closed: {quote(repr(error), 300)}")
        self._wakeup.set()

    def _cancelled(self, channel: AbstractChannel, frame: spec.Basic.Cancel) -> None:
        if channel is not self._channel:
            return
        self._broken = LinkLost(
            f"RabbitMQ cancelled the consumer of {self!r} on queue {self.queue!r} "
            "(was the queue deleted?)"
        )
        self._wakeup.set()

    async def _disconnect(self) -> None:
        channel, self._channel = self._channel, None
        self._broken = None
        if channel is not None:
            await close_quietly(channel)

    def _fatal(self, error: BaseException) -> BaseException | None:
        connection = self._owner._connection
        if connection is not None and connection.is_closed:
            return SubscriptionLostError(
                f"{self!r} lost its RabbitMQ connection for good: it was closed by its owner. "
                "Stop the consumers before closing the connection"
            )
        refused = refusal(f"subscribing {self!r}", error)
        if refused is None or isinstance(refused, CredentialError):
            return refused
        return SubscriptionLostError(str(refused))

    async def _closing(self) -> None:
        if self._measurer is not None:
            self._measurer.cancel()
            await asyncio.gather(
                self._measurer, *filter(None, [self._measure]), return_exceptions=True
            )
        self._owner._groups.leave(self)
        # What other members handed over and nobody took goes back to the
        # queue now; what its own channel holds goes back as that closes.
        waiting = self._waiting
        while waiting:
            delivery = waiting.popleft()
            if delivery._channel is not self._channel and not delivery._channel.is_closed:
                await settle(delivery._channel.basic_nack(delivery.delivery_tag, requeue=True))
        self._wakeup.set()
