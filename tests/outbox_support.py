"""Databases for the outbox and inbox tests: SQLite always, PostgreSQL at DATABASE_URL.

Contract:

* PostgreSQL's address comes from ``DATABASE_URL`` (default
  ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``). When it does not
  answer, its tests are skipped locally with the reason, and fail when ``CI``
  is set.
* SQLite is a file in the test's temporary directory, opened with
  `sqlite_engine` (WAL, BEGIN IMMEDIATE).
* Every test gets its own table prefix (``mtk_<hex>``): the outbox's tables
  and any table the test makes with `Database.table` are dropped afterwards.

Test modules define their ``db`` fixture with `open_database`.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from mediator.outbox import Outbox, sqlite_engine

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
KINDS = ("sqlite", "postgresql")
_PROBE_TIMEOUT = 3.0
_unreachable: dict[str, str | None] = {}


def database_url() -> str:
    return os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is required when CI is set: {reason}", pytrace=False)
    pytest.skip(reason)


async def _probe(url: str) -> str | None:
    engine = create_async_engine(url)
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await engine.dispose()
    return None


async def require_postgresql() -> str:
    """DATABASE_URL once it answers; otherwise skip (fail under CI) with why."""
    url = database_url()
    if url not in _unreachable:
        _unreachable[url] = await _probe(url)
    why = _unreachable[url]
    if why is not None:
        _unavailable(f"no PostgreSQL at {url} ({why})")
    return url


class Database:
    """One test's database: an engine, a table prefix, an Outbox with its tables."""

    def __init__(self, kind: str, url: str, engine: AsyncEngine, prefix: str) -> None:
        self.kind = kind
        self.url = url
        self.engine = engine
        self.prefix = prefix
        self.outbox = Outbox(engine, prefix=prefix)
        self._tables: list[str] = []
        self._engines: list[AsyncEngine] = []

    def new_engine(self) -> AsyncEngine:
        """Another engine on the same database (its own pool), disposed after the test."""
        engine = sqlite_engine(self.url) if self.kind == "sqlite" else create_async_engine(self.url)
        self._engines.append(engine)
        return engine

    async def table(self, name: str, columns: str) -> str:
        """Create ``{prefix}_{name} (columns)``, dropped after the test; returns its name."""
        full = f"{self.prefix}_{name}"
        async with self.engine.begin() as connection:
            await connection.execute(text(f"CREATE TABLE {full} ({columns})"))
        self._tables.append(full)
        return full

    async def scalar(self, sql: str, **parameters: Any) -> Any:
        """The first column of the first row of `sql`, read outside any unit of work."""
        async with self.engine.connect() as connection:
            return (await connection.execute(text(sql), parameters)).scalar()

    async def execute(self, sql: str, **parameters: Any) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(text(sql), parameters)

    async def close(self) -> None:
        try:
            for name in reversed(self._tables):
                await self.execute(f"DROP TABLE IF EXISTS {name}")
            await self.outbox.drop_tables()
        finally:
            for engine in (*self._engines, self.engine):
                await engine.dispose()


async def open_database(kind: str, directory: Path) -> Database:
    prefix = f"mtk_{uuid.uuid4().hex[:10]}"
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{directory / (prefix + '.db')}"
        engine = sqlite_engine(url)
    else:
        url = await require_postgresql()
        engine = create_async_engine(url)
    database = Database(kind, url, engine, prefix)
    try:
        await database.outbox.create_tables()
    except BaseException:
        await engine.dispose()
        raise
    return database


async def observed(check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0) -> None:
    """Wait until `check()` holds, asking every 20 ms for at most `timeout`
    seconds: for state only another process can show (a server, a child)."""
    async with asyncio.timeout(timeout):
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)


def only(*kinds: str) -> pytest.MarkDecorator:
    """Run a test on these kinds of database only."""
    return pytest.mark.parametrize("db", kinds, indirect=True)
