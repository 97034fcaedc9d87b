"""Sagas kept in SQL beside the outbox, in the table ``{prefix}_sagas``: a
step's recorded outcome commits with what the step wrote and sent."""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING, Any

import attrs
from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    bindparam,
    func,
    insert,
    select,
    update,
)

from mediator.sagas._model import UNFINISHED, SagaConflictError, SagaState, SagaStatus
from mediator.sagas._stores import conflict, now, utc

if TYPE_CHECKING:
    from mediator.outbox import Outbox

__all__ = ["SqlSagaStore", "run_ddl", "saga_table"]


def saga_table(prefix: str, metadata: MetaData) -> Table:
    """The table ``{prefix}_sagas`` (docs/sagas.md, "The table")."""
    table = Table(
        f"{prefix}_sagas",
        metadata,
        Column("id", Uuid(), primary_key=True),
        Column("saga", String(255), nullable=False),
        Column("status", String(16), nullable=False),
        Column("step", Integer(), nullable=False),
        Column("phase", String(16), nullable=True),
        Column("context", LargeBinary(), nullable=False),
        Column("version", Integer(), nullable=False),
        Column("error", Text(), nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    )
    Index(f"{prefix}_sagas_status", table.c.status, table.c.created_at)
    return table


class SqlSagaStore:
    """Sagas kept in the outbox's database, in the table ``{prefix}_sagas``.

    ```python
    store = SqlSagaStore(outbox)
    await store.create_table()
    ```

    Its transaction is the outbox's unit of work: a step's action that
    writes through `current_session()` or sends through a mediator built
    with ``unit_of_work=outbox.unit_of_work`` commits with the step's
    recorded outcome, or not at all.
    """

    def __init__(self, outbox: Outbox, *, prefix: str | None = None) -> None:
        self.outbox = outbox
        self.metadata = MetaData()
        """The table, for `create_all` or a migration tool."""
        self.table = saga_table(prefix or outbox.tables.prefix, self.metadata)
        """The ``{prefix}_sagas`` table."""
        table = self.table
        # Built once: a step records its outcome with this, in its own transaction.
        self._update = (
            update(table)
            .where(table.c.id == bindparam("saga_id"), table.c.version == bindparam("was"))
            .values({name: bindparam(name) for name in _CHANGING})
        )

    async def create_table(self) -> None:
        """Create the table and its index where they do not exist."""
        await run_ddl(self.outbox, self.metadata, create=True)

    async def drop_table(self) -> None:
        """Drop the table, with every saga in it."""
        await run_ddl(self.outbox, self.metadata, create=False)

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self.outbox.unit_of_work()

    async def create(self, state: SagaState) -> None:
        async with self.outbox.unit_of_work() as session:
            await session.execute(insert(self.table).values(**_row(state)))

    async def save(self, state: SagaState) -> SagaState:
        saved = attrs.evolve(state, version=state.version + 1, updated_at=now())
        table = self.table
        row = _row(saved)
        values = {name: row[name] for name in _CHANGING}
        async with self.outbox.unit_of_work() as session:
            connection = await session.connection()
            result: Any = await connection.execute(
                self._update, {"saga_id": state.id, "was": state.version, **values}
            )
            if result.rowcount != 1:
                kept = await session.scalar(select(table.c.version).where(table.c.id == state.id))
                raise SagaConflictError(conflict(state, kept))
        return saved

    async def load(self, saga_id: uuid.UUID) -> SagaState | None:
        async with self.outbox.engine.connect() as connection:
            row = (
                await connection.execute(select(self.table).where(self.table.c.id == saga_id))
            ).first()
        return None if row is None else _state(row._mapping)

    async def states(
        self, statuses: frozenset[SagaStatus] | None = None, *, limit: int | None = None
    ) -> list[SagaState]:
        table = self.table
        query = select(table).order_by(table.c.created_at, table.c.id)
        if statuses is not None:
            query = query.where(table.c.status.in_([s.value for s in statuses]))
        if limit is not None:
            query = query.limit(limit)
        async with self.outbox.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_state(row._mapping) for row in rows]

    async def counts(self) -> dict[str, int]:
        table = self.table
        async with self.outbox.engine.connect() as connection:
            rows = await connection.execute(
                select(table.c.status, func.count()).group_by(table.c.status)
            )
            found: dict[str, int] = {row[0]: row[1] for row in rows}
        return {s.value: found.get(s.value, 0) for s in SagaStatus}

    async def unfinished(self) -> list[SagaState]:
        """The running and compensating sagas, oldest first."""
        return await self.states(UNFINISHED)


_CHANGING = ("status", "step", "phase", "context", "version", "error", "updated_at")
"""The columns a recorded change writes (a saga's id, name and start stay)."""


async def run_ddl(outbox: Outbox, metadata: MetaData, *, create: bool) -> None:
    """Create (or drop) the tables of `metadata` in `outbox`'s database."""
    async with outbox.engine.begin() as connection:
        await connection.run_sync(metadata.create_all if create else metadata.drop_all)


def _row(state: SagaState) -> dict[str, Any]:
    return {
        "id": state.id,
        "saga": state.saga,
        "status": state.status.value,
        "step": state.step,
        "phase": state.phase,
        "context": state.context,
        "version": state.version,
        "error": state.error,
        "created_at": state.created_at,
        "updated_at": state.updated_at,
    }


def _state(row: Any) -> SagaState:
    return SagaState(
        id=row["id"],
        saga=row["saga"],
        status=SagaStatus(row["status"]),
        step=row["step"],
        phase=row["phase"],
        context=bytes(row["context"]),
        version=row["version"],
        error=row["error"],
        created_at=utc(row["created_at"]),
        updated_at=utc(row["updated_at"]),
    )
