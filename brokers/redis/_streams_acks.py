"""Redis Streams: acknowledgements, batched.

A subscription's acknowledgements wait here and go out as one ``XACK`` per
stream: in the round trip of its next read, or on their own after
`ACK_DELAY` while the reader waits (docs/redis-streams.md, "Settlement and
dead letters").
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from brokers.redis._client import Client
from brokers.redis._errors import REDIS_ERRORS, describe
from brokers.redis._streams_replies import refused_acks
from mediator.transport import ReconnectingSubscription

logger = logging.getLogger("mediator.brokers.redis")

ACK_DELAY = 0.05
"""Seconds an acknowledgement waits for the next read before it is sent alone
(well under `claim_idle`: a member's acknowledged entries are not renewed)."""


class AckBatch:
    """The acknowledgements of one subscription not sent yet, per stream."""

    def __init__(self, owner: ReconnectingSubscription[Any], client: Client, group: str) -> None:
        self._owner = owner
        self._client = client
        self._group = group
        self.pending: dict[str, list[bytes]] = {}
        """Entry ids to acknowledge, per stream key, in settling order."""
        self.flushes: set[asyncio.Task[None]] = set()
        """Sends of acknowledgements on their own, under way."""
        self._timer: asyncio.TimerHandle | None = None

    def add(self, key: str, entry_id: bytes) -> None:
        """Queue the acknowledgement of `entry_id` of stream `key`."""
        ids = self.pending.get(key)
        if ids is None:
            self.pending[key] = [entry_id]
        else:
            ids.append(entry_id)
        if self._timer is None and not self._owner.closed:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(ACK_DELAY, self._flush_soon)

    def take(self) -> dict[str, list[bytes]]:
        """Every acknowledgement waiting, to send now."""
        acks, self.pending = self.pending, {}
        self.stop_timer()
        return acks

    def stop_timer(self) -> None:
        """Send nothing on its own until the next `add`."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def requeue(self, acks: dict[str, list[bytes]]) -> None:
        """Queue again acknowledgements that may not have been sent (``XACK``
        is idempotent)."""
        for key, ids in acks.items():
            self.pending.setdefault(key, []).extend(ids)

    def check(self, acks: dict[str, list[bytes]], results: list[Any]) -> None:
        """Queue again the XACKs Redis refused (READONLY, OOM ...); NOGROUP
        means the group is gone and there is nothing left to acknowledge."""
        refused = refused_acks(acks, results)
        if refused:
            self.requeue(refused)
            logger.warning(
                "%r could not acknowledge %d entries (%s); they are sent again with the next read",
                self._owner,
                sum(map(len, refused.values())),
                describe(next(r for r in results if isinstance(r, Exception))),
            )

    def _flush_soon(self) -> None:
        # The reader waits in XREADGROUP: send the acknowledgements on their own.
        self._timer = None
        if self._owner.closed:  # close() sends what is queued, and waits for it
            return
        task = asyncio.get_running_loop().create_task(self.flush())
        self.flushes.add(task)
        task.add_done_callback(self.flushes.discard)

    async def wait_flushes(self) -> None:
        """Return once no send on its own is under way."""
        while self.flushes:
            await asyncio.gather(*self.flushes, return_exceptions=True)

    async def flush(self) -> None:
        """Send every acknowledgement waiting, one ``XACK`` per stream."""
        acks = self.take()
        if not acks:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, ids in acks.items():
                    pipe.xack(key, self._group, *ids)
                self.check(acks, await pipe.execute(raise_on_error=False))
        except REDIS_ERRORS as exc:
            self.requeue(acks)
            logger.warning(
                "%r could not acknowledge %d entries (%s); they are sent again with the next read",
                self._owner,
                sum(map(len, acks.values())),
                describe(exc),
            )
