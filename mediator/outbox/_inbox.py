"""The inbox: a consumer handles each message id once, in the transaction of
the handlers' own writes (docs/outbox.md, "The inbox")."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from contextlib import AbstractAsyncContextManager
from contextvars import Token
from types import TracebackType
from typing import Any

from sqlalchemy import bindparam, delete, exc, select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from mediator._limits import quote
from mediator._message import Message
from mediator.outbox._outbox import Outbox
from mediator.outbox._sqlite import IMMEDIATE
from mediator.outbox._tables import utcnow
from mediator.outbox._unit_of_work import OutboxError, _Work, _work, current_session

__all__ = ["DEFAULT_INBOX_WINDOW", "Inbox"]

logger = logging.getLogger("mediator.outbox")

DEFAULT_INBOX_WINDOW = dt.timedelta(hours=24)
"""How long an inbox remembers a message id by default (see docs/outbox.md,
"How long the inbox remembers")."""

_EXPIRE_BATCH = 1000
_EXPIRE_STATEMENTS = 10


class Inbox:
    """Lets `EventConsumer` handle each message id once per consumer name.

    ```python
    consumer = EventConsumer(
        broker=broker,
        event_map=events,
        event_emitter=EventEmitter(event_map=events, message_broker=outbox),
        inbox=Inbox(outbox, consumer="billing"),
    )
    ```

    `consumer` names the logical consumer, the same on every replica.
    Records are deleted after `window` (default 24 hours), checked at most
    every `cleanup_interval` seconds; a copy arriving later is handled again.
    """

    def __init__(
        self,
        outbox: Outbox,
        consumer: str,
        *,
        window: dt.timedelta | float = DEFAULT_INBOX_WINDOW,
        cleanup_interval: float = 60.0,
    ) -> None:
        if not consumer or len(consumer) > 255:
            raise ValueError(
                f"Inbox(consumer={consumer!r}): name the consumer with 1 to 255 characters "
                "(the same name on every replica)"
            )
        if not isinstance(window, dt.timedelta):
            window = dt.timedelta(seconds=window)
        if window < dt.timedelta(0):
            raise ValueError(f"Inbox(window={window}): must be 0 or more")
        if cleanup_interval <= 0:
            raise ValueError(f"Inbox(cleanup_interval={cleanup_interval}): must be above 0")
        self.outbox = outbox
        self.consumer = consumer
        """The consumer's name in the inbox table."""
        self.window = window
        """How long a handled message id is remembered."""
        self.cleanup_interval = cleanup_interval
        table = outbox.tables.inbox
        insert: Any = pg_insert(table) if outbox.dialect == "postgresql" else sqlite_insert(table)
        self._record = insert.on_conflict_do_nothing(
            index_elements=[table.c.consumer, table.c.message_id]
        ).returning(table.c.message_id)
        old = (
            select(table.c.consumer, table.c.message_id)
            .where(table.c.consumer == consumer, table.c.received_at < bindparam("cutoff"))
            .limit(_EXPIRE_BATCH)
        )
        self._expire = delete(table).where(tuple_(table.c.consumer, table.c.message_id).in_(old))
        self._next_expiry = 0.0
        self._expiring: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Inbox {self.consumer!r} in {self.outbox.tables.inbox.name}>"

    def handling(self, message: Message) -> InboxEntry:
        """The transaction of one delivery: ``async with inbox.handling(message)
        as first:`` opens it and records the message id; `first` is False for
        a duplicate. Leaving the block commits when it succeeded (and `first`),
        and rolls back when it raised."""
        return InboxEntry(self, message)

    def attempt(self) -> AbstractAsyncContextManager[object]:
        """A savepoint around one handler call of the delivery in progress (the
        consumer opens one per call and per retry): a handler that raised
        leaves none of its writes behind."""
        return current_session().begin_nested()

    def lost(self, error: BaseException) -> bool:
        """Whether `error`, raised by a handler call in a delivery's
        transaction, left that transaction unusable: the connection died
        (a backend terminated, a network cut) or the database aborted the
        transaction. Then no retry inside it can succeed; the consumer gives
        the delivery back instead, and its redelivery begins a fresh one."""
        if isinstance(error, exc.PendingRollbackError | exc.ResourceClosedError):
            return True
        if isinstance(error, exc.DBAPIError) and (
            error.connection_invalidated
            or isinstance(error, exc.OperationalError | exc.InterfaceError)
        ):
            return True
        work = _work.get()
        if work is None:
            return False
        transaction = work.session.get_transaction()
        return transaction is None or not transaction.is_active

    async def seen(self, message_id: Any) -> bool:
        """Whether `message_id` is recorded for this consumer."""
        table = self.outbox.tables.inbox
        async with self.outbox.engine.connect() as connection:
            result = await connection.execute(
                select(table.c.message_id).where(
                    table.c.consumer == self.consumer, table.c.message_id == message_id
                )
            )
            return result.first() is not None

    async def expire(self) -> int:
        """Delete this consumer's records older than the window; returns how many."""
        cutoff = {"cutoff": utcnow() - self.window}
        deleted = 0
        for _ in range(_EXPIRE_STATEMENTS):
            async with self.outbox.writer.begin() as connection:
                result = await connection.execute(self._expire, cutoff)
            deleted += int(result.rowcount)
            if result.rowcount < _EXPIRE_BATCH:
                break
        return deleted

    def _expire_if_due(self) -> None:
        """Start an expiry in a task of its own when one is due and none runs:
        its deletes stay off the deliveries' path."""
        if time.monotonic() < self._next_expiry or self._expiring is not None:
            return
        self._next_expiry = time.monotonic() + self.cleanup_interval
        self._expiring = asyncio.get_running_loop().create_task(
            self._expire_quietly(), name=f"expire {self!r}"
        )

    async def close(self) -> None:
        """End the expiry running beside the deliveries, if one is (its
        transaction rolls back; the next one deletes what it did not). A
        consumer calls this when it stops, so that nothing of the inbox
        outlives it to use an engine the application disposes next."""
        task = self._expiring
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _expire_quietly(self) -> None:
        try:
            await self.expire()
        except Exception as exc:
            logger.warning("%r: expiring old records failed: %s", self, quote(repr(exc)))
        finally:
            self._expiring = None


class InboxEntry:
    """One delivery's transaction; see `Inbox.handling`."""

    __slots__ = ("_first", "_inbox", "_message", "_token", "_work")

    def __init__(self, inbox: Inbox, message: Message) -> None:
        self._inbox = inbox
        self._message = message
        self._work: _Work | None = None
        self._token: Token[_Work | None] | None = None
        self._first = False

    async def __aenter__(self) -> bool:
        inbox = self._inbox
        if _work.get() is not None:
            raise OutboxError(
                f"{inbox!r}: a unit of work is open already in this context; a delivery is "
                "handled in a transaction of its own"
            )
        session = inbox.outbox.sessions()
        work = self._work = _Work(inbox.outbox, session, owned=True)
        self._token = _work.set(work)
        try:
            connection = await session.connection(
                execution_options=IMMEDIATE if inbox.outbox.dialect == "sqlite" else None
            )
            result = await connection.execute(
                inbox._record,
                {
                    "consumer": inbox.consumer,
                    "message_id": self._message.message_id,
                    "received_at": utcnow(),
                },
            )
            self._first = result.first() is not None
        except BaseException:
            self._close_context()
            await session.close()
            raise
        return self._first

    def _close_context(self) -> None:
        if self._token is not None:
            _work.reset(self._token)
            self._token = None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        work = self._work
        if work is None:
            return
        self._work = None
        self._close_context()
        committed = False
        try:
            if exc_type is None and self._first:
                try:
                    await work.session.commit()
                except BaseException:
                    # As in a unit of work: SQLite keeps a failed COMMIT's transaction.
                    await work.session.invalidate()
                    raise
                committed = True
        finally:
            await work.session.close()
        if committed:
            if work.wrote:
                work.outbox._committed()
            self._inbox._expire_if_due()
