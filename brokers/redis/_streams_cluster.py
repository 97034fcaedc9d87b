"""Redis Streams on a cluster: reading a group's streams slot by slot.

On a Redis Cluster a command's keys must all hash to one slot, so one
``XREADGROUP`` cannot read streams of two slots, nor can the read script
(docs/redis-cluster.md, "What is read where"). A subscription reads there
with one ``XREADGROUP`` per slot holding its streams, each routed by
redis-py to the primary that holds the slot:

- without BLOCK (after a reconnect), every slot in one pipeline, which
  redis-py sends as one round trip per node;
- with BLOCK, one read per slot in flight at a time, concurrently, each on
  a connection of its own: the subscription takes whatever reads have
  returned as soon as one has, and the others stay in flight for its next
  read, so that no entry a read returns is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from brokers.redis._streams_replies import Entries, read_entries

Read = tuple[list[Entries], redis_errors.ResponseError | None]
"""The entries read, stream by stream, and an error reply a slot's read got."""


class SlotReads:
    """The reads in flight of one subscription on a cluster, by hash slot."""

    def __init__(self, client: RedisCluster, group: str, consumer: str) -> None:
        self._client = client
        self._group = group
        self._consumer = consumer
        self._reads: dict[int, asyncio.Task[Any]] = {}
        """The blocked XREADGROUP of each slot, while in flight."""

    def by_slot(self, keys: Iterable[str]) -> dict[int, dict[Any, Any]]:
        """`keys`, grouped by hash slot, as XREADGROUP takes them (key -> ">")."""
        slots: dict[int, dict[Any, Any]] = {}
        for key in keys:
            slots.setdefault(self._client.keyslot(key), {})[key] = ">"
        return slots

    async def read(self, keys: Iterable[str], count: int, block_ms: int | None) -> Read:
        """The next entries of `keys`: at once (`block_ms` None), or as soon
        as a slot has some (or every read's BLOCK ran out)."""
        slots = self.by_slot(keys)
        if block_ms is None:
            return await self._read_now(slots, count)
        for slot, streams in slots.items():
            if slot not in self._reads:
                read = self._client.xreadgroup(
                    self._group, self._consumer, streams, count=count, block=block_ms
                )
                self._reads[slot] = asyncio.ensure_future(read)
        if not self._reads:
            return [], None
        await asyncio.wait(self._reads.values(), return_when=asyncio.FIRST_COMPLETED)
        entries: list[Entries] = []
        refused: redis_errors.ResponseError | None = None
        failed: BaseException | None = None
        for slot, task in list(self._reads.items()):
            if not task.done():
                continue
            del self._reads[slot]
            error = task.exception()
            if error is None:
                entries.extend(read_entries(task.result()))
            elif isinstance(error, redis_errors.ResponseError):
                refused = error
            else:
                failed = error
        if failed is not None and not entries:
            raise failed
        # A connection error with entries read elsewhere: those first; the
        # failed slot is read again (and fails again, if it must) next time.
        return entries, refused

    async def _read_now(self, slots: dict[int, dict[Any, Any]], count: int) -> Read:
        if not slots:
            return [], None
        async with self._client.pipeline(transaction=False) as pipe:
            for streams in slots.values():
                pipe.xreadgroup(self._group, self._consumer, streams, count=count)
            replies = await pipe.execute(raise_on_error=False)
        entries: list[Entries] = []
        refused: redis_errors.ResponseError | None = None
        for reply in replies:
            if isinstance(reply, redis_errors.ResponseError):
                refused = reply
            elif isinstance(reply, BaseException):
                raise reply
            else:
                entries.extend(read_entries(reply))
        return entries, refused

    async def cancel(self) -> None:
        """Give up the reads in flight. An entry one of them had read stays
        pending for this member, and is claimed after `claim_idle`."""
        reads, self._reads = list(self._reads.values()), {}
        for task in reads:
            task.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
