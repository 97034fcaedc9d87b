"""Redis Streams: claiming idle entries, and keeping one's own from being claimed.

A claim pass takes over the entries of a group left idle past `claim_idle`
(a crashed or stopped member's, or released ones) and removes idle members
with nothing pending; meanwhile a subscription renews the entries it holds
(docs/redis-streams.md, "Claiming", "Slow handlers", "What stays in Redis").
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from brokers.redis._client import Client
from brokers.redis._errors import REDIS_ERRORS, describe
from brokers.redis._streams_replies import claimed_entries, delivery_counts, idle_members
from mediator.transport import being_cancelled, quote

logger = logging.getLogger("mediator.brokers.redis")

CLAIM_CALLS = 10
"""``XAUTOCLAIM`` calls per stream in one claim pass: a pass claims at most
10 x `batch_size` entries of a stream and looks at no more than 100 x
`batch_size` of its pending entries (Redis looks at 10 x COUNT per call)."""

# Deletes a group member only if nothing is pending for it, atomically: a
# member deleted with pending entries would take them out of the group unhandled.
DELETE_IF_IDLE = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return -1 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""

Claimed = tuple[str, bytes, bytes, int]
"""A claimed entry: its stream, its id, its ``data`` and its delivery count."""


class Claims:
    """The claim passes and renewals of one member of a group."""

    def __init__(
        self,
        owner: object,
        client: Client,
        group: str,
        consumer: str,
        held: dict[str, set[bytes]],
    ) -> None:
        self._owner = owner
        self._client = client
        self._group = group
        self._consumer = consumer
        self._held = held
        self.cursors: dict[str, str] = {}
        """Where each stream's next XAUTOCLAIM starts: the cursor the last one returned."""

    async def claim(
        self, keys: list[str], idle: float, count: int, idle_consumer_timeout: float | None
    ) -> tuple[list[Claimed], bool]:
        """Claim the entries of `keys` idle past `idle` seconds, `count` per
        ``XAUTOCLAIM``, and remove idle members that hold nothing.

        Follows each stream's cursor, from pass to pass too, for up to
        `CLAIM_CALLS` calls per stream; also returns whether a stream's
        cursor was still short of the end of its pending list."""
        idle_ms = int(idle * 1000)
        claimed: list[tuple[str, list[tuple[bytes, Any]]]] = []
        going = keys
        for call in range(CLAIM_CALLS):
            if not going:
                break
            keys, going = going, []
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.xautoclaim(
                        key,
                        self._group,
                        self._consumer,
                        idle_ms,
                        start_id=self.cursors.get(key, "0-0"),
                        count=count,
                    )
                    if call == 0:
                        pipe.xinfo_consumers(key, self._group)
                results = await pipe.execute(raise_on_error=False)
            step = 2 if call == 0 else 1
            for index, key in enumerate(keys):
                reply = results[step * index]
                members = results[step * index + 1] if call == 0 else None
                if isinstance(reply, Exception) or isinstance(members, Exception):
                    continue  # a vanished group shows in the next read
                cursor, entries = claimed_entries(reply)
                self.cursors[key] = cursor
                if entries:
                    claimed.append((key, entries))
                if cursor != "0-0":
                    going.append(key)
                if members is not None and idle_consumer_timeout is not None:
                    await self._remove_idle_members(key, members, idle_consumer_timeout)
        return (await self._counted(claimed) if claimed else []), bool(going)

    async def _counted(self, claimed: list[tuple[str, list[tuple[bytes, Any]]]]) -> list[Claimed]:
        """What each XAUTOCLAIM returned, with the delivery counts (the
        consumer dead-letters those delivered too often)."""
        async with self._client.pipeline(transaction=False) as pipe:
            for key, entries in claimed:
                pipe.xpending_range(
                    key,
                    self._group,
                    min=entries[0][0],
                    max=entries[-1][0],
                    count=len(entries) * 2,
                    consumername=self._consumer,
                )
            pendings = await pipe.execute(raise_on_error=False)
        out: list[Claimed] = []
        for (key, entries), pending in zip(claimed, pendings, strict=True):
            counts = {} if isinstance(pending, Exception) else delivery_counts(pending)
            for entry_id, fields in entries:
                out.append((key, entry_id, fields.get(b"data", b""), counts.get(entry_id, 2)))
        return out

    async def _remove_idle_members(self, key: str, members: Any, limit: float) -> None:
        for name, idle in idle_members(members, self._consumer, limit):
            if await self.delete_member(key, name) == 0:
                logger.info(
                    "removed member %s of group %s on stream %s: idle for %.1fs with nothing "
                    "pending",
                    quote(repr(name), 200),
                    quote(repr(self._group), 200),
                    quote(key, 200),
                    idle,
                )

    async def delete_member(self, key: str, name: str) -> int:
        """Delete member `name` of the group on `key` if nothing is pending
        for it: 0 when it is gone, -1 when it holds entries."""
        result: Any = await self._client.eval(DELETE_IF_IDLE, 1, key, self._group, name)
        return int(result)

    async def keep(self, every: float) -> None:
        """Renew the entries held (``XCLAIM ... JUSTID``) every `every`
        seconds, so that no member claims them while their handlers run."""
        while not being_cancelled():  # a cancellation redis-py swallowed ends it too
            await asyncio.sleep(every)
            held: dict[str, list[Any]] = {k: list(ids) for k, ids in self._held.items() if ids}
            if not held:
                continue
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for key, ids in held.items():
                        pipe.xclaim(key, self._group, self._consumer, 0, ids, justid=True)
                    await pipe.execute(raise_on_error=False)
            except REDIS_ERRORS as exc:
                logger.warning(
                    "%r could not renew the entries it holds (%s); they may be claimed by "
                    "another member after claim_idle",
                    self._owner,
                    describe(exc),
                )
            except Exception:
                # Not Redis's answer: say so loudly, and renew at the next turn
                # (a dead renewal lets peers claim entries still being handled).
                logger.exception(
                    "%r could not renew the entries it holds; trying again in %.1fs",
                    self._owner,
                    every,
                )
