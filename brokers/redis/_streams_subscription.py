"""Redis Streams: the subscription, which reads registered streams matching
a glob in one consumer group, and its deliveries (docs/redis-streams.md)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from brokers.redis._dead_letters import append_dead_letter
from brokers.redis._errors import REDIS_ERRORS, code, describe, fatal, lost
from brokers.redis._naming import consumer_name, private_group
from brokers.redis._streams_acks import AckBatch
from brokers.redis._streams_claims import Claims
from brokers.redis._streams_cluster import SlotReads
from brokers.redis._streams_discovery import StreamSet
from brokers.redis._streams_replies import (
    READ_SCRIPT,
    Entries,
    group_lost,
    read_entries,
    script_args,
    script_entries,
    streams_lag,
    text,
)
from mediator.transport import (
    BrokerUnavailableError,
    DeadLetterRecord,
    DeliveryBase,
    GlobPattern,
    ReconnectingSubscription,
    TransportError,
    being_cancelled,
    quote,
    replay_count_of,
)

if TYPE_CHECKING:  # for annotations only: streams.py imports this module
    from brokers.redis.streams import RedisStreamMessageBroker

__all__ = ["RedisStreamDelivery", "RedisStreamSubscription"]

logger = logging.getLogger("mediator.brokers.redis")

PLAIN_FOR = 60.0
"""Seconds reads go without the script after Redis refused to run it."""


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
        subscription's next read (or within `ACK_DELAY`)."""
        subscription = self._subscription
        if subscription.closed:  # no read follows: acknowledge now
            subscription._forget(self)
            await subscription._client.xack(self.channel, subscription._group, self.entry_id)
        else:
            subscription._queue_ack(self)

    async def _release(self) -> None:
        """Leave it pending, for a member of the group to claim once idle."""
        self._subscription._forget(self)

    async def _dead_letter(self, reason: str, description: str) -> None:
        """``XADD`` it to the dead-letter stream, then ``XACK``, in one transaction."""
        await self._subscription._dead_letter(self, reason, description)


class RedisStreamSubscription(ReconnectingSubscription[RedisStreamDelivery]):
    """Reads every registered stream whose key matches a glob, in one group.

    Streams are found in the broker's registry every `discovery_interval`;
    idle entries are claimed every `claim_interval` (`CLAIM_CALLS` per
    stream and pass); every `claim_idle` / 3 the entries held are renewed
    and the group's `lag` is measured; acknowledgements are batched with the
    next read. `close()` removes what the subscription made for itself: its
    private group, or its member name in a named group where nothing is
    pending for it.
    """

    logger = logger
    transient: ClassVar[tuple[type[BaseException], ...]] = (TransportError,)

    def __init__(self, broker: RedisStreamMessageBroker, pattern: str, group: str | None) -> None:
        super().__init__(pattern, group, broker=broker)
        self._stream_broker = broker
        self._client = broker.client
        self._group = group if group is not None else private_group()
        """The group read in: `group`, or a private one for an ungrouped subscription."""
        self.consumer = consumer_name()
        """This subscription's member name in its group."""
        self._matcher = GlobPattern(pattern)
        self._streams = StreamSet()
        self._held: dict[str, set[bytes]] = {}
        """Entries read and not settled yet, renewed so that no one claims them."""
        self._acks = AckBatch(self, self._client, self._group)
        self._claims = Claims(self, self._client, self._group, self.consumer, self._held)
        self._keeper: asyncio.Task[None] | None = None
        self._opened = False
        self._read_script = self._client.register_script(READ_SCRIPT)
        client, group = self._client, self._group
        self._slots = (
            SlotReads(client, group, self.consumer) if isinstance(client, RedisCluster) else None
        )
        """On a cluster: the reads, one per hash slot (docs/redis-cluster.md)."""
        self._plain_until = 0.0
        """Until when reads skip the script (after Redis refused it)."""
        self._ready: list[RedisStreamDelivery] = []
        """Deliveries a reconnect read, for the next `_receive`."""
        self._next_discovery = 0.0
        self._next_claim = 0.0
        self.lag: int | None = None
        """Entries of the streams read not delivered to the group yet, as last
        measured (``XINFO GROUPS``); None until then, or when Redis cannot say."""
        self._measurer: asyncio.Task[None] | None = None

    # -- the link ----------------------------------------------------------------

    async def _connect(self) -> None:
        broker = self._stream_broker
        try:
            if not self._opened:
                # Where a group made on a stream that exists now starts.
                await self._discover("$" if broker.start_from == "new" else "0", strict=True)
                self._opened = True
                if not self.closed:  # close() waits only for what it can see
                    keeping = self._claims.keep(broker.claim_idle / 3)
                    self._keeper = asyncio.create_task(keeping, name=f"keep {self!r}")
                    measuring = self._measure_lag(broker.claim_idle / 3)
                    self._measurer = asyncio.create_task(measuring, name=f"lag of {self!r}")
            else:
                # Back only once a read works (READONLY, OOM ... fail here).
                await self._discover("0")
                if self._streams.reading:
                    self._ready = await self._read(block=False)
        except REDIS_ERRORS as exc:
            raise lost(exc) from exc
        self._next_discovery = asyncio.get_running_loop().time() + broker.discovery_interval

    async def _disconnect(self) -> None:
        """Only a cluster's reads in flight: commands take pooled connections."""
        if self._slots is not None:
            await self._slots.cancel()

    def _fatal(self, error: BaseException) -> BaseException | None:
        return fatal(self, error)

    async def _discover(self, start: str, *, strict: bool = False) -> None:
        """Join the group on registered streams matching the pattern that it
        is not read on yet, and on those whose group must be made again."""
        keys: Any = await self._client.smembers(self._stream_broker.registry_key)
        wanted = self._streams.to_join(keys, self._matcher.matches)
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
                if self._streams.miss(key):
                    logger.warning(
                        "%r could not make its group on %s (%s); trying again every %.1fs",
                        self,
                        quote(key, 200),
                        describe(result),
                        self._stream_broker.discovery_interval,
                    )
                continue
            if self._streams.join(key):
                logger.info("%r reads %s again: it is a stream now", self, quote(key, 200))

    def _misfit(self, key: str, error: BaseException) -> None:
        # Found again by discovery once the key is a stream.
        if self._streams.misfit(key):
            logger.warning(
                "%r skips %s: the key holds another type than a stream (%s); it is read "
                "once it is a stream again",
                self,
                quote(key, 200),
                describe(error),
            )

    async def _measure_lag(self, every: float) -> None:
        """Set `lag` every `every` seconds: one ``XINFO GROUPS`` per stream
        read, pipelined, off the read path; a failure leaves it None."""
        while not being_cancelled():  # a cancellation redis-py swallowed ends it too
            await asyncio.sleep(every)
            keys = list(self._streams.reading)
            try:
                async with asyncio.timeout(self._stream_broker._reply_due()):
                    async with self._client.pipeline(transaction=False) as pipe:
                        for key in keys:
                            pipe.xinfo_groups(key)
                        replies = await pipe.execute(raise_on_error=False) if keys else []
                self.lag = streams_lag(replies, self._group)
            except Exception as exc:
                self.lag = None
                logger.debug("%r could not measure its lag: %s", self, quote(repr(exc), 300))

    # -- receiving ----------------------------------------------------------------

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
            elif self._streams.reading:
                deliveries = await self._read(block=True)
            else:
                # No stream yet: look again at the next discovery.
                await asyncio.sleep(broker.discovery_interval)
        except REDIS_ERRORS as exc:
            raise lost(exc) from exc
        if being_cancelled():  # a cancellation redis-py swallowed
            raise asyncio.CancelledError
        return deliveries

    async def _read(self, *, block: bool) -> list[RedisStreamDelivery]:
        """Send the acknowledgements waiting and read the next batch, in one
        round trip: through the read script while entries are waiting, else
        with a blocking ``XREADGROUP``. On a cluster, slot by slot."""
        if self._slots is not None:
            return await self._read_slots(block=block)
        if asyncio.get_running_loop().time() >= self._plain_until:
            deliveries = await self._read_scripted()
            if deliveries or (deliveries is not None and not block):
                return deliveries
        return await self._read_plain(block=block)

    async def _read_scripted(self) -> list[RedisStreamDelivery] | None:
        """The read script; None when Redis refused it (the plain read says why)."""
        keys = list(self._streams.reading)
        acks = self._acks.take()
        sent = {key: acks.pop(key) for key in keys if key in acks}
        if acks:  # of streams no longer read: on their own
            self._acks.requeue(acks)
            await self._acks.flush()
        args = script_args(self._group, self.consumer, self._stream_broker.batch_size, keys, sent)
        try:
            flat: Any = await self._read_script(keys=keys, args=args)
        except BaseException as exc:
            self._acks.requeue(sent)  # maybe not run: XACK again later (it is idempotent)
            if isinstance(exc, redis_errors.ResponseError):
                # OOM refuses scripts, an ACL may forbid them: read plainly a while.
                self._plain_until = asyncio.get_running_loop().time() + PLAIN_FOR
                return None
            raise
        return self._deliveries_of(script_entries(flat))

    async def _read_plain(self, *, block: bool) -> list[RedisStreamDelivery]:
        """Send the acknowledgements waiting, then ``XREADGROUP``, pipelined."""
        broker = self._stream_broker
        acks = self._acks.take()
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, ids in acks.items():
                    pipe.xack(key, self._group, *ids)
                pipe.xreadgroup(
                    self._group,
                    self.consumer,
                    dict[Any, Any](self._streams.reading),
                    count=broker.batch_size,
                    block=broker.block_ms if block else None,
                )
                results = await pipe.execute(raise_on_error=False)
        except BaseException:
            self._acks.requeue(acks)  # maybe not sent: XACK again later (it is idempotent)
            raise
        self._acks.check(acks, results)
        replies = results[-1]
        if isinstance(replies, redis_errors.ResponseError):
            return await self._read_failed(replies)
        return self._deliveries_of(read_entries(replies))

    async def _read_slots(self, *, block: bool) -> list[RedisStreamDelivery]:
        """Send the acknowledgements waiting, then read each slot's streams."""
        broker, slots = self._stream_broker, self._slots
        assert slots is not None
        await self._acks.flush()
        block_ms = broker.block_ms if block else None
        entries, refused = await slots.read(self._streams.reading, broker.batch_size, block_ms)
        if refused is not None:  # what it read stays pending if this raises
            await self._read_failed(refused)
        return self._deliveries_of(entries)

    def _deliveries_of(self, streams: Iterable[Entries]) -> list[RedisStreamDelivery]:
        """Deliveries of the entries read, held until settled."""
        deliveries: list[RedisStreamDelivery] = []
        for key, ids, data in streams:
            held = self._held.get(key)
            if held is None:
                held = self._held[key] = set()
            held.update(ids)
            deliveries.extend(
                RedisStreamDelivery(self, key, entry_id, body)
                for entry_id, body in zip(ids, data, strict=True)
            )
        return deliveries

    async def _read_failed(self, error: redis_errors.ResponseError) -> list[RedisStreamDelivery]:
        """A group or a stream was deleted, or a key became another type:
        mend what can be mended here; raise the rest to the reconnect loop."""
        if self.closed:
            return []
        if group_lost(error):
            logger.warning(
                "%r lost its group on a stream (%s); making it again, from each stream's "
                "first entry",
                self,
                describe(error),
            )
            await self._join(self._streams.to_mend(), "0")
            return []
        if code(error) == "WRONGTYPE":
            keys = list(self._streams.reading)
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.type(key)
                types = await pipe.execute()
            wrong = [
                k for k, t in zip(keys, types, strict=True) if text(t) not in ("stream", "none")
            ]
            for key in wrong:
                self._misfit(key, error)
            if wrong:
                return []
        raise error

    async def _claim(self) -> tuple[list[RedisStreamDelivery], bool]:
        """Claim the entries idle past `claim_idle` (`CLAIM_CALLS` per stream);
        also returns whether a pass was cut short by that bound."""
        broker = self._stream_broker
        claimed, more = await self._claims.claim(
            list(self._streams.reading),
            broker.claim_idle,
            broker.batch_size,
            broker.idle_consumer_timeout,
        )
        deliveries = [RedisStreamDelivery(self, *entry) for entry in claimed]
        # Held (renewed) only once handed out: a claim that failed half-way
        # leaves its entries to be claimed again.
        for delivery in deliveries:
            self._held.setdefault(delivery.channel, set()).add(delivery.entry_id)
        return deliveries, more

    # -- settling -----------------------------------------------------------------

    def _forget(self, delivery: RedisStreamDelivery) -> None:
        held = self._held.get(delivery.channel)
        if held is not None:
            held.discard(delivery.entry_id)

    def _queue_ack(self, delivery: RedisStreamDelivery) -> None:
        self._forget(delivery)
        self._acks.add(delivery.channel, delivery.entry_id)

    async def _dead_letter(
        self, delivery: RedisStreamDelivery, reason: str, description: str
    ) -> None:
        self._forget(delivery)
        broker = self._stream_broker
        # Read only here, not on every read: whether the entry was a replay.
        entry = await self._client.xrange(delivery.channel, delivery.entry_id, delivery.entry_id)
        record = DeadLetterRecord.of(
            delivery.channel,
            delivery.data,
            reason,
            description,
            delivery.delivery_count,
            replay_count=replay_count_of(entry[0][1] if entry else None),
        )
        key, limit, group = broker.dead_letter_key, broker.dead_letter_limit, self._group
        if self._slots is not None:  # two slots: no transaction (docs/redis-cluster.md)
            await append_dead_letter(
                self._client, key, limit, record, entry_id=delivery.entry_id, group=group
            )
            await self._client.xack(delivery.channel, group, delivery.entry_id)
            return
        async with self._client.pipeline(transaction=True) as pipe:
            append_dead_letter(pipe, key, limit, record, entry_id=delivery.entry_id, group=group)
            pipe.xack(delivery.channel, group, delivery.entry_id)
            await pipe.execute()

    # -- closing ------------------------------------------------------------------

    async def _closing(self) -> None:
        """Send the acknowledgements waiting, then remove what the
        subscription made for itself. The tasks it started (acknowledgements,
        renewals) are over when this returns: none of them uses the client
        afterwards (which `stop()` may close next), nor opens a connection."""
        # First, so that no flush starts while this waits: one that did went
        # on after close() returned, on a client closed meanwhile.
        self._acks.stop_timer()
        if self._slots is not None:
            await self._slots.cancel()
        tasks = [task for task in (self._keeper, self._measurer) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._acks.wait_flushes()
        try:
            await self._acks.flush()
            if self.group is None:
                await self._destroy_private_group()
            else:
                await self._leave_group()
        except REDIS_ERRORS as exc:
            logger.warning("%r could not clean up after itself: %s", self, describe(exc))

    async def _destroy_private_group(self) -> None:
        keys = sorted(self._streams.joined)
        if not keys:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.xgroup_destroy(key, self._group)
            await pipe.execute(raise_on_error=False)

    async def _leave_group(self) -> None:
        for key in sorted(self._streams.joined):
            if await self._claims.delete_member(key, self.consumer) < 0:
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
