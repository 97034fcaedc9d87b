"""NATS: a subscription's pull consumer, its deliveries and their settlement.

Each subscription pulls from a JetStream pull consumer: the durable one
of its group, shared by every member and pattern of the group (a message
pulled for another subscription of the group here is handed to it), or an
ephemeral one of its own. A delivery is acknowledged after its handlers,
released with a ``nak`` that JetStream holds back for the redelivery
backoff, and dead-lettered with a copy to ``{prefix}.dead-letter`` and a
``term``; the deliveries not settled yet are kept alive with in-progress
acks.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, ClassVar

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

from brokers.nats._errors import ERRORS, TRANSIENT, LinkLost, raise_if_cancelled
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
    from nats.js.client import JetStreamContext

    from brokers.nats._broker import NatsMessageBroker

__all__ = ["NatsDelivery", "NatsSubscription"]

logger = logging.getLogger("mediator.brokers.nats")


async def _quietly(what: str, command: Awaitable[None], delivery: NatsDelivery) -> None:
    """Send a settlement; a failure is logged (JetStream redelivers the
    message after its ack wait), a cancellation of the running task raised."""
    try:
        await command
    except Exception as exc:
        _unsettled(what, exc, delivery)


def _unsettled(what: str, error: Exception, delivery: NatsDelivery) -> None:
    raise_if_cancelled(error)
    logger.warning(
        "could not %s message %s from %s (%s); JetStream delivers it again after its ack wait",
        what,
        delivery.message_id,
        quote(delivery.channel, 200),
        quote(repr(error), 200),
    )


def _position(reply: str) -> tuple[int, int]:
    """(delivery count, stream sequence) of a JetStream message, read from
    its reply subject: ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream
    seq>...``, or with ``<domain>.<account hash>`` after ``$JS.ACK``."""
    tokens = reply.split(".")
    at = 4 if len(tokens) == 9 else 6
    try:
        return int(tokens[at]), int(tokens[at + 1])
    except (IndexError, ValueError):
        return 1, 0


class NatsDelivery(DeliveryBase):
    """One JetStream message fetched by a subscription: ``ack``, ``nak``
    with a delay (release), or a copy to ``{prefix}.dead-letter`` and
    ``term``."""

    __slots__ = ("_subscription", "message", "sequence")

    holds_back_releases: ClassVar[bool] = True  # nak(delay=...): JetStream waits

    def __init__(
        self,
        subscription: NatsSubscription,
        message: Msg,
        channel: str,
        delivery_count: int,
        sequence: int,
    ) -> None:
        super().__init__(channel, message.data, delivery_count)
        self.message = message
        """nats-py's message: its subject, headers and metadata."""
        self.sequence = sequence
        """Its sequence number in the stream."""
        self._subscription = subscription

    @property
    def message_id(self) -> str:
        """Its ``Nats-Msg-Id`` (the envelope's message id), for log lines."""
        headers = self.message.headers or {}
        return quote(headers.get("Nats-Msg-Id", f"#{self.sequence}"), 100)

    async def _ack(self) -> None:
        self._subscription._outstanding.discard(self)
        try:
            await self.message.ack()  # no wrapper: it runs for every message
        except Exception as exc:
            _unsettled("acknowledge", exc, self)

    async def _release(self) -> None:
        self._subscription._outstanding.discard(self)
        delay = self._subscription._owner.redelivery_backoff.delay(self.delivery_count)
        await _quietly("release", self.message.nak(delay=delay), self)

    async def _dead_letter(self, reason: str, description: str) -> None:
        owner = self._subscription._owner
        record = DeadLetterRecord.of(
            self.channel,
            self.data,
            reason,
            description,
            self.delivery_count,
            replay_count=replay_count_of(self.message.headers),
        )
        try:
            await owner._publish_dead_letter(record, self.message)
        except (TransportError, MessageTooLargeError) as exc:
            raise_if_cancelled(exc)
            # Unsettled: whoever settles it releases it, after a wait of its choosing.
            raise PublishError(
                f"could not dead-letter message {self.message_id} from "
                f"{quote(self.channel, 200)} to {owner.dead_letter_subject!r}: "
                f"{quote(str(exc), 500)}; it is not settled: release it to try again later"
            ) from exc
        self._subscription._outstanding.discard(self)
        await _quietly("terminate", self.message.term(), self)


class NatsSubscription(ReconnectingSubscription[NatsDelivery]):
    """A pull consumer: its group's, filtered by ``{prefix}.*.>``, or an
    ephemeral one filtered by the narrowest subject filter of its glob
    (`filter_subject`); the globs are applied in process. The deliveries
    handed to it and not settled get an in-progress ack every third of the
    ack wait."""

    logger = logger
    transient: ClassVar[tuple[type[BaseException], ...]] = TRANSIENT

    def __init__(self, broker: NatsMessageBroker, pattern: str, group: str | None) -> None:
        super().__init__(pattern, group, broker=broker)
        self._owner = broker
        layout = broker._layout
        self.filter_subject = layout.filter_of(pattern) if group is None else layout.widest_filter
        """The JetStream consumer's filter subject (see `subject_filter`)."""
        self.consumer: str | None = None if group is None else layout.durable(group)
        """The consumer's name: the group's durable one, or the server's
        name for an ephemeral one once connected."""
        if group is not None:
            broker._groups.join(self, group)
        self._glob = GlobPattern(pattern)
        self._inbox: Subscription | None = None
        self._next: str = ""
        self._requested = 0
        self._deadline = 0.0
        self._idle = False
        self._broken: LinkLost | None = None
        self._wakeup = asyncio.Event()
        self._received = 0
        self._buffer: deque[NatsDelivery] = deque()
        self._outstanding: set[NatsDelivery] = set()
        self._last_sequence: int | None = None
        self._progress: asyncio.Task[None] | None = None
        self.ack_wait = broker.ack_wait
        """Seconds the consumer waits for an ack, as JetStream says once connected."""

    def matches(self, channel: str) -> bool:
        """Whether `channel` matches this subscription's glob."""
        return self._glob.matches(channel)

    # -- the link ------------------------------------------------------------

    async def _connect(self) -> None:
        owner = self._owner
        async with asyncio.timeout(owner.timeout):
            js = await owner._jetstream()
            made_stream = await owner._ensure_stream(js)
            name = self.consumer
            info = None if name is None else await self._info(js, name)
            if info is None:
                info = await self._create(js, made_stream)
            name = info.name
            # The consumer's own ack wait (one made before may have another).
            self.ack_wait = info.config.ack_wait or owner.ack_wait
            client = owner.client
            inbox = client.new_inbox()
            self._inbox = await client.subscribe(
                inbox, cb=self._on_message, pending_msgs_limit=owner.prefetch * 8
            )
        self._next = f"{getattr(js, '_prefix', '$JS.API')}.CONSUMER.MSG.NEXT.{owner.stream}.{name}"
        self._requested, self._idle, self._broken = 0, False, None
        self.consumer = name
        if self._progress is None and not self.closed:
            self._progress = asyncio.create_task(
                self._keep_in_progress(), name=f"in-progress acks of {self!r}"
            )

    async def _info(self, js: JetStreamContext, name: str) -> api.ConsumerInfo | None:
        try:
            info: api.ConsumerInfo = await js.consumer_info(self._owner.stream, name)
        except nats.js.errors.NotFoundError:
            return None
        return info

    async def _create(self, js: JetStreamContext, made_stream: bool) -> api.ConsumerInfo:
        """Add the consumer: from where this subscription stopped reading
        when it read before (a consumer deleted under it), from the first
        message of a stream just made, else new messages only (or every
        message kept, with ``start_from="beginning"`` for a group)."""
        owner = self._owner
        if self._last_sequence is not None and not made_stream:
            start: dict[str, Any] = {
                "deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE,
                "opt_start_seq": self._last_sequence + 1,
            }
        elif made_stream or (self.group is not None and owner.start_from == "beginning"):
            start = {"deliver_policy": api.DeliverPolicy.ALL}
        else:
            start = {"deliver_policy": api.DeliverPolicy.NEW}
        ephemeral = self.group is None
        name = None if ephemeral else self.consumer
        config = api.ConsumerConfig(
            name=name,
            durable_name=name,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=owner.ack_wait,
            max_deliver=-1,  # the consumer's settlement counts deliveries
            filter_subject=self.filter_subject,
            max_ack_pending=owner.max_ack_pending,
            inactive_threshold=owner.ephemeral_inactivity if ephemeral else None,
            description=f"mediator: {quote(self.pattern, 200) if ephemeral else f'group {name}'}",
            **start,
        )
        try:
            return await js.add_consumer(owner.stream, config=config)
        except nats.js.errors.BadRequestError:
            # Another member of the group made it first (with another start).
            info = None if name is None else await self._info(js, name)
            if info is None:
                raise
            return info

    async def _receive(self) -> list[NatsDelivery]:
        buffer, wakeup = self._buffer, self._wakeup
        loop = asyncio.get_running_loop()
        while True:
            wakeup.clear()
            if buffer:
                break
            if self.closed:
                return []
            if self._broken is not None:
                raise self._broken
            if self._inbox is None:
                raise LinkLost(f"{self!r} has no consumer")
            if not self._requested:
                if self._idle:
                    # The last pull brought nothing: check the consumer is
                    # still there (a pull from a deleted one goes unanswered).
                    self._idle = False
                    await self._check_consumer()
                    return []
                await self._pull_more(loop)
                continue
            left = self._deadline - loop.time()
            if left <= 0:
                self._requested, self._idle = 0, True  # no answer: lost with a link
                continue
            try:
                async with asyncio.timeout(left):
                    await wakeup.wait()
            except TimeoutError:
                pass
        # The whole batch: what is not handed out when the subscription
        # closes is given back (`_closing`).
        batch = list(buffer)
        buffer.clear()
        return batch

    async def _pull_more(self, loop: asyncio.AbstractEventLoop) -> None:
        """Ask JetStream for up to `prefetch` messages, to arrive in the
        inbox within `fetch_timeout` (then a 408 ends the request)."""
        owner = self._owner
        expires = int(owner.fetch_timeout * 1e9)
        request = b'{"batch":%d,"expires":%d}' % (owner.prefetch, expires)
        self._requested, self._received = owner.prefetch, 0
        self._deadline = loop.time() + owner.fetch_timeout + 1.0
        assert self._inbox is not None
        await owner.client.publish(self._next, request, reply=self._inbox.subject)

    def _reconnected(self) -> None:
        """The connection is back: the pull in flight died with the old one."""
        self._requested = 0
        self._wakeup.set()

    async def _on_message(self, message: Msg) -> None:
        """What the inbox receives: messages of the pull, or its status."""
        if not message.reply:
            headers = message.headers or {}
            status = headers.get("Status")
            if status == "100":
                return  # a heartbeat
            description = headers.get("Description", "")
            if status == "503" or (status == "409" and "Consumer" in description):
                self._broken = LinkLost(
                    f"JetStream ended the pull of {self!r}: {status} {description} "
                    "(was the consumer or its stream deleted?)"
                )
            elif self._received == 0:
                self._idle = True  # 404 No Messages, 408 Request Timeout, ...
            self._requested = 0
            self._wakeup.set()
            return
        self._received += 1
        if self._received >= self._requested:
            self._requested = 0
        await self._take(message)
        self._wakeup.set()

    async def _take(self, message: Msg) -> None:
        """Buffer a message of the pull as a delivery of the subscription
        whose glob matches it: this one, else another of its group here;
        acknowledge one no glob matches (the filter is wider than the globs)."""
        count, sequence = _position(message.reply)
        if self._last_sequence is None or sequence > self._last_sequence:
            self._last_sequence = sequence
        owner = self._owner
        channel = owner._layout.channel(message.subject)
        target = None if channel is None else owner._groups.member_for(self, channel)
        if target is None or channel is None:
            logger.debug("acknowledging %s: matches no subscription", message.subject)
            owner.unmatched += 1
            await message.ack()
            if self.group is not None and channel is not None:
                owner._groups.warn_unmatched(self.group, channel)
            return
        delivery = NatsDelivery(target, message, channel, count, sequence)
        target._outstanding.add(delivery)
        target._buffer.append(delivery)
        if target is not self:
            target._wakeup.set()

    async def _check_consumer(self) -> None:
        owner = self._owner
        js = await owner._jetstream()
        name = self.consumer
        assert name is not None
        try:
            async with asyncio.timeout(owner.timeout):
                await js.consumer_info(owner.stream, name)
        except nats.js.errors.NotFoundError as exc:
            owner._stream_ready = False
            raise LinkLost(
                f"the consumer {name!r} of {self!r} is gone from stream {owner.stream!r} "
                "(deleted, with its stream or alone)"
            ) from exc

    async def _keep_in_progress(self) -> None:
        """Every third of the ack wait, tell JetStream the deliveries fetched
        and not settled yet are being worked on."""
        while not self.closed:
            await asyncio.sleep(self.ack_wait / 3)
            for delivery in list(self._outstanding):
                if delivery.settled is None:
                    try:
                        await delivery.message.in_progress()
                    except Exception as exc:
                        logger.debug("in-progress ack failed: %s", quote(repr(exc), 200))

    async def _disconnect(self) -> None:
        inbox, self._inbox = self._inbox, None
        self._requested, self._broken = 0, None
        # What was fetched and not handed out comes back after its ack
        # wait, or at once if the nak below still reaches the server.
        await self._give_back_buffer()
        if inbox is not None:
            try:
                await inbox.unsubscribe()
            except Exception as exc:
                logger.debug("unsubscribing %r failed: %s", self, quote(repr(exc), 200))

    async def _give_back_buffer(self) -> None:
        buffer = self._buffer
        while buffer:
            delivery = buffer.popleft()
            self._outstanding.discard(delivery)
            delivery.settled = "release"
            try:
                await delivery.message.nak()
            except Exception as exc:
                raise_if_cancelled(exc)

    def _fatal(self, error: BaseException) -> BaseException | None:
        client = self._owner._client
        if client is not None and client.is_closed:
            return SubscriptionLostError(
                f"{self!r} lost its NATS connection for good: it is closed (by its owner, or "
                "after nats-py gave up reconnecting: max_reconnect_attempts). Stop the "
                "consumers before closing the connection"
            )
        if isinstance(error, nats.js.errors.ServiceUnavailableError):
            return None  # JetStream coming up after a restart, or a leader election
        if ERRORS.row(error) is not None:
            refused = ERRORS.lift(error, f"subscribing {self!r}", TransportError)
            return (
                refused
                if isinstance(refused, CredentialError)
                else SubscriptionLostError(str(refused))
            )
        if isinstance(error, nats.js.errors.BadRequestError):
            return SubscriptionLostError(
                f"JetStream refused the consumer of {self!r}: {error}; a consumer of that name "
                "exists with other settings (another filter or ack policy): delete it, or use "
                "another group"
            )
        return None

    async def _closing(self) -> None:
        self._owner._groups.leave(self)
        if self._progress is not None:
            self._progress.cancel()
            await asyncio.gather(self._progress, return_exceptions=True)
        # The consumer settles what it took before it closes a subscription:
        # what is unsettled now was fetched and never handed out.
        self._buffer.extend(d for d in self._outstanding if d.settled is None)
        await self._give_back_buffer()
