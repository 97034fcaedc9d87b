"""Publishing a claimed batch: one publish of the whole batch, row by row when
it fails, and the outcome recorded: sent, retried after a backoff, or dead
(docs/outbox.md, "The relay")."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

import attrs

from mediator._broker import MessageBroker
from mediator._codec import MessageCodec
from mediator._exceptions import MessageDecodeError
from mediator._interceptors import Interceptor, Publishing, intercept_publish, overrides
from mediator._limits import quote
from mediator._message import Message
from mediator._policies import Backoff
from mediator.outbox._outbox import Outbox
from mediator.outbox._relay_rows import ClaimedRow, Leases, RelayStatements
from mediator.outbox._relay_stats import RelayRound, RelayStats
from mediator.outbox._tables import DEAD, PENDING, utcnow

__all__ = ["BatchPublisher"]

logger = logging.getLogger("mediator.outbox")


class BatchPublisher:
    """Publishes the rows a relay claimed through `broker` (its `interceptors`
    around each publish) and records what became of each."""

    def __init__(
        self,
        outbox: Outbox,
        broker: MessageBroker,
        statements: RelayStatements,
        leases: Leases,
        *,
        name: str,
        max_attempts: int,
        backoff: Backoff,
        interceptors: Sequence[Interceptor],
        stats: RelayStats,
    ) -> None:
        self.outbox = outbox
        self.broker = broker
        self.statements = statements
        self.leases = leases
        self.name = name
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.stats = stats
        self.next_due: dt.datetime | None = None
        """The earliest retry this publisher scheduled that the relay has not waited for."""
        self._relaying = overrides(interceptors, "relaying")
        self._codec = MessageCodec(lambda name: None, max_size=2**31)
        self._send_messages: Any = getattr(broker, "send_messages", None)

    async def publish(self, rows: list[ClaimedRow]) -> RelayRound:
        """Publish `rows` (in id order) and record the outcome."""
        ready: list[tuple[ClaimedRow, Message]] = []
        failed: list[tuple[ClaimedRow, str, bool]] = []  # (row, error, retry at all)
        for row in rows:
            try:
                message = self._codec.decode_message(row.body)
            except MessageDecodeError as exc:
                # Written by something else than the Outbox: no attempt can mend it.
                failed.append((row, f"the row's envelope cannot be read: {exc}", False))
                continue
            if row.partition_key is not None:
                message = attrs.evolve(message, partition_key=row.partition_key)
            ready.append((row, message))
        sent: list[ClaimedRow] = []
        released: list[ClaimedRow] = []
        lost: set[int] = set()
        if ready:
            async with self.leases.renewing([row.id for row, _ in ready], lost):
                try:
                    await self._publish([message for _, message in ready])
                except Exception as exc:
                    if len(ready) == 1:
                        failed.append((ready[0][0], _describe(exc), True))
                    else:
                        await self._one_by_one(ready, sent, failed, released)
                else:
                    sent = [row for row, _ in ready]
        return await self._record(sent, failed, released, lost)

    async def _publish(self, messages: Sequence[Message]) -> None:
        if self._relaying:
            publishing = Publishing(messages=messages, broker=self.broker)
            await intercept_publish(self._relaying, publishing, self._send, "relaying")
        else:
            await self._send(messages)

    async def _send(self, messages: Sequence[Message]) -> None:
        if self._send_messages is not None:
            await self._send_messages(messages)
        else:
            for message in messages:
                await self.broker.send_message(message)

    async def _one_by_one(
        self,
        ready: list[tuple[ClaimedRow, Message]],
        sent: list[ClaimedRow],
        failed: list[tuple[ClaimedRow, str, bool]],
        released: list[ClaimedRow],
    ) -> None:
        """Find the rows a failed batch failed on: each alone, in order. A row
        behind a failed row of its key is given back; two failures in a row
        read as an outage, and the rest is given back for a later round."""
        held: set[str] = set()
        in_a_row = 0
        for index, (row, message) in enumerate(ready):
            if row.partition_key is not None and row.partition_key in held:
                released.append(row)
                continue
            try:
                await self._publish((message,))
            except Exception as exc:
                failed.append((row, _describe(exc), True))
                if row.partition_key is not None:
                    held.add(row.partition_key)
                in_a_row += 1
                if in_a_row >= 2:
                    released.extend(later for later, _ in ready[index + 1 :])
                    return
            else:
                sent.append(row)
                in_a_row = 0

    async def _record(
        self,
        sent: list[ClaimedRow],
        failed: list[tuple[ClaimedRow, str, bool]],
        released: list[ClaimedRow],
        lost: set[int],
    ) -> RelayRound:
        now = utcnow()
        me = self.name
        statements = self.statements
        updates: list[dict[str, Any]] = []
        for row, error, retry in failed:
            attempts = row.attempts + 1
            retrying = retry and attempts < self.max_attempts
            due = now + dt.timedelta(seconds=self.backoff.delay(attempts)) if retrying else now
            updates.append(
                {
                    "row": row.id,
                    "new_status": PENDING if retrying else DEAD,
                    "new_attempts": attempts,
                    "due": due,
                    "error": error,
                    "me": me,
                }
            )
        recorded: set[int] = set()
        async with self.outbox.writer.begin() as connection:
            if sent:
                ids = [r.id for r in sent]
                result = await connection.execute(
                    statements.mark_sent, {"ids": ids, "at": now, "me": me}
                )
                recorded.update(result.scalars())
            for values in updates:
                result = await connection.execute(statements.mark_failed, values)
                if result.rowcount:
                    recorded.add(values["row"])
            if released:
                ids = [r.id for r in released]
                await connection.execute(statements.release, {"ids": ids, "me": me})
        for row in [*sent, *(row for row, _, _ in failed)]:
            if row.id not in recorded and row.id not in lost:
                self.leases.lose(row.id, lost, "when recording its outcome")
        retried = dead = 0
        for (row, error, _), values in zip(failed, updates, strict=True):
            if row.id not in recorded:
                continue
            attempts, due = values["new_attempts"], values["due"]
            if values["new_status"] == PENDING:
                retried += 1
                if self.next_due is None or due < self.next_due:
                    self.next_due = due
                logger.warning(
                    "outbox relay %s: publishing row %d failed (attempt %d of %d), next "
                    "attempt at %s: %s",
                    self.name,
                    row.id,
                    attempts,
                    self.max_attempts,
                    due.isoformat(),
                    error,
                )
            else:
                dead += 1
                logger.error(
                    "outbox relay %s: row %d is dead after %d attempt(s): %s",
                    self.name,
                    row.id,
                    attempts,
                    error,
                )
        published = sum(1 for row in sent if row.id in recorded)
        stats = self.stats
        stats.published += published
        stats.retried += retried
        stats.dead += dead
        stats.released += len(released)
        stats.lost += len(lost)
        return RelayRound(
            claimed=len(sent) + len(failed) + len(released),
            published=published,
            retried=retried,
            dead=dead,
            released=len(released),
            lost=len(lost),
        )


def _describe(error: BaseException) -> str:
    return quote(f"{type(error).__name__}: {error}")
