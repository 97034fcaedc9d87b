"""Kafka: a subscription's fetching, the task that reads ahead of its handlers.

It polls the partitions with room (pausing them all when every one has
been full for long), commits every `commit_interval` and, without a group,
chooses the partitions itself: every one of the matching topics, with the
topics that appear found every `discovery_interval`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition  # type: ignore[import-untyped]

from brokers.kafka._errors import TRANSIENT
from brokers.kafka._partitions import Partition
from mediator.transport import quote

if TYPE_CHECKING:
    from brokers.kafka._subscription import KafkaSubscription

__all__ = ["Fetcher"]

logger = logging.getLogger("mediator.brokers.kafka")


class Fetcher:
    """The fetch loop of one subscription, and what it paused."""

    def __init__(self, subscription: KafkaSubscription) -> None:
        self._subscription = subscription
        self.paused: tuple[Partition, ...] = ()
        """The partitions paused on the consumer; a new assignment pauses none."""
        self._full_since: float | None = None
        options = subscription._owner.consumer_options
        self._keepalive = options.get("max_poll_interval_ms", 300_000) / 1000 / 4
        """Seconds every partition may be full before polling with all paused."""
        self._topics: dict[str, list[int]] = {}
        """Without a group: the matching topics and their partitions, as last assigned."""

    async def run(self, consumer: Any) -> None:
        """Fetch ahead from the partitions with room, commit every
        `commit_interval` and, without a group, look for new topics every
        `discovery_interval`; a failure is handed to the subscription."""
        subscription = self._subscription
        broker = subscription._owner
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
                    await subscription._commit(consumer)
                if subscription.group is None and now >= next_discovery:
                    next_discovery = now + broker.discovery_interval
                    await self._discover(consumer)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            subscription._failure = exc
            subscription._wakeup.set()

    async def _poll(self, consumer: Any, poll_ms: int) -> Mapping[Partition, list[Any]]:
        """The next records of the partitions that are not full; a partition
        that has room again cuts the wait short."""
        subscription = self._subscription
        parts = subscription._partitions
        open_ = [tp for tp, part in parts.items() if not part.full]
        if len(open_) == len(parts):
            self._full_since = None
            if self.paused:
                # Only what is still assigned: a rebalance may be under way.
                assigned = consumer.assignment()
                consumer.resume(*(tp for tp in self.paused if tp in assigned))
                self.paused = ()
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
                if not self.paused:
                    assigned = consumer.assignment()
                    self.paused = tuple(tp for tp in parts if tp in assigned)
                    consumer.pause(*self.paused)
                getting = asyncio.ensure_future(consumer.getmany(timeout_ms=poll_ms))
        room = subscription._room
        room.clear()
        waiting = asyncio.ensure_future(room.wait())
        try:
            await asyncio.wait((getting, waiting), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            if not getting.done():
                getting.cancel()
                await asyncio.wait((getting,))
        if getting.cancelled():
            return {}
        batches: Mapping[Partition, list[Any]] = getting.result()
        return batches

    def _take_in(self, batches: Mapping[Partition, list[Any]]) -> None:
        subscription = self._subscription
        parts = subscription._partitions
        for tp, records in batches.items():
            part = parts.get(tp)
            if part is not None and part.add(records):
                subscription._queue(part)

    # -- without a group ---------------------------------------------------

    async def assign(self, consumer: Any, topics: dict[str, list[int]]) -> None:
        """Read every partition of `topics`, resuming those already read,
        from the end of the topics that existed at the first connect (new
        records only), and from the beginning of the others."""
        subscription = self._subscription
        self._topics = topics
        tps = [TopicPartition(topic, p) for topic, ids in sorted(topics.items()) for p in ids]
        consumer.assign(tps)
        self.paused = ()
        previous, kept = subscription._partitions, {}
        to_end: list[Partition] = []
        for tp in tps:
            part = previous.get(tp)
            if part is None:
                part = subscription._new_partition(tp)
                if not subscription._started:
                    to_end.append(tp)
            elif part.next_offset >= 0:
                consumer.seek(tp, part.next_offset)
            kept[tp] = part
        for tp, part in previous.items():
            if tp not in kept:
                part.drop()
        subscription._partitions = kept
        if to_end:
            # Explicit offsets (see Rebalance.start_where_told); the rest
            # start at the first record, as auto_offset_reset says.
            for tp, offset in (await consumer.end_offsets(to_end)).items():
                consumer.seek(tp, offset)
        subscription._started = True

    async def _discover(self, consumer: Any) -> None:
        subscription = self._subscription
        try:
            topics = await subscription._matching_topics()
        except TRANSIENT as exc:
            logger.warning("%r: could not look for new topics: %s", subscription, quote(repr(exc)))
            return
        if topics != self._topics:
            await self.assign(consumer, topics)
