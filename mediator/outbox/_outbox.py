"""The outbox: a send's broker-bound events become rows of a table, written
in the send's transaction (docs/outbox.md)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
from sqlalchemy import delete, event, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mediator._dead_letters import DeadLetterRecord
from mediator._exceptions import MessageTooLargeError
from mediator._limits import quote
from mediator._message import DEFAULT_MAX_MESSAGE_SIZE, Message, encode_message
from mediator.outbox._sqlite import IMMEDIATE
from mediator.outbox._tables import DEAD, PENDING, SENT, OutboxTables, as_utc, utcnow
from mediator.outbox._unit_of_work import OutboxError, UnitOfWork, _Work, _work

__all__ = ["PUBLISH_FAILED", "Outbox"]

PUBLISH_FAILED = "publish_failed"
"""The reason `Outbox.dead_letters()` gives for a row that failed `max_attempts` times."""

_SUPPORTED = ("postgresql", "sqlite")


class Outbox:
    """Writes broker-bound events to a table in the transaction of the send
    that raised them; an `OutboxRelay` publishes them after the commit.

    ```python
    outbox = Outbox(sqlite_engine("sqlite+aiosqlite:///app.db"))
    await outbox.create_tables()
    mediator = Mediator(
        request_map=requests,
        event_emitter=EventEmitter(event_map=events, message_broker=outbox),
        unit_of_work=outbox.unit_of_work,
    )
    ```

    `database` is an `AsyncEngine`, or an `async_sessionmaker` bound to one
    (PostgreSQL with asyncpg, SQLite with aiosqlite). `channel_prefix` and
    `max_message_size` are those of the broker the rows are relayed to; a
    relay built on the outbox sets them when they are None. An envelope over
    that size (1 MiB while unknown) is refused at the send, with
    MessageTooLargeError, rather than dead in the table later.
    """

    def __init__(
        self,
        database: AsyncEngine | async_sessionmaker[AsyncSession],
        *,
        prefix: str = "mediator",
        channel_prefix: str | None = None,
        max_message_size: int | None = None,
    ) -> None:
        if isinstance(database, AsyncEngine):
            engine = database
            sessions = async_sessionmaker(engine, expire_on_commit=False)
        elif isinstance(database, async_sessionmaker):
            bind = database.kw.get("bind")
            if not isinstance(bind, AsyncEngine):
                raise TypeError(
                    f"Outbox({database!r}): the session maker is bound to {bind!r}; bind it "
                    "to an AsyncEngine (async_sessionmaker(engine)) or pass the engine"
                )
            engine, sessions = bind, database
        else:
            raise TypeError(
                f"Outbox({database!r}): pass an AsyncEngine (create_async_engine(...)) or an "
                "async_sessionmaker bound to one"
            )
        dialect = engine.dialect.name
        if dialect not in _SUPPORTED:
            raise OutboxError(
                f"Outbox: the engine {engine.url.render_as_string()!r} is {dialect}; the "
                "outbox supports PostgreSQL (postgresql+asyncpg://) and SQLite "
                "(sqlite+aiosqlite://)"
            )
        self.engine = engine
        """The engine the outbox, its relays and inboxes use."""
        self.writer = engine.execution_options(**IMMEDIATE) if dialect == "sqlite" else engine
        """`engine` for transactions that write: on SQLite they take the write lock first."""
        self.sessions = sessions
        """Makes the session of each unit of work."""
        self.tables = OutboxTables(prefix)
        """The tables, by name and as SQLAlchemy `Table` objects."""
        self.dialect = dialect
        """ "postgresql" or "sqlite"."""
        self.channel_prefix = channel_prefix
        """The channel prefix of the broker the rows are relayed to, or None
        while unknown (set by the first relay built on the outbox)."""
        self.max_message_size = max_message_size
        """The largest envelope the broker the rows are relayed to publishes,
        or None while unknown (set by the first relay built on the outbox)."""
        table = self.tables.outbox
        self._insert = table.insert()
        # SQLite lets one transaction write at a time, so rows are numbered in
        # commit order already; elsewhere the writers of one partition key
        # take turns on its row in the keys table (see docs/outbox.md).
        self._lock_keys: Any = None
        if dialect != "sqlite":
            keys = pg_insert(self.tables.keys)
            self._lock_keys = keys.on_conflict_do_update(
                index_elements=[self.tables.keys.c.partition_key],
                set_={"touched_at": keys.excluded.touched_at},
            )
        self._wakers: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return f"<Outbox {self.tables.outbox.name} on {self.engine.url.render_as_string()}>"

    # -- units of work -------------------------------------------------------

    def unit_of_work(self) -> UnitOfWork:
        """A new unit of work (an async context manager yielding the session).

        Pass the method itself as ``Mediator(unit_of_work=outbox.unit_of_work)``
        so that each send is one transaction.
        """
        return UnitOfWork(self)

    @contextmanager
    def bind(self, session: AsyncSession) -> Iterator[AsyncSession]:
        """Use your own session (and transaction) for the sends in the block:
        their units of work join `session` and never commit or roll back."""
        if _work.get() is not None:
            raise OutboxError(
                f"{self!r}.bind(): a unit of work is open in this context already; bind "
                "your session outside any send"
            )
        token = _work.set(_Work(self, session, owned=False))
        try:
            yield session
        finally:
            _work.reset(token)

    def _committed(self) -> None:
        for wake in self._wakers:
            wake()

    def _on_commit(self, session: Any) -> None:
        if not session.in_nested_transaction():  # not a savepoint's release
            self._committed()

    def _wake_me(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake` after each commit that wrote rows; returns the undo."""
        self._wakers.append(wake)

        def remove() -> None:
            if wake in self._wakers:
                self._wakers.remove(wake)

        return remove

    # -- the broker side (what the EventEmitter calls) -------------------------

    async def send_message(self, message: Message) -> None:
        """Write one envelope to the outbox, in the unit of work's transaction."""
        await self.send_messages((message,))

    async def send_messages(self, messages: Sequence[Message]) -> None:
        """Write envelopes to the outbox, in order, in the unit of work's transaction."""
        work = _work.get()
        if work is None or work.outbox is not self:
            what = "no unit of work is open" if work is None else f"{work.outbox!r} has it"
            raise OutboxError(
                f"{self!r} cannot write {', '.join(m.message_name for m in messages)}: "
                f"{what} in this context, so the events have no transaction to commit with. "
                "Build the Mediator with Mediator(unit_of_work=outbox.unit_of_work), or wrap "
                "the code in `async with outbox.unit_of_work():` or `with outbox.bind(session):`"
            )
        if not messages:
            return
        now = utcnow()
        connection = await work.session.connection()
        if self._lock_keys is not None:
            keys = {m.partition_key for m in messages if m.partition_key is not None}
            keys -= work.keys
            if keys:
                # Sorted, so two sends locking the same keys take them in one order.
                await connection.execute(
                    self._lock_keys,
                    [{"partition_key": key, "touched_at": now} for key in sorted(keys)],
                )
                work.keys |= keys
        await connection.execute(
            self._insert,
            [
                {
                    "message_id": message.message_id,
                    "message_name": message.message_name,
                    "partition_key": message.partition_key,
                    "body": self._encoded(message).decode(),
                    "created_at": now,
                    "next_attempt_at": now,
                }
                for message in messages
            ],
        )
        if not work.wrote:
            work.wrote = True
            if not work.owned:
                session = work.session.sync_session
                if not event.contains(session, "after_commit", self._on_commit):
                    event.listen(session, "after_commit", self._on_commit)

    def _encoded(self, message: Message) -> bytes:
        data = encode_message(message)
        limit = self.max_message_size or DEFAULT_MAX_MESSAGE_SIZE
        if len(data) > limit:
            raise MessageTooLargeError(
                f"the envelope of {quote(message.message_name, 200)} ({message.message_id}) is "
                f"{len(data)} bytes, and the broker this outbox is relayed to publishes at most "
                f"{limit} (max_message_size): send less per event, or raise max_message_size "
                "on that broker (the outbox follows it)"
            )
        return data

    # -- tables and operations -------------------------------------------------

    async def create_tables(self) -> None:
        """Create the outbox's tables and indexes where they do not exist
        (and on PostgreSQL the trigger that notifies relays on commit).

        The same DDL as plain SQL: ``outbox.tables.sql("postgresql")``.
        """
        await self.tables.create(self.engine)

    async def drop_tables(self) -> None:
        """Drop the outbox's tables, with every row in them."""
        await self.tables.drop(self.engine)

    async def counts(self) -> dict[str, int]:
        """How many rows are pending, sent (and not cleaned up yet) and dead."""
        table = self.tables.outbox
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(table.c.status, func.count()).group_by(table.c.status)
            )
            found: dict[str, int] = {row[0]: row[1] for row in result}
        return {status: found.get(status, 0) for status in (PENDING, SENT, DEAD)}

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetterRecord]:
        """The rows that failed `max_attempts` times (the oldest `limit`, or
        all), oldest first, as records of the same shape as a broker's dead
        letters: reason "publish_failed", the last error as description, the
        attempts as delivery count, the row's id as `id`."""
        table = self.tables.outbox
        query = (
            select(
                table.c.id,
                table.c.message_name,
                table.c.body,
                table.c.last_error,
                table.c.attempts,
                table.c.next_attempt_at,
            )
            .where(table.c.status == DEAD)
            .order_by(table.c.id)
        )
        if limit is not None:
            query = query.limit(limit)
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [
            attrs.evolve(
                DeadLetterRecord.of(
                    f"{table.name}:{name}", body.encode(), PUBLISH_FAILED, error or "", attempts
                ),
                id=str(row_id),
                # A row that dies is due "now": the time of its last attempt.
                dead_lettered_at=as_utc(due),
            )
            for row_id, name, body, error, attempts, due in rows
        ]

    async def replay_dead_letters(
        self, records: Iterable[DeadLetterRecord]
    ) -> AsyncIterator[DeadLetterRecord]:
        """Give the dead rows of `records` a fresh round of attempts, due now,
        and yield each: the relay publishes it as any row, with its message
        id, and marks it sent once the broker confirmed it. Rows no longer
        dead are skipped."""
        for record in records:
            if await self._requeue(self.tables.outbox.c.id == int(record.id)):
                yield record

    async def purge_dead_letters(self, records: Iterable[DeadLetterRecord]) -> int:
        """Delete the dead rows of `records`; how many were still dead."""
        table = self.tables.outbox
        ids = [int(record.id) for record in records]
        if not ids:
            return 0
        async with self.writer.begin() as connection:
            result = await connection.execute(
                delete(table).where(table.c.status == DEAD, table.c.id.in_(ids))
            )
        return int(result.rowcount)

    async def requeue_dead(self, message_ids: Sequence[uuid.UUID] | None = None) -> int:
        """Give dead rows (all, or those of `message_ids`) a fresh round of
        attempts, due now; returns how many. Do it once the cause is mended."""
        table = self.tables.outbox
        which = None if message_ids is None else table.c.message_id.in_(list(message_ids))
        return await self._requeue(which)

    async def _requeue(self, which: Any) -> int:
        table = self.tables.outbox
        statement = (
            update(table)
            .where(table.c.status == DEAD)
            .values(
                status=PENDING,
                attempts=0,
                next_attempt_at=utcnow(),
                locked_by=None,
                locked_until=None,
            )
        )
        if which is not None:
            statement = statement.where(which)
        async with self.writer.begin() as connection:
            result = await connection.execute(statement)
        self._committed()
        return int(result.rowcount)

    async def message_ids(self, status: str | None = None) -> list[uuid.UUID]:
        """The message ids of the rows (with `status`, if given), oldest first."""
        table = self.tables.outbox
        statement = select(table.c.message_id).order_by(table.c.id)
        if status is not None:
            statement = statement.where(table.c.status == status)
        async with self.engine.connect() as connection:
            return list((await connection.execute(statement)).scalars())

