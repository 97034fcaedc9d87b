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
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from random import Random
from typing import Any, NoReturn

import attrs
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from mediator import (
    EventConsumer,
    EventEmitter,
    EventMap,
    Mediator,
    Request,
    RequestHandler,
    RequestMap,
)
from mediator.outbox import PENDING, Outbox, OutboxRelay, RelayRound, RelayStats, sqlite_engine
from mediator.testing import Settled

ROOT = Path(__file__).resolve().parent.parent
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


async def relayed(
    relay: OutboxRelay, predicate: Callable[[RelayStats], bool], timeout: float = 10.0
) -> RelayStats:
    """Wait until `predicate(relay.stats)` holds, checked after each of the
    relay's rounds; TimeoutError naming its counters after `timeout` s."""
    if predicate(relay.stats):
        return relay.stats
    reached = asyncio.Event()

    def check(_: RelayRound) -> None:
        if predicate(relay.stats):
            reached.set()

    remove = relay.add_listener(check)
    try:
        async with asyncio.timeout(timeout):
            await reached.wait()
    except TimeoutError:
        raise TimeoutError(
            f"waited {timeout} s on {relay!r} (running: {relay.running}); its counters: "
            f"{relay.stats}"
        ) from None
    finally:
        remove()
    return relay.stats


def only(*kinds: str) -> pytest.MarkDecorator:
    """Run a test on these kinds of database only."""
    return pytest.mark.parametrize("db", kinds, indirect=True)


# -- the kill -9 soak (the test runs it small, bench/bench_outbox.py large) --------------


@attrs.frozen(kw_only=True)
class SoakResult:
    sends: int
    seen: int
    lost: int
    duplicates: int
    kills: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"{self.sends} sends, relay killed {self.kills} times: consumer saw {self.seen} "
            f"message ids, lost {self.lost}, duplicates {self.duplicates}, "
            f"{self.seconds:.1f} s"
        )


class _Progress:
    """Message ids the consumer handled, and waits on how many are distinct."""

    def __init__(self) -> None:
        self.counts: Counter[uuid.UUID] = Counter()
        self._waiters: list[tuple[int, asyncio.Event]] = []

    def handled(self, settled: Settled) -> None:
        if settled.outcome != "handled" or settled.message is None:
            return
        self.counts[settled.message.message_id] += 1
        reached = len(self.counts)
        for count, event in self._waiters:
            if reached >= count:
                event.set()

    async def at_least(self, count: int, timeout: float) -> None:
        if len(self.counts) >= count:
            return
        event = asyncio.Event()
        self._waiters.append((count, event))
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        finally:
            self._waiters.remove((count, event))


async def _readies(log: Path) -> int:
    """How many relays started on `log` said they run."""

    def count() -> int:
        return log.read_text(errors="replace").count("ready\n") if log.exists() else 0

    return await asyncio.to_thread(count)


async def _tail(log: Path) -> str:
    content = await asyncio.to_thread(log.read_text, errors="replace")
    return content[-3000:]


async def _start_relay(command: list[str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as output:
        return await asyncio.create_subprocess_exec(
            *command,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=output,  # its "ready" line, which the soak waits for before a SIGTERM
            stderr=output,
        )


async def soak(
    db: Database,
    redis_url: str,
    channel_prefix: str,
    *,
    sends: int,
    kills: int,
    log: Path,
    window: int = 200,
    seed: int | None = None,
) -> SoakResult:
    """`sends` sends through `db`'s outbox while a relay process publishing to
    Redis Streams is killed with SIGKILL `kills` times, at random points of
    the consumer's progress, and started again each time; then the relay is
    stopped with SIGTERM (it must exit 0) and the consumer's count compared.

    The sender keeps at most `window` messages ahead of the consumer, so the
    sends go on while the relay dies and comes back.
    """
    from tests.outbox_processes import Paid, stream_broker

    started = time.monotonic()
    random = Random(seed)
    events = EventMap()
    progress = _Progress()
    events.bind(Paid, _ignore)
    broker = stream_broker(redis_url, channel_prefix)
    consumer = EventConsumer(broker=broker, event_map=events, max_concurrency=64)
    consumer.add_listener(progress.handled)
    await consumer.subscribe(f"{channel_prefix}:notification_event:*", group="soak")
    requests = RequestMap()
    requests.bind(Pay, PayHandler)
    mediator = Mediator(
        request_map=requests,
        event_emitter=EventEmitter(event_map=events, message_broker=db.outbox),
        unit_of_work=db.outbox.unit_of_work,
    )
    command = [
        sys.executable,
        "-m",
        "tests.outbox_processes",
        "relay",
        db.url,
        db.prefix,
        redis_url,
        channel_prefix,
    ]
    points = sorted(random.sample(range(sends // 20, sends - sends // 20), kills))
    killed = 0
    readies_before_last = await _readies(log)
    relay = await _start_relay(command, log)

    async def kill_at_random_points() -> None:
        nonlocal relay, killed, readies_before_last
        for point in points:
            await progress.at_least(point, timeout=60.0)
            relay.send_signal(signal.SIGKILL)
            await relay.wait()
            killed += 1
            readies_before_last = await _readies(log)
            relay = await _start_relay(command, log)

    async def send_all() -> None:
        for n in range(sends):
            await progress.at_least(n - window, timeout=60.0)
            await mediator.send(Pay(order_id=n))

    try:
        async with consumer:
            try:
                await asyncio.gather(kill_at_random_points(), send_all())
                await progress.at_least(sends, timeout=60.0)
            except TimeoutError:
                raise AssertionError(
                    f"the soak stalled: {len(progress.counts)} of {sends} message ids seen, "
                    f"{killed} kills, outbox rows {await db.outbox.counts()}, relay exit code "
                    f"{relay.returncode}, consumer {consumer.stats}; the relay's log ends: "
                    f"{await _tail(log)}"
                ) from None

            # The rows of the last relay killed may have reached the consumer
            # and still be leased: the relay running now marks them once the
            # lease expires.
            async def all_marked() -> bool:
                return (await db.outbox.counts())[PENDING] == 0

            await observed(all_marked, timeout=30.0)

            # A SIGTERM before the relay set its handler would kill it (-15).
            async def last_relay_ready() -> bool:
                return await _readies(log) > readies_before_last

            await observed(last_relay_ready, timeout=30.0)
            relay.send_signal(signal.SIGTERM)
            returncode = await asyncio.wait_for(relay.wait(), 30.0)
            if returncode != 0:
                raise AssertionError(
                    f"the relay exited with {returncode} on SIGTERM; its log ends: "
                    f"{await _tail(log)}"
                )
    finally:
        if relay.returncode is None:
            relay.kill()
            await relay.wait()
        await broker.stop()
        await broker.client.aclose()
    seen = len(progress.counts)
    return SoakResult(
        sends=sends,
        seen=seen,
        lost=sends - seen,
        duplicates=sum(progress.counts.values()) - seen,
        kills=killed,
        seconds=time.monotonic() - started,
    )


@attrs.frozen(kw_only=True)
class Pay(Request[None]):
    order_id: int


class PayHandler(RequestHandler[Pay, None]):
    async def handle(self, request: Pay) -> None:
        from tests.outbox_processes import Paid

        self.events.append(Paid(order_id=request.order_id))


async def _ignore(event: Any) -> None:
    return None
