"""The outbox's tables (outbox, partition-key locks, inbox): their SQLAlchemy
definitions, their DDL, and the PostgreSQL trigger that wakes relays on commit.
docs/outbox.md, "The tables", shows the SQL."""

from __future__ import annotations

import datetime as dt
import re
import zlib

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.types import TypeEngine

__all__ = ["DEAD", "PENDING", "SENT", "OutboxTables", "as_utc", "utcnow"]

PENDING = "pending"
"""A row waiting to be published (or to be retried)."""
SENT = "sent"
"""A row the broker took; deleted once older than the relay's retention."""
DEAD = "dead"
"""A row that failed `max_attempts` times; kept until someone requeues or deletes it."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime) -> dt.datetime:
    """A time read back from the database, in UTC (SQLite returns naive UTC)."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,39}")

_DIALECTS: dict[str, Dialect] = {
    "postgresql": postgresql.dialect(),  # type: ignore[no-untyped-call]
    "sqlite": sqlite.dialect(),
}


def _row_id() -> TypeEngine[int]:
    # SQLite numbers rows itself only for a column declared exactly INTEGER
    # PRIMARY KEY (the rowid); elsewhere a 64-bit identity.
    return BigInteger().with_variant(Integer(), "sqlite")


def _tidy(compiled: object) -> str:
    """Compiled DDL as a reader wants it: spaces for tabs, no trailing blanks."""
    lines = str(compiled).strip().replace("\t", "    ").splitlines()
    return "\n".join(line.rstrip() for line in lines)


class OutboxTables:
    """The outbox, its partition-key locks and the inbox, named by `prefix`.

    ```python
    tables = OutboxTables("shop")      # shop_outbox, shop_outbox_keys, shop_inbox
    print(tables.sql("postgresql"))    # the DDL, for a migration tool
    ```
    """

    def __init__(self, prefix: str = "mediator") -> None:
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(
                f"OutboxTables(prefix={prefix!r}): use at most 40 lowercase letters, digits "
                "and underscores, not starting with a digit; it names the tables "
                "{prefix}_outbox, {prefix}_outbox_keys and {prefix}_inbox"
            )
        self.prefix = prefix
        """The first part of every table, index and trigger name."""
        self.metadata = MetaData()
        """The three tables, for `create_all` or a migration tool such as Alembic."""
        self.outbox = Table(
            f"{prefix}_outbox",
            self.metadata,
            Column("id", _row_id(), primary_key=True, autoincrement=True),
            Column("message_id", Uuid(), nullable=False),
            Column("message_name", String(255), nullable=False),
            Column("partition_key", String(255), nullable=True),
            Column("body", Text(), nullable=False),
            Column("status", String(8), nullable=False, server_default=PENDING),
            Column("attempts", Integer(), nullable=False, server_default=text("0")),
            Column("created_at", DateTime(timezone=True), nullable=False),
            Column("next_attempt_at", DateTime(timezone=True), nullable=False),
            Column("locked_by", String(255), nullable=True),
            Column("locked_until", DateTime(timezone=True), nullable=True),
            Column("sent_at", DateTime(timezone=True), nullable=True),
            Column("last_error", Text(), nullable=True),
            CheckConstraint(
                f"status IN ('{PENDING}', '{SENT}', '{DEAD}')", name=f"{prefix}_outbox_status"
            ),
        )
        """One row per broker-bound event."""
        pending = self.outbox.c.status == PENDING
        # The relay's claim walks pending rows in id order; the partition-key
        # check looks for earlier pending rows of the same key; the cleanup
        # finds sent rows by age. Partial indexes keep each one small.
        Index(
            f"{prefix}_outbox_pending",
            self.outbox.c.id,
            postgresql_where=pending,
            sqlite_where=pending,
        )
        keyed = pending & self.outbox.c.partition_key.is_not(None)
        Index(
            f"{prefix}_outbox_pending_key",
            self.outbox.c.partition_key,
            self.outbox.c.id,
            postgresql_where=keyed,
            sqlite_where=keyed,
        )
        sent = self.outbox.c.status == SENT
        Index(
            f"{prefix}_outbox_sent",
            self.outbox.c.sent_at,
            postgresql_where=sent,
            sqlite_where=sent,
        )
        self.keys = Table(
            f"{prefix}_outbox_keys",
            self.metadata,
            Column("partition_key", String(255), primary_key=True),
            Column("touched_at", DateTime(timezone=True), nullable=False),
        )
        """One row per partition key, locked by the sends that write rows of that key."""
        self.inbox = Table(
            f"{prefix}_inbox",
            self.metadata,
            Column("consumer", String(255), primary_key=True),
            Column("message_id", Uuid(), primary_key=True),
            Column("received_at", DateTime(timezone=True), nullable=False),
        )
        """One row per (consumer, message id) an inbox let through."""
        Index(f"{prefix}_inbox_received", self.inbox.c.received_at)

    @property
    def channel(self) -> str:
        """The PostgreSQL NOTIFY channel a commit of outbox rows signals."""
        return f"{self.prefix}_outbox"

    @property
    def claim_lock(self) -> int:
        """The advisory lock key PostgreSQL relays of this outbox claim under."""
        return zlib.crc32(self.outbox.name.encode())

    def _trigger(self) -> list[str]:
        name, function = self.outbox.name, f"{self.prefix}_outbox_notify"
        return [
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN\n    PERFORM pg_notify('{self.channel}', '');\n    RETURN NULL;\nEND\n$$",
            f"CREATE OR REPLACE TRIGGER {function} AFTER INSERT ON {name}\n"
            f"    FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
        ]

    def statements(self, dialect: str) -> list[str]:
        """The DDL creating the tables on `dialect` ("postgresql" or "sqlite"),
        one statement per item, without the closing semicolons."""
        compiled = _DIALECTS.get(dialect)
        if compiled is None:
            raise ValueError(
                f"OutboxTables.statements({dialect!r}): the outbox supports 'postgresql' "
                "and 'sqlite'"
            )
        statements: list[str] = []
        for table in self.metadata.sorted_tables:
            statements.append(_tidy(CreateTable(table).compile(dialect=compiled)))
            for index in sorted(table.indexes, key=lambda i: str(i.name)):
                statements.append(_tidy(CreateIndex(index).compile(dialect=compiled)))
        if dialect == "postgresql":
            statements.extend(self._trigger())
        return statements

    def sql(self, dialect: str) -> str:
        """The DDL as one script, for teams that create tables with migrations."""
        return "\n\n".join(f"{statement};" for statement in self.statements(dialect)) + "\n"

    async def create(self, engine: AsyncEngine) -> None:
        """Create what does not exist yet (tables, indexes, the PostgreSQL trigger)."""
        async with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                # Processes starting together (every worker of `mediator run
                # --workers N`) take turns: a second CREATE of one table at once
                # fails on PostgreSQL's catalog rather than finding it there.
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(hashtext(:name))"),
                    {"name": f"{self.prefix} outbox tables"},
                )
            await connection.run_sync(self.metadata.create_all)
            if engine.dialect.name == "postgresql":
                for statement in self._trigger():
                    await connection.exec_driver_sql(statement)

    async def drop(self, engine: AsyncEngine) -> None:
        """Drop the tables (and the PostgreSQL trigger function), with their rows."""
        async with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                await connection.exec_driver_sql(
                    f"DROP FUNCTION IF EXISTS {self.prefix}_outbox_notify() CASCADE"
                )
            await connection.run_sync(self.metadata.drop_all)
