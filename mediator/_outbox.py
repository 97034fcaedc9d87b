"""The transactional outbox: a send's database writes and its broker-bound
events commit together, in one transaction, or not at all."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

from sqlalchemy import event, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from mediator._exceptions import MediatorError, MessageTooLargeError
from mediator._limits import quote
from mediator._message import DEFAULT_MAX_MESSAGE_SIZE, Message, encode_message
from mediator._outbox_tables import DEAD, PENDING, SENT, OutboxTables
from mediator._transport import DeadLetterRecord

__all__ = [
    "PUBLISH_FAILED",
    "Outbox",
    "OutboxError",
    "UnitOfWork",
    "current_session",
    "sqlite_engine",
]

PUBLISH_FAILED = "publish_failed"
"""The reason `Outbox.dead_letters()` gives for a row that failed `max_attempts` times."""

_SUPPORTED = ("postgresql", "sqlite")
IMMEDIATE = {"sqlite_begin": "IMMEDIATE"}
"""Execution options under which `sqlite_engine` begins with BEGIN IMMEDIATE."""


class OutboxError(MediatorError):
    """The outbox was used outside what it can make atomic: no unit of work
    open, another outbox's unit of work, an unsupported database."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime) -> dt.datetime:
    """A time read back from the database, in UTC (SQLite returns naive UTC)."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class _Work:
    """The unit of work open in this context: its session, and what it wrote."""

    __slots__ = ("keys", "outbox", "owned", "session", "wrote")

    def __init__(self, outbox: Outbox, session: AsyncSession, owned: bool) -> None:
        self.outbox = outbox
        self.session = session
        self.owned = owned
        """Whether the unit of work commits (False: the caller's own session)."""
        self.wrote = False
        self.keys: set[str] = set()
        """Partition keys already locked in this transaction."""


_work: ContextVar[_Work | None] = ContextVar("mediator_unit_of_work", default=None)


def current_session() -> AsyncSession:
    """The `AsyncSession` of the unit of work in progress: write through it in
    a handler, and the writes commit with the events the handler raises.

    ```python
    class PlaceOrderHandler(RequestHandler[PlaceOrder, int]):
        async def handle(self, request: PlaceOrder) -> int:
            session = current_session()
            order = Order(total=request.total)
            session.add(order)
            await session.flush()
            self.events.append(OrderPlaced(order_id=order.id))
            return order.id
    ```

    Raises OutboxError outside a unit of work (a send of a Mediator built
    with ``unit_of_work=outbox.unit_of_work``, a delivery handled under an
    `Inbox`, ``async with outbox.unit_of_work()`` or ``with outbox.bind(session)``).
    """
    work = _work.get()
    if work is None:
        raise OutboxError(
            "current_session() was called outside a unit of work; build the Mediator with "
            "Mediator(unit_of_work=outbox.unit_of_work), give the EventConsumer an "
            "inbox=Inbox(outbox, consumer=...), or open one with "
            "`async with outbox.unit_of_work():`"
        )
    return work.session


class UnitOfWork:
    """One transaction: ``async with outbox.unit_of_work() as session:``.

    Entering opens a session (or joins the unit of work already open in this
    context, e.g. a send made by a handler); leaving commits when the block
    succeeded and rolls back when it raised. Only the outermost unit of work
    commits. Relays in this process are woken after a commit that wrote rows.
    """

    __slots__ = ("_outbox", "_token", "_work")

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._work: _Work | None = None
        self._token: Token[_Work | None] | None = None

    async def __aenter__(self) -> AsyncSession:
        current = _work.get()
        if current is not None:
            if current.outbox is not self._outbox:
                raise OutboxError(
                    f"a unit of work of {current.outbox!r} is open in this context; one "
                    f"transaction cannot span two databases. Send through {self._outbox!r} "
                    "outside it, or use one Outbox for both"
                )
            return current.session  # joined: the outer unit of work commits
        outbox = self._outbox
        work = _Work(outbox, outbox.sessions(), owned=True)
        token = _work.set(work)
        if outbox.dialect == "sqlite":
            try:
                # Takes SQLite's write lock now (with sqlite_engine), not at the
                # first write, which fails if another transaction committed since.
                await work.session.connection(execution_options=IMMEDIATE)
            except BaseException:
                _work.reset(token)
                await work.session.close()
                raise
        self._work, self._token = work, token
        return work.session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        work, token = self._work, self._token
        if work is None or token is None:
            return
        self._work = self._token = None
        _work.reset(token)
        session = work.session
        try:
            if exc_type is None:
                try:
                    await session.commit()
                except BaseException:
                    # SQLite keeps a transaction open when COMMIT fails (a deferred
                    # constraint): the connection is discarded, which rolls it back.
                    await session.invalidate()
                    raise
        finally:
            # Closing rolls back whatever was not committed.
            await session.close()
        if work.wrote:
            self._outbox._committed()


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

    The Outbox is the emitter's broker: `send_messages` inserts one row per
    envelope in the session of the unit of work open in this context, and
    raises OutboxError when none is. `database` is an `AsyncEngine` or an
    `async_sessionmaker` (bound to an engine) that makes the sessions.
    PostgreSQL (asyncpg) and SQLite (aiosqlite) are supported.

    `channel_prefix` is the prefix of the broker the rows are relayed to,
    which names their logical channels in traces (`mediator.otel`), and
    `max_message_size` that broker's limit: an envelope larger than it is
    refused when written (MessageTooLargeError, the send rolled back) rather
    than dead in the table later. An `OutboxRelay` built on the outbox sets
    both from its broker when they are None, and so does a `Service`; give
    them when the relay runs elsewhere (the limit is 1 MiB until known).
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
        """Use your own session (and transaction) for the sends in the block.

        ```python
        async with sessions() as session, session.begin():
            session.add(Audit(...))
            with outbox.bind(session):
                await mediator.send(PlaceOrder(total=42))
        # committed here, by you, with the events
        ```

        The units of work inside the block join `session` and never commit
        or roll back: that is yours to do. `session` must be on the outbox's
        database. Relays in this process are woken when the session commits.
        """
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

    async def dead_letters(self) -> list[DeadLetterRecord]:
        """The rows that failed `max_attempts` times, oldest first, as records
        of the same shape as a broker's dead letters (reason "publish_failed",
        the last error as description, the attempts as delivery count)."""
        table = self.tables.outbox
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(table.c.message_name, table.c.body, table.c.last_error, table.c.attempts)
                .where(table.c.status == DEAD)
                .order_by(table.c.id)
            )
            rows = result.all()
        return [
            DeadLetterRecord.of(
                f"{table.name}:{name}", body.encode(), PUBLISH_FAILED, error or "", attempts
            )
            for name, body, error, attempts in rows
        ]

    async def requeue_dead(self, message_ids: Sequence[uuid.UUID] | None = None) -> int:
        """Give dead rows (all, or those of `message_ids`) a fresh round of
        attempts, due now; returns how many. Do it once the cause is mended."""
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
        if message_ids is not None:
            statement = statement.where(table.c.message_id.in_(list(message_ids)))
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


def sqlite_engine(url: str, *, busy_timeout: float = 15.0, **options: Any) -> AsyncEngine:
    """An aiosqlite engine set up for the outbox, and for an application that
    writes from several tasks or processes.

    ```python
    engine = sqlite_engine("sqlite+aiosqlite:///app.db")
    ```

    - WAL journal: readers never wait for the writer, nor the writer for them;
      ``synchronous=NORMAL``, which WAL makes safe against a crash of the
      process (a power cut may lose the last commits, rows and events alike).
    - SQLAlchemy begins every transaction (not the driver, which would begin
      only at the first write, outside savepoints): with ``BEGIN``, or with
      ``BEGIN IMMEDIATE`` under the execution option
      ``sqlite_begin="IMMEDIATE"``, which the outbox's units of work, inbox
      deliveries and relay use. IMMEDIATE takes the write lock at once,
      waiting up to `busy_timeout` seconds for it, instead of failing with
      "database is locked" when a transaction that read first tries to write
      after another one committed. Give it to your own writing transactions:
      ``engine.execution_options(sqlite_begin="IMMEDIATE")``.
    - Foreign keys are enforced (``PRAGMA foreign_keys=ON``).

    `options` go to `create_async_engine`. A ``:memory:`` database is refused:
    it lives in one connection, which the sends and the relay would share.
    """
    parsed = make_url(url)
    if parsed.drivername != "sqlite+aiosqlite":
        raise ValueError(
            f"sqlite_engine({url!r}): the URL must start with sqlite+aiosqlite:/// "
            "(the asyncio SQLite driver)"
        )
    database = parsed.database or ""
    if database in ("", ":memory:") or "mode=memory" in str(parsed.query):
        raise ValueError(
            f"sqlite_engine({url!r}): an in-memory database lives in one connection, which "
            "the units of work and the relay would share; use a file, e.g. "
            "sqlite+aiosqlite:///app.db"
        )
    connect_args = {"timeout": busy_timeout, **options.pop("connect_args", {})}
    engine = create_async_engine(url, connect_args=connect_args, **options)

    def connect(dbapi_connection: Any, record: Any) -> None:
        # SQLAlchemy emits BEGIN itself (below), rather than the driver, which
        # would begin only before the first write.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    def begin(connection: Any) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")

    event.listen(engine.sync_engine, "connect", connect)
    event.listen(engine.sync_engine, "begin", begin)
    return engine
