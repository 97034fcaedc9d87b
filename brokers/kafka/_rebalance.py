"""Kafka: a group subscription's side of its group's rebalances.

Partitions revoked are committed and hand out nothing more; of those
assigned, the ones kept go on from what was fetched, the others are
dropped, and new ones without a commit start where `start_from` says,
committed at once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiokafka import ConsumerRebalanceListener, TopicPartition  # type: ignore[import-untyped]

from brokers.kafka._partitions import Partition

if TYPE_CHECKING:
    from brokers.kafka._subscription import KafkaSubscription

__all__ = ["Rebalance"]

logger = logging.getLogger("mediator.brokers.kafka")


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka's rebalance callbacks for one subscription."""

    def __init__(self, subscription: KafkaSubscription) -> None:
        self._subscription = subscription

    async def on_partitions_revoked(self, revoked: set[Partition]) -> None:
        # Commit what is done before anyone else reads these partitions, and
        # hand out no more of them: what is handled from here on would be
        # handled again by their next reader.
        subscription = self._subscription
        consumer = subscription._consumer
        # Not ready until the rebalance hands out partitions again.
        subscription._joined.clear()
        held = subscription._partitions
        parts = [held[tp] for tp in revoked if tp in held]
        for part in parts:
            part.revoke()
        if consumer is not None and parts:
            await subscription._commit(consumer, parts)

    async def on_partitions_assigned(self, assigned: set[Partition]) -> None:
        subscription = self._subscription
        consumer = subscription._consumer
        subscription._fetcher.paused = ()  # a new assignment: aiokafka paused none of it
        try:
            previous, kept = subscription._partitions, {}
            for tp, part in previous.items():
                if tp in assigned:
                    # Ours again: go on from what was fetched, not the commit.
                    kept[tp] = part
                    part.restore()
                    if part.next_offset >= 0:
                        consumer.seek(tp, part.next_offset)
                    subscription._queue(part)
                else:
                    part.drop()
            fresh = [tp for tp in assigned if tp not in kept]
            for tp in fresh:
                kept[tp] = subscription._new_partition(tp)
            subscription._partitions = kept
            logger.info(
                "%r: %d partition(s) assigned, %d new", subscription, len(assigned), len(fresh)
            )
            await self.start_where_told(consumer, fresh)
            subscription._started = True
        except Exception as exc:
            subscription._failure = exc
            subscription._wakeup.set()
        finally:
            subscription._joined.set()

    async def start_where_told(self, consumer: Any, fresh: list[Partition]) -> None:
        """Seek each of `fresh` the group has no commit for to where it
        starts, and commit that at once, so that the members and restarts
        that follow go on from it (docs/kafka.md, "Groups"): the end of the
        topics that existed when the subscription first connected, for a
        new group with `start_from` "new"; the first record otherwise."""
        if not fresh:
            return
        subscription = self._subscription
        broker, initial = subscription._owner, subscription._initial or {}
        known = {TopicPartition(topic, p) for topic, ids in initial.items() for p in ids}
        committed = await (await broker._admin()).list_consumer_group_offsets(
            broker.group_id(subscription.group or ""), partitions=sorted(known.union(fresh))
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
            subscription._partitions[tp].committed = offset
