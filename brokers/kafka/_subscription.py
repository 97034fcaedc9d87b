"""Kafka: a subscription's consumer, its deliveries and how they are handed out.

A subscription holds one aiokafka consumer and a `PartitionState` per
partition; its fetcher (`brokers.kafka._fetcher`) reads ahead into them,
and, in a group, its rebalance listener (`brokers.kafka._rebalance`) says
which partitions are its own. Handing records out and settling them
happens here, once per record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition  # type: ignore[import-untyped]
from aiokafka import errors as aiokafka_errors

from brokers.kafka._errors import AUTH_ERRORS, MOVED_ON, TRANSIENT
from brokers.kafka._fetcher import Fetcher
from brokers.kafka._naming import channel_of_topic, topic_pattern
from brokers.kafka._partitions import AssignedPartition, Partition
from brokers.kafka._rebalance import Rebalance
from mediator.transport import (
    BrokerUnavailableError,
    CredentialError,
    DeliveryBase,
    GlobPattern,
    PublishError,
    ReconnectingSubscription,
    being_cancelled,
    quote,
)

if TYPE_CHECKING:
    from brokers.kafka._broker import KafkaMessageBroker

__all__ = ["KafkaDelivery", "KafkaSubscription"]

logger = logging.getLogger("mediator.brokers.kafka")

_new = object.__new__

_COMMIT_ON_CLOSE = 5.0
"""Seconds a closing or reconnecting subscription gives its last commit."""


class KafkaDelivery(DeliveryBase):
    """One record of one partition; settling it moves that partition's
    committable offset, never past a record that is not handled yet."""

    __slots__ = ("_partition", "_subscription", "record")

    def __init__(
        self,
        subscription: KafkaSubscription,
        partition: AssignedPartition,
        record: Any,
        delivery_count: int = 1,
    ) -> None:
        # DeliveryBase's fields set here: one is built for every record.
        # (`next_in_order` builds them without this call: the same fields.)
        self.channel = partition.channel
        self.data = record.value or b""
        self.delivery_count = delivery_count
        self.settled = None
        self.record = record
        """aiokafka's ``ConsumerRecord``: topic, partition, offset, key, headers, timestamp."""
        self._subscription = subscription
        self._partition = partition

    def next_in_order(self) -> KafkaDelivery | None:
        """The record after this one in its partition, when records are
        handled in order and it has been fetched: taken now, for the task
        that handled this one to handle next (`EventConsumer` does); None
        otherwise. Call it only once this delivery is settled."""
        subscription = self._subscription
        part = self._partition
        waiting = part.waiting
        # `PartitionState.take_next`, written out: it runs for every record.
        # Taking the next record moves it from waiting to in flight: what
        # the partition holds stays the same, so it cannot reopen here.
        if subscription.closed or part.in_flight or not waiting or not part.ordered or part.revoked:
            return None
        part.in_flight = 1
        item = waiting.popleft()
        if type(item) is KafkaDelivery:
            return item
        # KafkaDelivery(subscription, part, item), without the call of a
        # class (its __init__ in a frame of its own): one for every record.
        delivery: KafkaDelivery = _new(KafkaDelivery)
        delivery.channel = part.channel
        delivery.data = item.value or b""
        delivery.delivery_count = 1
        delivery.settled = None
        delivery.record = item
        delivery._subscription = subscription
        delivery._partition = part
        return delivery

    def ack_nowait(self) -> bool:
        # An ack only moves the partition's offsets in memory: settled here,
        # with no coroutine to build and await for every record.
        if self.settled is not None:
            self._settling("ack")  # raises, naming the first settlement
        self.settled = "ack"
        part = self._partition
        unsettled = part.unsettled
        if part.owned and not part.done and unsettled and unsettled[0] == self.record.offset:
            # `PartitionState.settle` where it is quickest (always, in order):
            # the lowest unsettled offset, with none settled above it.
            part.in_flight -= 1
            unsettled.popleft()
            # Nothing more to do while a recheck of the partition is due
            # (in order: set by the first record settled since the loop's
            # last turn) and it needs no reopening: most records.
            if part.recheck and (
                not part.full or len(part.waiting) + part.in_flight > part.reopen_at
            ):
                return True
            self._subscription._after_settle(part)
        else:
            self._subscription._settled(self)
        return True

    async def ack(self) -> None:
        self.ack_nowait()

    async def _ack(self) -> None:
        self._subscription._settled(self)

    async def _release(self) -> None:
        self._subscription._redeliver(self)

    async def _dead_letter(self, reason: str, description: str) -> None:
        try:
            await self._subscription._owner._send_dead_letter(self, reason, description)
        except Exception as exc:
            if being_cancelled():
                # Cancelled midway, though aiokafka may report it as its own error.
                raise asyncio.CancelledError from exc
            # Not written: left unsettled (its offset is not committed), for
            # the caller to release.
            record, owner = self.record, self._subscription._owner
            raise PublishError(
                f"could not dead-letter the record at {quote(record.topic, 200)}"
                f"[{record.partition}] offset {record.offset} to "
                f"{quote(owner.dead_letter_topic, 200)} ({quote(repr(exc))}); check that Kafka "
                f"at {','.join(owner.bootstrap_servers)} is up and that the dead-letter topic "
                "exists or may be created (create_topics) and written (ACLs)"
            ) from exc
        self._subscription._settled(self)


class KafkaSubscription(ReconnectingSubscription[KafkaDelivery]):
    """One aiokafka consumer reading the topics a glob matches, in a group
    or on its own, with a task that fetches ahead and commits.

    A refused credential or authorization ends iteration with
    `CredentialError`; any other Kafka error makes a new consumer after a
    capped backoff (aiokafka itself reconnects dropped connections).
    """

    logger = logger
    transient = TRANSIENT

    def __init__(self, broker: KafkaMessageBroker, pattern: str, group: str | None) -> None:
        super().__init__(pattern, group, broker=broker)
        self._owner = broker
        self._glob = GlobPattern(pattern)
        self._regex = re.compile(topic_pattern(pattern))
        self._ordered = broker.ordered
        self._prefetch = broker.prefetch
        self._consumer: Any = None
        self._pump: asyncio.Task[None] | None = None
        self._partitions: dict[Partition, AssignedPartition] = {}
        self._ready: deque[AssignedPartition] = deque()
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._joined = asyncio.Event()
        self._failure: BaseException | None = None
        self._initial: dict[str, list[int]] | None = None
        """The matching topics when the subscription first connected."""
        self._started = False
        """Whether the first assignment is done: a partition new after it
        starts at its first record."""
        self._fetcher = Fetcher(self)
        self._ends: dict[Partition, int] = {}
        """Each partition's end offset, as the last measure of the lag found it."""
        self._measuring: asyncio.Task[None] | None = None

    # -- connecting --------------------------------------------------------

    async def _connect(self) -> None:
        broker = self._owner
        consumer = broker._new_consumer(None if self.group is None else broker.group_id(self.group))
        try:
            async with asyncio.timeout(broker.timeout):
                await consumer.start()
                topics = await self._matching_topics()
                if self._initial is None:
                    self._initial = topics
                self._consumer = consumer
                self._failure = None
                self._fetcher.paused = ()
                if self.group is None:
                    await self._fetcher.assign(consumer, topics)
            if self.group is not None:
                self._joined.clear()
                consumer.subscribe(pattern=self._regex.pattern, listener=Rebalance(self))
                await self._join(broker)  # the first assignment: live from here
                if self._failure is not None:
                    raise self._failure
        except BaseException:
            self._consumer = None
            await self._stop(consumer)
            raise
        self._pump = asyncio.create_task(self._fetcher.run(consumer), name=f"fetch {self.pattern}")
        self._measuring = asyncio.create_task(self._measure(consumer), name=f"lag {self.pattern}")

    async def _join(self, broker: KafkaMessageBroker) -> None:
        """Wait for the group's first assignment, at most the broker's `timeout`."""
        try:
            async with asyncio.timeout(broker.timeout):
                await self._joined.wait()
        except TimeoutError:
            group = broker.group_id(self.group or "")
            session = broker.consumer_options.get("session_timeout_ms", 10_000) / 1000
            raise BrokerUnavailableError(
                f"{self!r}: the join of consumer group {group!r} did not complete in "
                f"{broker.timeout:g} s. The brokers answer; the group is rebalancing, most "
                f"often waiting out a member that died without leaving (its session ends "
                f"after session_timeout_ms, {session:g} s here). Start again, or raise "
                "timeout= above that"
            ) from None

    @property
    def connected(self) -> bool:
        """Whether the link is up and, in a group, the partitions assigned
        (False while the group rebalances)."""
        return super().connected and (self.group is None or self._joined.is_set())

    async def _matching_topics(self) -> dict[str, list[int]]:
        described = await (await self._owner._admin()).describe_topics()
        return {
            meta["topic"]: sorted(p["partition"] for p in meta["partitions"])
            for meta in described
            if meta["error_code"] == 0 and meta["partitions"] and self._regex.match(meta["topic"])
        }

    def _new_partition(self, tp: Partition) -> AssignedPartition:
        channel = channel_of_topic(tp[0])
        matches = channel is not None and self._glob.matches(channel)
        return AssignedPartition(tp, channel, matches, self._prefetch, self._ordered)

    lag_interval: float = 5.0
    """Seconds between two measures of the partitions' end offsets (`lag`)."""

    @property
    def lag(self) -> int | None:
        """Records of the partitions it reads that it has not fetched yet:
        each partition's end (the later of its last fetch's high watermark
        and its last measured end offset) less the next offset to fetch (or
        the committed one, before the first fetch). Read at once, without a
        request; None while a partition's end or position is not known."""
        consumer = self._consumer
        if consumer is None or not self._partitions:
            return None
        waiting = 0
        for tp, part in self._partitions.items():
            if part.revoked or not part.owned:
                continue
            high = max(consumer.highwater(TopicPartition(*tp)) or -1, self._ends.get(tp, -1))
            start = part.next_offset if part.next_offset >= 0 else part.committed
            if high < 0 or start is None:
                return None
            waiting += max(0, high - start)
        return waiting

    async def _measure(self, consumer: Any) -> None:
        """Every `lag_interval` seconds, the end offsets of the partitions
        it reads (a fetch stops at a full partition, so its watermark would
        stand still while records pile up)."""
        while True:
            await asyncio.sleep(self.lag_interval)
            owned = [TopicPartition(*tp) for tp, part in self._partitions.items() if part.owned]
            if not owned:
                continue
            try:
                async with asyncio.timeout(self._owner.timeout):
                    ends = await consumer.end_offsets(owned)
            except Exception as exc:  # a measure, never a reason to stop reading
                logger.debug("%r: measuring the lag failed: %r", self, exc)
                continue
            self._ends.update({(tp.topic, tp.partition): end for tp, end in ends.items()})

    # -- committing --------------------------------------------------------

    async def _commit(
        self, consumer: Any, parts: Iterable[AssignedPartition] | None = None
    ) -> None:
        """Commit `parts` (by default every partition not in a rebalance) up
        to their lowest offset not handled yet."""
        if self.group is None:
            return
        if parts is None:
            parts = [part for part in self._partitions.values() if not part.revoked]
        offsets: dict[Partition, int] = {}
        for part in parts:
            position = part.committable()
            if position is not None:
                offsets[part.tp] = position
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except MOVED_ON as exc:
            logger.info("%r: a rebalance overtook a commit (%s)", self, quote(repr(exc), 200))
            return
        except aiokafka_errors.KafkaError as exc:
            logger.warning("%r: commit failed, retrying later: %s", self, quote(repr(exc)))
            return
        for tp, offset in offsets.items():
            held = self._partitions.get(tp)
            if held is not None:
                held.committed = offset

    # -- handing out -------------------------------------------------------

    async def _receive(self) -> list[KafkaDelivery]:
        while True:
            failure = self._failure
            if failure is not None:
                self._failure = None
                raise failure
            taken = self._take()
            if taken:
                return taken
            self._wakeup.clear()
            await self._wakeup.wait()

    def _take(self) -> list[KafkaDelivery]:
        ready = self._ready
        taken: list[KafkaDelivery] = []
        while ready:
            part = ready.popleft()
            part.queued = False
            for item in part.hand_out():
                # A record becomes a delivery as it is handed out, so that
                # thousands of them are not built at once.
                if type(item) is not KafkaDelivery:
                    item = KafkaDelivery(self, part, item)
                taken.append(item)
            if part.full and part.reopen():
                self._room.set()
        return taken

    def _settled(self, delivery: KafkaDelivery) -> None:
        part = delivery._partition
        if part.settle(delivery.record.offset):
            self._after_settle(part)
        # else revoked meanwhile: its new reader commits it

    def _after_settle(self, part: AssignedPartition) -> None:
        """Once a record of `part` is settled: reopen it for fetching, and
        see that its next record is handed out."""
        # Full is the usual state (one fetch brings thousands of records):
        # `reopen` is asked only once the partition is down to its threshold.
        if part.full and len(part.waiting) + part.in_flight <= part.reopen_at and part.reopen():
            self._room.set()
        if not self._ordered:
            self._queue(part)
        elif part.waiting and not part.recheck:
            # The task that handled it usually takes the next record at once
            # (`next_in_order`); the reader is woken for the partition only
            # if nobody has by the loop's next turn.
            part.recheck = True
            asyncio.get_running_loop().call_soon(self._recheck, part)

    def _recheck(self, part: AssignedPartition) -> None:
        part.recheck = False
        self._queue(part)

    def _queue(self, part: AssignedPartition, first: bool = False) -> None:
        """Make `part` ready to hand out its next record, if it has one."""
        if not part.queued and part.can_hand_out():
            part.queued = True
            if first:
                self._ready.appendleft(part)
            else:
                self._ready.append(part)
            self._wakeup.set()

    def _redeliver(self, delivery: KafkaDelivery) -> None:
        if self.closed:
            return  # its next reader gets it from the committed offset
        part = delivery._partition
        again = KafkaDelivery(self, part, delivery.record, delivery.delivery_count + 1)
        if part.give_back(again):  # False once not ours: likewise
            self._queue(part, first=True)

    # -- closing -----------------------------------------------------------

    async def _disconnect(self) -> None:
        pump, self._pump = self._pump, None
        measuring, self._measuring = self._measuring, None
        for task in (pump, measuring):
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in (pump, measuring) if t is not None), return_exceptions=True
        )
        self._ends = {}
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        if self.group is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_COMMIT_ON_CLOSE):
                    await self._commit(consumer)
            # The group may give these partitions to another member now.
            for part in self._partitions.values():
                part.drop()
            self._partitions = {}
            self._ready.clear()
        await self._stop(consumer)

    @staticmethod
    async def _stop(consumer: Any) -> None:
        try:
            await asyncio.shield(consumer.stop())
        except Exception:  # the connection is gone already
            logger.debug("stopping a Kafka consumer failed", exc_info=True)

    def _fatal(self, error: BaseException) -> BaseException | None:
        if isinstance(error, AUTH_ERRORS):
            return CredentialError(
                f"{self!r}: Kafka refused the credential or the right to read "
                f"({quote(repr(error))}); check client_options (sasl_*, ssl_context) and the ACLs"
            )
        return None
