"""Claiming rows: the relay's SQL, and the lease it holds on the rows it
claimed while it publishes them (docs/outbox.md, "The lease")."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
from sqlalchemy import BindParameter, bindparam, delete, func, literal, or_, select, update

from mediator._limits import quote
from mediator.outbox._outbox import Outbox
from mediator.outbox._tables import PENDING, SENT, utcnow

__all__ = ["CLEANUP_BATCH", "ClaimedRow", "Leases", "RelayStatements"]

logger = logging.getLogger("mediator.outbox")

CLEANUP_BATCH = 1000
"""Rows one cleanup statement deletes."""


@attrs.frozen
class ClaimedRow:
    id: int
    partition_key: str | None
    body: str
    attempts: int


class RelayStatements:
    """The statements of one relay, built once. Every change of a claimed row
    applies only while the relay still holds it (``locked_by`` = ``me``)."""

    def __init__(self, outbox: Outbox, batch_size: int) -> None:
        table = outbox.tables.outbox
        now: BindParameter[dt.datetime] = bindparam("now")
        earlier = table.alias("earlier")
        # A keyed row waits while an earlier row of its key is held by a relay
        # or waiting for its retry; an earlier row that is due is claimed in
        # the same batch, ahead of it (the batch is in id order).
        blocked = (
            select(literal(1))
            .where(
                earlier.c.partition_key == table.c.partition_key,
                earlier.c.id < table.c.id,
                earlier.c.status == PENDING,
                or_(earlier.c.next_attempt_at > now, earlier.c.locked_until >= now),
            )
            .exists()
        )
        due = (
            select(table.c.id)
            .where(
                table.c.status == PENDING,
                table.c.next_attempt_at <= now,
                or_(table.c.locked_until.is_(None), table.c.locked_until < now),
                or_(table.c.partition_key.is_(None), ~blocked),
            )
            .order_by(table.c.id)
            .limit(batch_size)
        )
        lease: dict[str, Any] = {"locked_by": bindparam("me"), "locked_until": bindparam("until")}
        returned = (table.c.id, table.c.partition_key, table.c.body, table.c.attempts)
        self.claim_lock: Any = None
        """Taken before the claim on PostgreSQL (None on SQLite)."""
        self.claim: Any
        """Leases up to `batch_size` due rows to ``me`` until ``until``; returns them."""
        if outbox.dialect == "postgresql":
            claimable = due.with_for_update(skip_locked=True, of=table).cte("claimable")
            self.claim = (
                update(table)
                .where(table.c.id == claimable.c.id)
                .values(**lease)
                .returning(*returned)
            )
            # Claims take turns (each is one short statement), so that no relay
            # claims a keyed row while another is claiming an earlier row of the
            # same key; SKIP LOCKED passes over rows other relays are marking.
            self.claim_lock = select(func.pg_advisory_xact_lock(outbox.tables.claim_lock))
        else:
            # SQLite runs one writing statement at a time: the claim is atomic.
            self.claim = (
                update(table).where(table.c.id.in_(due)).values(**lease).returning(*returned)
            )
        # Every change of a claimed row is made only while this relay holds
        # it: after its lease expired another relay may have claimed it.
        held_ids = table.c.id.in_(bindparam("ids", expanding=True))
        mine = (table.c.locked_by == bindparam("me"), table.c.status == PENDING)
        self.renew = (
            update(table)
            .where(held_ids, *mine)
            .values(locked_until=bindparam("until"))
            .returning(table.c.id)
        )
        self.mark_sent = (
            update(table)
            .where(held_ids, *mine)
            .values(status=SENT, sent_at=bindparam("at"), locked_by=None, locked_until=None)
            .returning(table.c.id)
        )
        self.mark_failed = (
            update(table)
            .where(table.c.id == bindparam("row"), *mine)
            .values(
                status=bindparam("new_status"),
                attempts=bindparam("new_attempts"),
                next_attempt_at=bindparam("due"),
                last_error=bindparam("error"),
                locked_by=None,
                locked_until=None,
            )
        )
        self.release = (
            update(table).where(held_ids, *mine).values(locked_by=None, locked_until=None)
        )
        old_sent = (
            select(table.c.id)
            .where(table.c.status == SENT, table.c.sent_at < bindparam("cutoff"))
            .order_by(table.c.id)
            .limit(CLEANUP_BATCH)
        )
        self.delete_sent = delete(table).where(table.c.id.in_(old_sent))
        keys = outbox.tables.keys
        old_keys = (
            select(keys.c.partition_key)
            .where(keys.c.touched_at < bindparam("cutoff"))
            .limit(CLEANUP_BATCH)
        )
        self.delete_keys = delete(keys).where(keys.c.partition_key.in_(old_keys))


class Leases:
    """Claims due rows in the relay's name, and renews their lease while a
    batch is being published; rows found taken by another relay are lost."""

    def __init__(
        self, outbox: Outbox, statements: RelayStatements, name: str, lease: dt.timedelta
    ) -> None:
        self.outbox = outbox
        self.statements = statements
        self.name = name
        self.lease = lease

    async def claim(self) -> list[ClaimedRow]:
        """Lease up to a batch of due rows, in id order."""
        now = utcnow()
        parameters = {"now": now, "until": now + self.lease, "me": self.name}
        async with self.outbox.writer.begin() as connection:
            if self.statements.claim_lock is not None:
                await connection.execute(self.statements.claim_lock)
            result = await connection.execute(self.statements.claim, parameters)
            rows = [ClaimedRow(*row) for row in result]
        rows.sort(key=lambda row: row.id)  # RETURNING promises no order
        return rows

    @asynccontextmanager
    async def renewing(self, ids: list[int], lost: set[int]) -> AsyncIterator[None]:
        """Renew the lease of rows `ids` while the block publishes them; rows
        found taken by another relay are added to `lost`."""
        done = asyncio.Event()
        renewing = asyncio.create_task(self._renew(ids, lost, done))
        try:
            yield
        except BaseException:
            renewing.cancel()
            raise
        finally:
            # A renewal under way finishes: cancelled, it would cost the connection.
            done.set()
            await asyncio.gather(renewing, return_exceptions=True)

    async def _renew(self, ids: list[int], lost: set[int], done: asyncio.Event) -> None:
        # A third of the lease: one renewal can fail and the next still comes in time.
        every = self.lease.total_seconds() / 3
        while True:
            try:
                async with asyncio.timeout(every):
                    await done.wait()
                return
            except TimeoutError:
                pass
            held = [row for row in ids if row not in lost]
            if not held:
                return
            now = utcnow()
            try:
                async with self.outbox.writer.begin() as connection:
                    result = await connection.execute(
                        self.statements.renew,
                        {"ids": held, "me": self.name, "until": now + self.lease},
                    )
                    kept = set(result.scalars())
            except Exception as exc:
                logger.warning(
                    "outbox relay %s: renewing the lease of %d row(s) failed (%s); "
                    "trying again in %.2f s",
                    self.name,
                    len(held),
                    quote(repr(exc)),
                    every,
                )
                continue
            for row in held:
                if row not in kept:
                    self.lose(row, lost, "while publishing it")

    def lose(self, row: int, lost: set[int], when: str) -> None:
        """Record that another relay holds `row` now: its outcome here is dropped."""
        lost.add(row)
        logger.warning(
            "outbox relay %s: row %d is no longer leased to it (%s): its lease expired and "
            "another relay took it; the outcome here is dropped, the row is that relay's",
            self.name,
            row,
            when,
        )
