"""examples/orders_app.py as its docs run it: ``mediator run orders_app:app``
relays and bills, another process places orders, and every order is charged
exactly once."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.outbox_support import observed, require_postgresql

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
STEP = 30.0


class Run:
    """``mediator run orders_app:app``, its stderr read line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    async def line(self, contains: str) -> str:
        assert self.process.stderr is not None
        async with asyncio.timeout(STEP):
            while True:
                raw = await self.process.stderr.readline()
                if not raw:
                    raise AssertionError(f"ended before {contains!r}:\n" + "\n".join(self.lines))
                self.lines.append(raw.decode().rstrip("\n"))
                if contains in self.lines[-1]:
                    return self.lines[-1]


async def app_command(env: dict[str, str], *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "orders_app.py",
        *args,
        env=env,
        cwd=EXAMPLES,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(STEP):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode().strip()


@pytest.fixture(params=["sqlite-memory", "postgresql-redis-streams"])
async def setting(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[dict[str, str], int]]:
    prefix = f"mtk_{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(EXAMPLES)]),
        "ORDERS_TABLES": prefix,
    }
    workers = 1
    if request.param == "sqlite-memory":
        env["DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}"
        env["MEDIATOR_BROKER_URL"] = "memory://"
    else:
        env["DATABASE_URL"] = await require_postgresql()
        redis_url = request.getfixturevalue("redis_url")
        env["MEDIATOR_BROKER_URL"] = redis_url.replace("redis://", "redis+streams://", 1)
        workers = 2
    try:
        yield env, workers
    finally:
        if request.param != "sqlite-memory":
            await _drop(env["DATABASE_URL"], prefix)
            from redis.asyncio import Redis

            client = Redis.from_url(request.getfixturevalue("redis_url"))
            keys = [key async for key in client.scan_iter(f"{prefix}*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()


async def _drop(url: str, prefix: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    async with engine.begin() as connection:
        tables = (
            await connection.execute(
                text("SELECT tablename FROM pg_tables WHERE tablename LIKE :p"),
                {"p": f"{prefix}%"},
            )
        ).scalars()
        for table in list(tables):
            await connection.execute(text(f'DROP TABLE IF EXISTS "{table}" CASCADE'))
    await engine.dispose()


async def test_orders_placed_elsewhere_are_relayed_and_charged_once(
    setting: tuple[dict[str, str], int],
) -> None:
    env, workers = setting
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mediator",
        "run",
        "orders_app:app",
        "--workers",
        str(workers),
        env=env,
        cwd=EXAMPLES,
        stderr=asyncio.subprocess.PIPE,
    )
    run = Run(process)
    try:
        for _ in range(workers):
            await run.line("service orders started")
        assert await app_command(env, "place", "40") == "placed 40 orders"

        async def all_charged() -> bool:
            return (await app_command(env, "report")).startswith("orders 40, charged 40")

        await observed(all_charged, timeout=STEP)
        assert await app_command(env, "report") == "orders 40, charged 40, charged twice 0"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(STEP):
            await process.communicate()
    assert process.returncode == 0, "\n".join(run.lines)
    assert not [line for line in run.lines if re.search(r"ERROR|Traceback", line)]
