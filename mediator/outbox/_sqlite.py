"""SQLite for the outbox: an aiosqlite engine whose writing transactions can
take the write lock at once (docs/outbox.md, "SQLite")."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ["IMMEDIATE", "sqlite_engine"]

IMMEDIATE = {"sqlite_begin": "IMMEDIATE"}
"""Execution options under which `sqlite_engine` begins with BEGIN IMMEDIATE."""


def sqlite_engine(url: str, *, busy_timeout: float = 15.0, **options: Any) -> AsyncEngine:
    """An aiosqlite engine set up for the outbox: WAL, foreign keys on, and
    ``BEGIN IMMEDIATE`` (waiting up to `busy_timeout` seconds for the write
    lock) under the execution option ``sqlite_begin="IMMEDIATE"``.

    ```python
    engine = sqlite_engine("sqlite+aiosqlite:///app.db")
    ```

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
