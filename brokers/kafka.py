"""Kafka: one topic per logical channel, read through topic-pattern subscriptions.

Delivery guarantee: at-least-once. A record stays in its topic (for the
topic's retention) whether or not anyone reads it; a consumer group commits
a partition's offset only up to the lowest record it has not handled yet, so
a consumer that crashes, stops or loses its partitions hands the unhandled
records to whoever reads the partition next, handled again or for the first
time, never skipped.

- Layout: the topic ``{prefix}.{message_type}.{message_name}`` per logical
  channel ``{prefix}:{message_type}:{message_name}`` (a topic name cannot hold
  ``:``). The record value is the JSON envelope, the record key the event's
  partition key (the field its class names with ``partition_key=``; no key
  by default), and the envelope headers are the record headers.
- Publishing: one long-lived producer (``acks="all"``, idempotent unless
  ``idempotence=False``). A batch is handed to the producer record by record
  without waiting, then every record is awaited; those cut off with their
  connection (no answer within ``request_timeout_ms``: a connection gone
  silent) are sent once more, on a new one. A topic is created on its
  first publish (``partitions``, ``replication_factor``) or, with
  ``create_topics=False``, must exist.
- Patterns: a glob becomes a topic regex subscription; each topic's channel
  is then matched against the glob in process, exactly as Redis would.
  Topics created later are found at the next metadata refresh, every
  `discovery_interval` seconds, and read from their first record.
- Groups: ``subscribe(pattern, group="billing")`` joins the Kafka consumer
  group ``{prefix}.billing``; Kafka spreads the partitions over its members.
  Offsets are committed every `commit_interval`, when partitions are
  revoked and on close. A group with no committed offset starts where
  `start_from` says on the topics that exist when it first joins.
- Without a group: every partition of every matching topic, new records
  only (broadcast); nothing is committed.
- Order: records of one partition (one key) are handled one at a time in
  offset order, partitions concurrently; ``ordered=False`` hands out a
  partition's records concurrently too (commits still wait for the lowest).
- Settling: ack marks the offset handled; release delivers the record again
  from this subscription's copy, ahead of the later records of its
  partition; dead-letter writes it to ``{prefix}.dead-letter`` (which no
  subscription reads) with the reason, source topic, partition and offset in
  the record headers, then marks it handled; a write that fails raises
  `PublishError` and leaves the record unsettled.

Lifecycle, reconnection and settle-once come from `mediator.transport`; the
per-partition bookkeeping from `brokers._kafka_partitions`; this module
holds what aiokafka needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Self
from urllib.parse import urlsplit

try:
    from aiokafka import (  # type: ignore[import-untyped]
        AIOKafkaConsumer,
        AIOKafkaProducer,
        ConsumerRebalanceListener,
        TopicPartition,
    )
    from aiokafka import errors as kafka_errors
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "brokers.kafka needs aiokafka: pip install 'mediator-toolkit[kafka]'"
    ) from exc

from brokers._kafka_partitions import PartitionState
from mediator.transport import (
    DEAD_LETTER_BODY_LIMIT,
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
    MediatorError,
    Message,
    MessageTooLargeError,
    PublishError,
    ReconnectingSubscription,
    being_cancelled,
    quote,
)

__all__ = [
    "KafkaDelivery",
    "KafkaMessageBroker",
    "KafkaSubscription",
    "StartFrom",
    "channel_of_topic",
    "topic_pattern",
]

logger = logging.getLogger("mediator.brokers.kafka")

StartFrom = Literal["new", "beginning"]
Partition = tuple[str, int]
"""A topic partition, as aiokafka's ``TopicPartition`` (a named tuple)."""
_Record = tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]
"""A record to produce: topic, value, key, headers."""

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_KINDS = re.compile(r"\.(notification_event|ecst_event)\.")
_AUTH_ERRORS = (
    kafka_errors.AuthenticationFailedError,
    kafka_errors.SaslAuthenticationFailed,
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.GroupAuthorizationFailedError,
    kafka_errors.ClusterAuthorizationFailedError,
    kafka_errors.TransactionalIdAuthorizationFailed,
)
_TOO_LARGE = (kafka_errors.MessageSizeTooLargeError, kafka_errors.RecordTooLargeError)
_CUT_OFF = (kafka_errors.RequestTimedOutError, kafka_errors.KafkaConnectionError)
"""A produce request left unanswered: no reply within request_timeout_ms (a
connection gone silent), or its connection closed under it."""
_MOVED_ON = (
    kafka_errors.CommitFailedError,
    kafka_errors.IllegalStateError,
    kafka_errors.RebalanceInProgressError,
    kafka_errors.IllegalGenerationError,
    kafka_errors.UnknownMemberIdError,
)
"""Commit errors meaning the partitions are not ours any more (a rebalance)."""
_PRODUCER_KEYS = {
    "bootstrap_servers": "pass the servers as the broker's first argument",
    "enable_idempotence": "use the broker's idempotence= keyword",
    "value_serializer": "the broker writes the envelope bytes itself",
    "key_serializer": "the broker writes the partition key itself",
}
_CONSUMER_KEYS = {
    "bootstrap_servers": "pass the servers as the broker's first argument",
    "group_id": "pass the group to subscribe(pattern, group=...)",
    "enable_auto_commit": "the broker commits what was handled itself",
    "auto_offset_reset": "use the broker's start_from= keyword",
    "metadata_max_age_ms": "use the broker's discovery_interval= keyword",
    "value_deserializer": "the consumer decodes the envelope bytes itself",
    "key_deserializer": "the broker reads keys as bytes",
}
_COMMIT_ON_CLOSE = 5.0
"""Seconds a closing or reconnecting subscription gives its last commit."""


def topic_pattern(pattern: str) -> str:
    """A regex over topic names matching at least the topics of the channels
    that the glob `pattern` matches (``:`` becomes ``.``, a ``[...]`` set any
    one character), and only topics of channels; the glob itself then
    decides, in process, on each topic's channel.

    ```python
    assert topic_pattern("shop:notification_event:Order*").endswith(
        r"shop\\.notification_event\\.Order.*\\Z"
    )
    ```
    """
    out: list[str] = []
    i, size = 0, len(pattern)
    while i < size:
        char = pattern[i]
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            # The set ends at the first unescaped "]" (or the pattern's end),
            # as Redis reads it; here it stands for one character.
            i += 1
            while i < size and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
            out.append(".")
        else:
            if char == "\\" and i + 1 < size:
                i += 1
                char = pattern[i]
            out.append(r"\." if char in ".:" else re.escape(char))
        i += 1
    return r"(?=.*\.(?:notification_event|ecst_event)\.)" + "".join(out) + r"\Z"


def channel_of_topic(topic: str) -> str | None:
    """The logical channel a topic holds, or None for a topic that is not
    one (the dead-letter topic, another application's).

    ```python
    assert channel_of_topic("shop.notification_event.OrderPlaced") == (
        "shop:notification_event:OrderPlaced"
    )
    assert channel_of_topic("shop.dead-letter") is None
    ```
    """
    found = _KINDS.search(topic)
    if found is None:
        return None
    return f"{topic[: found.start()]}:{found.group(1)}:{topic[found.end() :]}"


def _servers(url: str) -> list[str]:
    parts = urlsplit(url)
    hosts = [host.strip() for host in (parts.netloc or "").split(",")]
    if parts.scheme != "kafka" or not all(hosts) or parts.path not in ("", "/"):
        raise ValueError(
            f"expected a URL of the form kafka://host:port[,host:port], got {quote(url, 200)}; "
            "security settings go in client_options"
        )
    return [host if ":" in host else f"{host}:9092" for host in hosts]


def _header_value(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _describe(error: BaseException) -> str:
    return "no answer in time" if isinstance(error, TimeoutError) else quote(repr(error))


_ERRORS = ErrorTable(
    sdk=(kafka_errors.KafkaError, OSError),
    rows=[
        ErrorRow(
            _AUTH_ERRORS,
            CredentialError,
            "Kafka refused the credential or the right: check client_options "
            "(security_protocol, sasl_*, ssl_context) and the ACLs",
        ),
        ErrorRow(
            (kafka_errors.KafkaError, OSError),
            BrokerUnavailableError,
            "check bootstrap_servers and that the brokers run, or raise timeout=",
        ),
    ],
    describe=_describe,
)
"""How aiokafka's errors (and a timeout) become the library's, with what to check."""


def _kafka_errors(doing: str, servers: Sequence[str]) -> contextlib.AbstractContextManager[None]:
    """`_ERRORS` around a call that is `doing` something on Kafka at `servers`."""
    return _ERRORS.mapped(f"{doing} on Kafka at {','.join(servers)}")


class _Partition(PartitionState[Any]):
    """A partition a subscription reads: its bookkeeping (`PartitionState`,
    holding aiokafka's records and deliveries given back), which one it is,
    and its place in the subscription's queue of partitions to hand out."""

    __slots__ = ("channel", "queued", "recheck", "tp")

    def __init__(
        self, tp: Partition, channel: str | None, matches: bool, prefetch: int, ordered: bool
    ) -> None:
        super().__init__(prefetch, ordered=ordered, matches=matches)
        self.tp = tp
        self.channel = channel or tp[0]
        self.queued = False
        """In the subscription's queue of partitions with a record to hand out."""
        self.recheck = False
        """A look at whether to queue it is due at the loop's next turn."""


class KafkaDelivery(DeliveryBase):
    """One record of one partition; settling it moves that partition's
    committable offset, never past a record that is not handled yet."""

    __slots__ = ("_partition", "_subscription", "record")

    def __init__(
        self,
        subscription: KafkaSubscription,
        partition: _Partition,
        record: Any,
        delivery_count: int = 1,
    ) -> None:
        # DeliveryBase's fields set here: one is built for every record.
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
        if subscription.closed:
            return None
        part = self._partition
        # Taking the next record moves it from waiting to in flight: what
        # the partition holds stays the same, so it cannot reopen here.
        item = part.take_next()
        if item is None:
            return None
        return item if type(item) is KafkaDelivery else KafkaDelivery(subscription, part, item)

    def ack_nowait(self) -> bool:
        # An ack only moves the partition's offsets in memory: settled here,
        # with no coroutine to build and await for every record.
        if self.settled is not None:
            self._settling("ack")  # raises, naming the first settlement
        self.settled = "ack"
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


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Passes aiokafka's rebalance callbacks to the subscription."""

    def __init__(self, subscription: KafkaSubscription) -> None:
        self._subscription = subscription

    async def on_partitions_revoked(self, revoked: set[Partition]) -> None:
        await self._subscription._revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[Partition]) -> None:
        await self._subscription._assigned(assigned)


class KafkaSubscription(ReconnectingSubscription[KafkaDelivery]):
    """One aiokafka consumer reading the topics a glob matches, in a group
    or on its own, with a task that fetches ahead and commits.

    A refused credential or authorization ends iteration with
    `CredentialError`; any other Kafka error makes a new consumer after a
    capped backoff (aiokafka itself reconnects dropped connections).
    """

    logger = logger
    transient = (kafka_errors.KafkaError, OSError)

    def __init__(self, broker: KafkaMessageBroker, pattern: str, group: str | None) -> None:
        super().__init__(pattern, group, broker=broker)
        self._owner = broker
        self._glob = GlobPattern(pattern)
        self._regex = re.compile(topic_pattern(pattern))
        self._ordered = broker.ordered
        self._prefetch = broker.prefetch
        self._consumer: Any = None
        self._pump: asyncio.Task[None] | None = None
        self._partitions: dict[Partition, _Partition] = {}
        self._ready: deque[_Partition] = deque()
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._paused: tuple[Partition, ...] = ()
        self._full_since: float | None = None
        poll_interval = broker.consumer_options.get("max_poll_interval_ms", 300_000) / 1000
        self._keepalive = poll_interval / 4
        """Seconds every partition may be full before polling with all paused."""
        self._joined = asyncio.Event()
        self._failure: BaseException | None = None
        self._initial: dict[str, list[int]] | None = None
        """The matching topics when the subscription first connected."""
        self._topics: dict[str, list[int]] = {}
        self._started = False

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
                self._paused = ()
                if self.group is None:
                    await self._assign(consumer, topics)
            if self.group is not None:
                self._joined.clear()
                consumer.subscribe(pattern=self._regex.pattern, listener=_Rebalance(self))
                await self._join(broker)  # the first assignment: live from here
                if self._failure is not None:
                    raise self._failure
        except BaseException:
            self._consumer = None
            await self._stop(consumer)
            raise
        self._pump = asyncio.create_task(self._fetch(consumer), name=f"fetch {self.pattern}")

    async def _join(self, broker: KafkaMessageBroker) -> None:
        """Wait for the group's first assignment; a join that takes longer
        than the broker's timeout says so: the brokers answered, the group
        did not settle (most often a member that died without leaving, whose
        session the coordinator waits out)."""
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

    def _new_partition(self, tp: Partition) -> _Partition:
        channel = channel_of_topic(tp[0])
        matches = channel is not None and self._glob.matches(channel)
        return _Partition(tp, channel, matches, self._prefetch, self._ordered)

    async def _assign(self, consumer: Any, topics: dict[str, list[int]]) -> None:
        """Without a group: read every partition of `topics`, resuming those
        already read, from the end of the topics that existed at the first
        connect (new records only), and from the beginning of the others."""
        self._topics = topics
        tps = [TopicPartition(topic, p) for topic, ids in sorted(topics.items()) for p in ids]
        consumer.assign(tps)
        self._paused = ()
        previous, kept = self._partitions, {}
        to_end: list[Partition] = []
        for tp in tps:
            part = previous.get(tp)
            if part is None:
                part = self._new_partition(tp)
                if not self._started:
                    to_end.append(tp)
            elif part.next_offset >= 0:
                consumer.seek(tp, part.next_offset)
            kept[tp] = part
        for tp, part in previous.items():
            if tp not in kept:
                part.drop()
        self._partitions = kept
        if to_end:
            # Explicit offsets (see _start_where_told); the rest start at the
            # first record, as auto_offset_reset says.
            for tp, offset in (await consumer.end_offsets(to_end)).items():
                consumer.seek(tp, offset)
        self._started = True

    async def _revoked(self, revoked: set[Partition]) -> None:
        # Commit what is done before anyone else reads these partitions, and
        # hand out no more of them: what is handled from here on would be
        # handled again by their next reader.
        consumer = self._consumer
        # Not ready until the rebalance hands out partitions again (`_assigned`).
        self._joined.clear()
        parts = [self._partitions[tp] for tp in revoked if tp in self._partitions]
        for part in parts:
            part.revoke()
        if consumer is not None and parts:
            await self._commit(consumer, parts)

    async def _assigned(self, assigned: set[Partition]) -> None:
        consumer = self._consumer
        self._paused = ()  # a new assignment: aiokafka paused none of it
        try:
            previous, kept = self._partitions, {}
            for tp, part in previous.items():
                if tp in assigned:
                    # Ours again: go on from what was fetched, not the commit.
                    kept[tp] = part
                    part.restore()
                    if part.next_offset >= 0:
                        consumer.seek(tp, part.next_offset)
                    self._queue(part)
                else:
                    part.drop()
            fresh = [tp for tp in assigned if tp not in kept]
            for tp in fresh:
                kept[tp] = self._new_partition(tp)
            self._partitions = kept
            logger.info("%r: %d partition(s) assigned, %d new", self, len(assigned), len(fresh))
            await self._start_where_told(consumer, fresh)
            self._started = True
        except Exception as exc:
            self._failure = exc
            self._wakeup.set()
        finally:
            self._joined.set()

    async def _start_where_told(self, consumer: Any, fresh: list[Partition]) -> None:
        """Give every partition the group has no commit for its starting
        point, and commit it at once, so that the members and restarts that
        follow go on from it: a member killed before its first commit would
        otherwise leave its successor to choose again, and to skip to the end
        what the first one had started reading from the beginning.

        The end of the topics that existed when this subscription first
        connected, if `start_from` is "new" and the group has no commit at
        all (it is new); the first record otherwise (a topic that appeared
        later, or ``start_from="beginning"``)."""
        if not fresh:
            return
        broker, initial = self._owner, self._initial or {}
        known = {TopicPartition(topic, p) for topic, ids in initial.items() for p in ids}
        committed = await (await broker._admin()).list_consumer_group_offsets(
            broker.group_id(self.group or ""), partitions=sorted(known.union(fresh))
        )
        unstarted = [tp for tp in fresh if committed.get(tp) is None or committed[tp].offset < 0]
        if not unstarted:
            return
        group_is_new = broker.start_from == "new" and all(
            meta.offset < 0 for meta in committed.values()
        )
        # Explicit offsets, never seek_to_end(): aiokafka's own reset to the
        # earliest offset, in flight already, would land after it.
        to_end = [tp for tp in unstarted if group_is_new and tp[0] in initial]
        to_start = [tp for tp in unstarted if tp not in to_end]
        starts: dict[Partition, int] = {}
        if to_end:
            starts.update(await consumer.end_offsets(to_end))
        if to_start:
            starts.update(await consumer.beginning_offsets(to_start))
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        await consumer.commit(starts)
        for tp, offset in starts.items():
            self._partitions[tp].committed = offset

    # -- fetching ----------------------------------------------------------

    async def _fetch(self, consumer: Any) -> None:
        """Fetch ahead from the partitions with room, commit every
        `commit_interval` and, without a group, look for new topics every
        `discovery_interval`."""
        broker = self._owner
        loop = asyncio.get_running_loop()
        poll_ms = int(min(broker.commit_interval, broker.discovery_interval, 0.5) * 1000)
        next_commit = loop.time() + broker.commit_interval
        next_discovery = loop.time() + broker.discovery_interval
        try:
            while True:
                batches = await self._poll(consumer, poll_ms)
                if batches:
                    self._take_in(batches)
                now = loop.time()
                if now >= next_commit:
                    next_commit = now + broker.commit_interval
                    await self._commit(consumer)
                if self.group is None and now >= next_discovery:
                    next_discovery = now + broker.discovery_interval
                    await self._discover(consumer)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failure = exc
            self._wakeup.set()

    async def _poll(self, consumer: Any, poll_ms: int) -> Mapping[Partition, list[Any]]:
        """The next records of the partitions that are not full; a partition
        that has room again cuts the wait short."""
        parts = self._partitions
        open_ = [tp for tp, part in parts.items() if not part.full]
        if len(open_) == len(parts):
            self._full_since = None
            if self._paused:
                # Only what is still assigned: a rebalance may be under way.
                assigned = consumer.assignment()
                consumer.resume(*(tp for tp in self._paused if tp in assigned))
                self._paused = ()
            return await consumer.getmany(timeout_ms=poll_ms)  # type: ignore[no-any-return]
        if open_:
            getting = asyncio.ensure_future(consumer.getmany(*open_, timeout_ms=poll_ms))
        else:
            now = asyncio.get_running_loop().time()
            if self._full_since is None:
                self._full_since = now
            if now - self._full_since < self._keepalive:
                getting = asyncio.ensure_future(asyncio.sleep(poll_ms / 1000, {}))
            else:
                # Full for long (slow handlers): poll with every partition
                # paused, or the group takes this member for stuck
                # (max_poll_interval_ms). Pausing drops what aiokafka fetched.
                if not self._paused:
                    assigned = consumer.assignment()
                    self._paused = tuple(tp for tp in parts if tp in assigned)
                    consumer.pause(*self._paused)
                getting = asyncio.ensure_future(consumer.getmany(timeout_ms=poll_ms))
        self._room.clear()
        room = asyncio.ensure_future(self._room.wait())
        try:
            await asyncio.wait((getting, room), return_when=asyncio.FIRST_COMPLETED)
        finally:
            room.cancel()
            if not getting.done():
                getting.cancel()
                await asyncio.wait((getting,))
        if getting.cancelled():
            return {}
        batches: Mapping[Partition, list[Any]] = getting.result()
        return batches

    def _take_in(self, batches: Mapping[Partition, list[Any]]) -> None:
        parts = self._partitions
        for tp, records in batches.items():
            part = parts.get(tp)
            if part is not None and part.add(records):
                self._queue(part)

    async def _discover(self, consumer: Any) -> None:
        try:
            topics = await self._matching_topics()
        except (kafka_errors.KafkaError, OSError) as exc:
            logger.warning("%r: could not look for new topics: %s", self, quote(repr(exc)))
            return
        if topics != self._topics:
            await self._assign(consumer, topics)

    async def _commit(self, consumer: Any, parts: Iterable[_Partition] | None = None) -> None:
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
        except _MOVED_ON as exc:
            logger.info("%r: a rebalance overtook a commit (%s)", self, quote(repr(exc), 200))
            return
        except kafka_errors.KafkaError as exc:
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
        if not part.settle(delivery.record.offset):
            return  # revoked meanwhile: its new reader commits it
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

    def _recheck(self, part: _Partition) -> None:
        part.recheck = False
        self._queue(part)

    def _queue(self, part: _Partition, first: bool = False) -> None:
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
        if pump is not None:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
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
        if isinstance(error, _AUTH_ERRORS):
            return CredentialError(
                f"{self!r}: Kafka refused the credential or the right to read "
                f"({quote(repr(error))}); check client_options (sasl_*, ssl_context) and the ACLs"
            )
        return None


class KafkaMessageBroker(BrokerLifecycle):
    """Publishes envelopes to Kafka topics and reads them by pattern.

    ```python
    broker = KafkaMessageBroker("kafka-1:9092,kafka-2:9092", channel_prefix="shop")
    # or
    broker = KafkaMessageBroker.from_url("kafka://kafka-1:9092,kafka-2:9092", "shop")
    ```

    The broker builds its aiokafka clients (one producer, one admin client,
    one consumer per subscription) and closes them on `stop()`.
    `client_options` go to every one of them (``security_protocol``,
    ``ssl_context``, ``sasl_mechanism``, ``sasl_plain_username``, ...);
    `producer_options` and `consumer_options` to the producer and the
    consumers only.
    """

    delivery_guarantee = DeliveryGuarantee.AT_LEAST_ONCE

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str] = "127.0.0.1:9092",
        *,
        channel_prefix: str = "mediator",
        create_topics: bool = True,
        partitions: int = 3,
        replication_factor: int = 1,
        idempotence: bool = True,
        start_from: StartFrom = "new",
        ordered: bool = True,
        discovery_interval: float = 5.0,
        commit_interval: float = 1.0,
        prefetch: int = 100,
        dead_letter_limit: int = 10_000,
        timeout: float = 30.0,
        client_options: Mapping[str, Any] | None = None,
        producer_options: Mapping[str, Any] | None = None,
        consumer_options: Mapping[str, Any] | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        if not _TOPIC.fullmatch(channel_prefix) or len(channel_prefix) > 200:
            raise ValueError(
                f"channel_prefix {quote(channel_prefix, 200)} cannot start a Kafka topic name: "
                "use letters, digits, '.', '_' and '-' only (no ':'), at most 200 of them"
            )
        if start_from not in ("new", "beginning"):
            raise ValueError(f"start_from must be 'new' or 'beginning', got {start_from!r}")
        for name, value in (
            ("partitions", partitions),
            ("replication_factor", replication_factor),
            ("prefetch", prefetch),
            ("dead_letter_limit", dead_letter_limit),
        ):
            if value < 1:
                raise ValueError(f"KafkaMessageBroker({name}={value}): must be at least 1")
        for name, seconds in (
            ("discovery_interval", discovery_interval),
            ("commit_interval", commit_interval),
            ("timeout", timeout),
        ):
            if seconds <= 0:
                raise ValueError(f"KafkaMessageBroker({name}={seconds}): must be above 0 seconds")
        for options, reserved in (
            (producer_options or {}, _PRODUCER_KEYS),
            (consumer_options or {}, _CONSUMER_KEYS),
            (client_options or {}, _PRODUCER_KEYS | _CONSUMER_KEYS),
        ):
            for key in options:
                if key in reserved:
                    raise ValueError(f"the option {key!r} is the broker's to set: {reserved[key]}")
        super().__init__(max_message_size=max_message_size)
        servers = bootstrap_servers
        self.bootstrap_servers = (
            [s.strip() for s in servers.split(",")] if isinstance(servers, str) else list(servers)
        )
        self.channel_prefix = channel_prefix
        self.create_topics = create_topics
        """Create a topic on its first publish; False: it must exist."""
        self.partitions = partitions
        """Partitions of a topic the broker creates (the dead-letter topic gets one)."""
        self.replication_factor = replication_factor
        """Replicas of a topic the broker creates."""
        self.idempotence = idempotence
        """An idempotent producer (no duplicates from its own retries); Tansu 0.6 has none."""
        self.start_from = start_from
        """Where a group with no committed offset starts on the topics that exist."""
        self.ordered = ordered
        """Records of one partition handled one at a time, in order."""
        self.discovery_interval = discovery_interval
        """Seconds between metadata refreshes: how soon a new topic is read."""
        self.commit_interval = commit_interval
        """Seconds between a group subscription's commits."""
        self.prefetch = prefetch
        """Records a partition holds ahead of its handlers before it is fetched
        from again (plus what one fetch brings, max_partition_fetch_bytes)."""
        self.dead_letter_limit = dead_letter_limit
        """The most dead letters `dead_letters()` returns (the newest)."""
        self.timeout = timeout
        """Seconds `start()`, `subscribe()` and `dead_letters()` wait for Kafka."""
        self.dead_letter_topic = f"{channel_prefix}.dead-letter"
        self.client_options = dict(client_options or {})
        self.producer_options = dict(producer_options or {})
        self.consumer_options = dict(consumer_options or {})
        session = self.consumer_options.get("session_timeout_ms")
        if session is not None and "heartbeat_interval_ms" not in self.consumer_options:
            # aiokafka's heartbeat (3 s) outlasts a short session: the group
            # would expire each member between heartbeats and rebalance for ever.
            self.consumer_options["heartbeat_interval_ms"] = max(1, int(session) // 3)
        self._owns_client = True  # every aiokafka client here is the broker's own
        self._producer: Any = None
        self._admin_client: Any = None
        self._lock = asyncio.Lock()
        self._known: set[str] = set()
        self._topics: dict[tuple[str, str], str] = {}

    @classmethod
    def from_url(cls, url: str, channel_prefix: str = "mediator", **options: Any) -> Self:
        """A broker for ``kafka://host:port[,host:port]``; `options` are the
        constructor's keywords."""
        return cls(_servers(url), channel_prefix=channel_prefix, **options)

    def __repr__(self) -> str:
        return f"<KafkaMessageBroker {','.join(self.bootstrap_servers)} {self.channel_prefix!r}>"

    def group_id(self, group: str) -> str:
        """The Kafka consumer group of `subscribe(..., group=group)`:
        ``{prefix}.{group}``, so that applications sharing a cluster never
        share a group by accident."""
        return f"{self.channel_prefix}.{group}"

    def topic_for(self, message: Message) -> str:
        """The topic `message` is published to: ``{prefix}.{message_type}.{message_name}``."""
        key = (message.message_type, message.message_name)
        topic = self._topics.get(key)
        if topic is None:
            topic = f"{self.channel_prefix}.{message.message_type}.{message.message_name}"
            if not _TOPIC.fullmatch(topic):
                raise PublishError(
                    f"{quote(repr(message.message_name), 200)} makes the topic name "
                    f"{quote(topic, 300)}, which "
                    "Kafka refuses: topic names hold letters, digits, '.', '_' and '-' only, at "
                    "most 249 of them; give the event class a name= that fits"
                )
            if len(self._topics) >= 10_000:
                self._topics.clear()
            self._topics[key] = topic
        return topic

    # -- publish -----------------------------------------------------------

    async def send_message(self, message: Message) -> None:
        """Publish one envelope; raises PublishError when Kafka does not take it."""
        await self.send_messages((message,))

    async def send_messages(self, messages: Sequence[Message]) -> None:
        """Publish a batch in order: every record handed to the producer
        without waiting, then all awaited (acknowledged by every in-sync
        replica); those cut off with their connection are sent once more."""
        if not messages:
            return
        records: list[_Record] = [
            (
                self.topic_for(m),
                self.encode(m),
                None if m.partition_key is None else m.partition_key.encode(),
                [(k, v.encode()) for k, v in m.headers.items()],
            )
            for m in messages
        ]
        try:
            if any(record[0] not in self._known for record in records):
                await self._ensure_topics({record[0] for record in records})
            cut_off = await self._produce(records)
            if cut_off:
                # aiokafka gives a record up with a request unanswered for
                # request_timeout_ms (its batch expires with it), and drops
                # that connection: one more try goes out on a new one.
                logger.warning(
                    "publishing %d record(s) was cut off (%s); publishing them again",
                    len(cut_off),
                    quote(repr(cut_off[0][1]), 300),
                )
                cut_off = await self._produce([record for record, _ in cut_off])
                if cut_off:
                    raise cut_off[0][1]
        except MediatorError:
            raise
        except Exception as exc:
            raise self._publish_error(messages, exc) from exc

    async def _produce(self, records: Sequence[_Record]) -> list[tuple[_Record, Exception]]:
        """Hand `records` to the producer in order, then await them all;
        returns those cut off with their connection (`_CUT_OFF`), in order,
        and raises any other error once every record handed over has settled."""
        futures: list[asyncio.Future[Any]] = []
        try:
            producer = self._producer or await self._started_producer()
            send = producer.send
            for topic, value, key, headers in records:
                futures.append(await send(topic, value, key=key, headers=headers))
            if len(futures) == 1:
                await futures[0]  # no gathering future: one loop turn less
            else:
                await asyncio.gather(*futures)
        except Exception as exc:
            # Nothing left unobserved: the records already handed over settle too.
            results = await asyncio.gather(*futures, return_exceptions=True)
            if len(results) < len(records) or not isinstance(exc, _CUT_OFF):
                raise
            for result in results:
                if isinstance(result, BaseException) and not isinstance(result, _CUT_OFF):
                    raise result from None  # the error of its own, not the cut-off one
            return [
                (record, result)
                for record, result in zip(records, results, strict=True)
                if isinstance(result, _CUT_OFF)
            ]
        return []

    def _publish_error(self, messages: Sequence[Message], exc: Exception) -> MediatorError:
        names = quote(", ".join(m.message_name for m in messages), 200)
        detail = quote(repr(exc))
        if isinstance(exc, _TOO_LARGE):
            return MessageTooLargeError(
                f"Kafka refused {names} as too large ({detail}); raise max_request_size in "
                "producer_options and the topic's max.message.bytes, or send less"
            )
        if isinstance(exc, _AUTH_ERRORS):
            return CredentialError(
                f"Kafka refused to take {names} ({detail}); check client_options (sasl_*, "
                "ssl_context) and the producer's ACLs"
            )
        hint = ""
        if self.idempotence and isinstance(
            exc, kafka_errors.UnknownError | kafka_errors.UnsupportedVersionError
        ):
            hint = (
                "; the broker may not support idempotent producers (Tansu 0.6 does not): "
                "pass idempotence=False"
            )
        return PublishError(
            f"could not publish {names} to Kafka at {','.join(self.bootstrap_servers)}: "
            f"{detail}{hint}"
        )

    async def _ensure_topics(self, topics: Iterable[str], partitions: int | None = None) -> None:
        missing = [topic for topic in topics if topic not in self._known]
        if not missing:
            return
        admin = await self._admin()
        if not self.create_topics:
            existing = {meta["topic"] for meta in await admin.describe_topics()}
            absent = sorted(set(missing) - existing)
            if absent:
                raise PublishError(
                    f"the topic(s) {quote(', '.join(absent), 300)} do not exist and this broker "
                    "does not create topics (create_topics=False); create them, or let the "
                    "broker create them"
                )
        else:
            count = partitions or self.partitions
            response = await admin.create_topics(
                [NewTopic(topic, count, self.replication_factor) for topic in missing]
            )
            for topic, code, text in response.topic_errors:
                error = kafka_errors.for_code(code)
                if error not in (kafka_errors.NoError, kafka_errors.TopicAlreadyExistsError):
                    raise PublishError(
                        f"Kafka refused to create the topic {quote(topic, 300)}: "
                        f"{error.__name__} {quote(str(text or ''), 300)}; create it yourself, "
                        "or change partitions / replication_factor"
                    )
        self._known.update(missing)

    async def _started_producer(self) -> Any:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap_servers,
                    acks="all",
                    enable_idempotence=self.idempotence,
                    **{**self.client_options, **self.producer_options},
                )
                try:
                    await producer.start()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                    raise
                self._producer = producer
        return self._producer

    async def _admin(self) -> Any:
        if self._admin_client is not None:
            return self._admin_client
        async with self._lock:
            if self._admin_client is None:
                admin = AIOKafkaAdminClient(
                    bootstrap_servers=self.bootstrap_servers, **self.client_options
                )
                try:
                    await admin.start()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await admin.close()
                    raise
                self._admin_client = admin
        return self._admin_client

    def _new_consumer(self, group: str | None) -> Any:
        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=group,
            enable_auto_commit=False,
            # Where nothing is committed and nothing was chosen: the first record.
            auto_offset_reset="earliest",
            metadata_max_age_ms=int(self.discovery_interval * 1000),
            **{**self.client_options, **self.consumer_options},
        )

    # -- subscribe ---------------------------------------------------------

    async def subscribe(self, pattern: str, *, group: str | None = None) -> KafkaSubscription:
        """Read the topics whose channel matches `pattern`, in consumer group
        `group` (or on its own: new records only); returns once Kafka has
        given it its partitions."""
        subscription = KafkaSubscription(self, pattern, group)
        try:
            doing = f"subscribing to {quote(repr(pattern), 200)}"
            with _kafka_errors(doing, self.bootstrap_servers):
                await subscription.open()
        except BaseException:
            await subscription.close()
            raise
        return subscription

    # -- dead letters --------------------------------------------------------

    async def _send_dead_letter(
        self, delivery: KafkaDelivery, reason: str, description: str
    ) -> None:
        record = delivery.record
        dead = DeadLetterRecord.of(
            delivery.channel, delivery.data, reason, description, delivery.delivery_count
        )
        headers = [(k, _header_value(v)) for k, v in dead.fields().items() if k != "data"]
        headers += [
            ("topic", record.topic.encode()),
            ("partition", str(record.partition).encode()),
            ("offset", str(record.offset).encode()),
        ]
        key = None if record.key is None else bytes(record.key[:DEAD_LETTER_BODY_LIMIT])
        await self._ensure_topics((self.dead_letter_topic,), partitions=1)
        producer = await self._started_producer()
        await (await producer.send(self.dead_letter_topic, dead.data, key=key, headers=headers))

    async def dead_letters(self) -> list[DeadLetterRecord]:
        """The newest `dead_letter_limit` records of ``{prefix}.dead-letter``,
        oldest first (as far as the topic's retention kept them)."""
        with _kafka_errors(f"reading {self.dead_letter_topic}", self.bootstrap_servers):
            async with asyncio.timeout(self.timeout):
                return await self._read_dead_letters()

    async def _read_dead_letters(self) -> list[DeadLetterRecord]:
        described = await (await self._admin()).describe_topics()
        ids = [
            p["partition"]
            for meta in described
            if meta["topic"] == self.dead_letter_topic
            for p in meta["partitions"]
        ]
        if not ids:
            return []
        tps = [TopicPartition(self.dead_letter_topic, p) for p in ids]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            enable_auto_commit=False,
            **{**self.client_options, **self.consumer_options},
        )
        records: list[Any] = []
        try:
            await consumer.start()
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            starts = await consumer.beginning_offsets(tps)
            for tp in tps:
                consumer.seek(tp, max(starts[tp], ends[tp] - self.dead_letter_limit))
            left = [tp for tp in tps if ends[tp] > starts[tp]]
            while left:
                for batch in (await consumer.getmany(*left, timeout_ms=200)).values():
                    records.extend(batch)
                # Read to the high watermark of the fetches, which Tansu 0.6
                # gets right where its answer to ListOffsets can fall short.
                left = [
                    tp
                    for tp in left
                    if await consumer.position(tp) < max(ends[tp], consumer.highwater(tp) or 0)
                ]
        finally:
            await self._stop_client(consumer)
        records.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
        return [
            DeadLetterRecord.from_fields({**dict(r.headers), "data": r.value or b""})
            for r in records[-self.dead_letter_limit :]
        ]

    # -- lifecycle ---------------------------------------------------------

    async def _open(self) -> None:
        with _kafka_errors("connecting", self.bootstrap_servers):
            async with asyncio.timeout(self.timeout):
                await self._admin()

    async def _close_client(self) -> None:
        producer, self._producer = self._producer, None
        admin, self._admin_client = self._admin_client, None
        await asyncio.gather(self._stop_client(producer), self._stop_client(admin))
        self._known.clear()

    @staticmethod
    async def _stop_client(client: Any) -> None:
        if client is None:
            return
        try:
            await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())
        except Exception:  # the connection is gone already
            logger.debug("closing a Kafka client failed", exc_info=True)
