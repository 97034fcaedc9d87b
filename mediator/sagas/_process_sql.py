"""Process managers' instances and timeouts kept in SQL beside the outbox:
``{prefix}_processes`` and ``{prefix}_process_timeouts``. An event's handling
commits with its instance, its timeouts, what it sent and the inbox record
of its delivery."""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import TYPE_CHECKING, Any

import attrs
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Uuid,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from mediator.sagas._model import SagaConflictError
from mediator.sagas._process_stores import Instance, Timeout, conflict_message, new_counts
from mediator.sagas._sql import run_ddl
from mediator.sagas._stores import utc

if TYPE_CHECKING:
    from mediator.outbox import Outbox

__all__ = ["SqlProcessStore"]


class SqlProcessStore:
    """Process instances and timeouts in the outbox's database.

    ```python
    store = SqlProcessStore(outbox)
    await store.create_tables()
    ```
    """

    def __init__(self, outbox: Outbox, *, prefix: str | None = None) -> None:
        self.outbox = outbox
        name = prefix or outbox.tables.prefix
        self.metadata = MetaData()
        """The two tables, for `create_all` or a migration tool."""
        self.instances_table = Table(
            f"{name}_processes",
            self.metadata,
            Column("process", String(255), primary_key=True),
            Column("key", String(255), primary_key=True),
            Column("state", LargeBinary(), nullable=False),
            Column("version", Integer(), nullable=False),
            Column("finished", Boolean(), nullable=False),
            Column("created_at", DateTime(timezone=True), nullable=False),
            Column("updated_at", DateTime(timezone=True), nullable=False),
        )
        self.timeouts_table = Table(
            f"{name}_process_timeouts",
            self.metadata,
            Column("id", Uuid(), primary_key=True),
            Column("process", String(255), nullable=False),
            Column("key", String(255), nullable=False),
            Column("due_at", DateTime(timezone=True), nullable=False),
            Column("event", String(255), nullable=False),
            Column("payload", LargeBinary(), nullable=False),
        )
        Index(f"{name}_process_timeouts_due", self.timeouts_table.c.due_at)
        self.conflicts = 0
        """Saves refused by the version check since the store was made."""

    async def create_tables(self) -> None:
        """Create the tables and their index where they do not exist."""
        await run_ddl(self.outbox, self.metadata, create=True)

    async def drop_tables(self) -> None:
        """Drop the tables, with every instance and timeout in them."""
        await run_ddl(self.outbox, self.metadata, create=False)

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self.outbox.unit_of_work()

    async def load(self, process: str, key: str) -> Instance | None:
        table = self.instances_table
        async with self.outbox.unit_of_work() as session:
            row = (
                await session.execute(
                    select(table).where(table.c.process == process, table.c.key == key)
                )
            ).first()
        return None if row is None else _instance(row._mapping)

    async def save(self, instance: Instance, *, new: bool) -> Instance:
        table = self.instances_table
        saved = attrs.evolve(
            instance, version=instance.version + 1, updated_at=dt.datetime.now(dt.UTC)
        )
        values = {
            "state": saved.state,
            "version": saved.version,
            "finished": saved.finished,
            "updated_at": saved.updated_at,
        }
        async with self.outbox.unit_of_work() as session:
            if new:
                try:
                    async with session.begin_nested():
                        await session.execute(
                            insert(table).values(
                                process=saved.process,
                                key=saved.key,
                                created_at=saved.created_at,
                                **values,
                            )
                        )
                except IntegrityError:
                    self.conflicts += 1
                    raise SagaConflictError(
                        f"process {saved.process} {saved.key!r} was started by another "
                        "delivery meanwhile; handle the event again"
                    ) from None
                return saved
            result: Any = await session.execute(
                update(table)
                .where(
                    table.c.process == instance.process,
                    table.c.key == instance.key,
                    table.c.version == instance.version,
                )
                .values(**values)
            )
            if result.rowcount != 1:
                self.conflicts += 1
                kept = await self.load(instance.process, instance.key)
                raise SagaConflictError(conflict_message(instance, kept))
        return saved

    async def add_timeout(self, timeout: Timeout) -> None:
        async with self.outbox.unit_of_work() as session:
            await session.execute(
                insert(self.timeouts_table).values(**attrs.asdict(timeout, recurse=False))
            )

    async def take_due(self, now: dt.datetime, limit: int) -> list[Timeout]:
        table = self.timeouts_table
        query = select(table).where(table.c.due_at <= now).order_by(table.c.due_at).limit(limit)
        if self.outbox.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        async with self.outbox.unit_of_work() as session:
            rows = (await session.execute(query)).all()
            due = [_timeout(row._mapping) for row in rows]
            if due:
                await session.execute(delete(table).where(table.c.id.in_([t.id for t in due])))
        return due

    async def instances(
        self,
        process: str | None = None,
        *,
        finished: bool | None = None,
        limit: int | None = None,
    ) -> list[Instance]:
        table = self.instances_table
        query = select(table).order_by(table.c.created_at).limit(limit)
        if process is not None:
            query = query.where(table.c.process == process)
        if finished is not None:
            query = query.where(table.c.finished.is_(finished))
        async with self.outbox.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_instance(row._mapping) for row in rows]

    async def timeouts_for(self, process: str, key: str) -> list[Timeout]:
        table = self.timeouts_table
        query = (
            select(table)
            .where(table.c.process == process, table.c.key == key)
            .order_by(table.c.due_at)
        )
        async with self.outbox.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_timeout(row._mapping) for row in rows]

    async def counts(self) -> dict[str, dict[str, int]]:
        instances, timeouts = self.instances_table, self.timeouts_table
        counts: dict[str, dict[str, int]] = {}
        async with self.outbox.engine.connect() as connection:
            by_state = await connection.execute(
                select(instances.c.process, instances.c.finished, func.count()).group_by(
                    instances.c.process, instances.c.finished
                )
            )
            for process, finished, count in by_state:
                counts.setdefault(process, new_counts())["completed" if finished else "active"] = (
                    count
                )
            pending = await connection.execute(
                select(timeouts.c.process, func.count()).group_by(timeouts.c.process)
            )
            for process, count in pending:
                counts.setdefault(process, new_counts())["timeouts"] = count
        return dict(sorted(counts.items()))

    async def timeouts(self) -> list[Timeout]:
        """The timeouts not taken yet, oldest due first."""
        table = self.timeouts_table
        async with self.outbox.engine.connect() as connection:
            rows = (await connection.execute(select(table).order_by(table.c.due_at))).all()
        return [_timeout(row._mapping) for row in rows]


def _instance(row: Any) -> Instance:
    return Instance(
        process=row["process"],
        key=row["key"],
        state=bytes(row["state"]),
        version=row["version"],
        finished=bool(row["finished"]),
        created_at=utc(row["created_at"]),
        updated_at=utc(row["updated_at"]),
    )


def _timeout(row: Any) -> Timeout:
    return Timeout(
        id=row["id"],
        process=row["process"],
        key=row["key"],
        due_at=utc(row["due_at"]),
        event=row["event"],
        payload=bytes(row["payload"]),
    )
