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
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

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


# -- the soak: kills while it works -----------------------------------------------

SOAK_SENDS = int(os.environ.get("ORDERS_SOAK_SENDS", "300"))
"""Orders of the soak; CI runs it short, ORDERS_SOAK_SENDS=2000 by hand."""


def _broker_url(transport: str, request: pytest.FixtureRequest) -> str:
    if transport == "redis-streams":
        url = request.getfixturevalue("redis_url").replace("redis://", "redis+streams://", 1)
        # A dead worker's pending entries are claimed after 2 s, not 60.
        return f"{url}?claim_idle=2&claim_interval=0.5"
    if transport == "rabbitmq":
        from tests.rabbitmq_support import amqp_url

        return amqp_url()
    server = request.getfixturevalue("kafka_server")
    idempotence = "false" if server.tansu else "true"
    session = 2000 if server.tansu else 6000
    return (
        f"kafka://{server.bootstrap_servers}?idempotence={idempotence}"
        f"&session_timeout_ms={session}&discovery_interval=0.5"
    )


async def _cleanup_broker(transport: str, url: str, prefix: str) -> None:
    if transport == "redis-streams":
        from redis.asyncio import Redis

        client = Redis.from_url(url.replace("redis+streams://", "redis://").split("?")[0])
        keys = [key async for key in client.scan_iter(f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    elif transport == "rabbitmq":
        import aio_pika

        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            for queue in (f"{prefix}.billing", f"{prefix}.dead-letter"):
                await channel.queue_delete(queue)
            for exchange in (prefix, f"{prefix}.unroutable", f"{prefix}.dead-letter"):
                await channel.exchange_delete(exchange)
    else:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=url.split("://")[1].split("?")[0])
        await admin.start()
        try:
            topics = [t for t in await admin.list_topics() if t.startswith(prefix)]
            if topics:
                await admin.delete_topics(topics)
        finally:
            await admin.close()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("transport", ["redis-streams", "rabbitmq", "kafka"])
async def test_kills_of_workers_and_database_backends_lose_nothing_and_charge_once(
    transport: str, request: pytest.FixtureRequest
) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    database_url = await require_postgresql()
    prefix = f"mtk_{uuid.uuid4().hex[:10]}"
    broker_url = _broker_url(transport, request)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(EXAMPLES)]),
        "ORDERS_TABLES": prefix,
        "DATABASE_URL": database_url,
        "MEDIATOR_BROKER_URL": broker_url,
    }
    engine = create_async_engine(database_url)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mediator",
        "run",
        "orders_app:app",
        "--workers",
        "2",
        "--restart-delay",
        "0.1",
        "--restart-limit",
        "20",
        env=env,
        cwd=EXAMPLES,
        stderr=asyncio.subprocess.PIPE,
    )
    run = Run(process)
    workers: dict[int, int] = {}
    """Each worker's number and its pid now."""

    async def follow_workers() -> None:
        # The parent names its workers and each restart on stderr.
        assert process.stderr is not None
        async for raw in process.stderr:
            line = raw.decode().rstrip("\n")
            run.lines.append(line)
            found = re.search(r"worker (\d+) (?:re)?started: pid (\d+)", line)
            if found:
                workers[int(found[1])] = int(found[2])

    async def charged() -> int:
        async with engine.connect() as connection:
            counted = await connection.execute(
                text(f"SELECT count(DISTINCT order_id) FROM {prefix}_payments")
            )
            return int(counted.scalar() or 0)

    async def charged_at_least(target: int, timeout: float) -> None:
        try:
            await observed(lambda: _reached(charged, target), timeout=timeout)
        except TimeoutError:
            log = os.environ.get("ORDERS_SOAK_LOG")
            if log:  # the whole log, for a stall that the tail does not explain
                await asyncio.to_thread(Path(log).write_text, "\n".join(run.lines))
            raise AssertionError(
                f"{await charged()} of {target} orders charged after {timeout:g} s.\n"
                + await _stall_report(transport, broker_url, prefix, engine)
                + "\nThe service's log ends:\n"
                + "\n".join(run.lines[-60:])
            ) from None

    follower = asyncio.create_task(follow_workers())
    try:

        async def up() -> bool:
            return len(workers) == 2 and await _tables_exist(engine, prefix)

        await observed(up, timeout=STEP)
        placing = asyncio.create_task(app_command(env, "place", str(SOAK_SENDS)))
        for kills, point in enumerate((SOAK_SENDS // 5, 2 * SOAK_SENDS // 5, 3 * SOAK_SENDS // 5)):
            await charged_at_least(point, timeout=120)
            os.kill(workers[kills % 2], signal.SIGKILL)
            async with engine.begin() as connection:
                # The service's own backends only (the server is shared; the
                # process placing orders is a client, not under test here).
                await connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = :service"
                    ),
                    {"service": f"{prefix} service"},
                )
        assert await placing == f"placed {SOAK_SENDS} orders"
        await charged_at_least(SOAK_SENDS, timeout=180)
        report = await app_command(env, "report")
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(STEP):
            await process.wait()
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await _drop(database_url, prefix)
        await engine.dispose()
        await _cleanup_broker(transport, broker_url, prefix)
    assert report == f"orders {SOAK_SENDS}, charged {SOAK_SENDS}, charged twice 0", "\n".join(
        run.lines[-40:]
    )
    assert process.returncode in (0, 4), "\n".join(run.lines[-40:])


async def _stall_report(transport: str, url: str, prefix: str, engine: Any) -> str:
    """What a stalled soak leaves behind: the service's database sessions
    and, on Kafka, each partition's end against the group's commit."""
    from sqlalchemy import text

    lines = ["The service's database sessions (state, seconds in it, query):"]
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT pid, state, extract(epoch FROM now() - state_change)::int, "
                "left(query, 80) FROM pg_stat_activity WHERE application_name = :service"
            ),
            {"service": f"{prefix} service"},
        )
        lines += [f"  {row[0]} {row[1]} {row[2]} s: {row[3]}" for row in rows]
    if transport == "kafka":
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient

        servers = url.split("://")[1].split("?")[0]
        admin = AIOKafkaAdminClient(bootstrap_servers=servers)
        reader = AIOKafkaConsumer(bootstrap_servers=servers)
        await admin.start()
        await reader.start()
        try:
            tps = [
                TopicPartition(topic, partition)
                for topic in await reader.topics()
                if topic.startswith(prefix)
                for partition in reader.partitions_for_topic(topic) or ()
            ]
            committed = await admin.list_consumer_group_offsets(f"{prefix}.billing", partitions=tps)
            ends = await reader.end_offsets(tps) if tps else {}
            lines.append("Kafka partitions (committed / end):")
            lines += [
                f"  {tp.topic}[{tp.partition}] {meta.offset} / {ends.get(tp)}"
                for tp, meta in sorted(committed.items())
            ]
        finally:
            await reader.stop()
            await admin.close()
    return "\n".join(lines)


async def _reached(count: Callable[[], Awaitable[int]], target: int) -> bool:
    return await count() >= target


async def _tables_exist(engine: Any, prefix: str) -> bool:
    from sqlalchemy import text

    async with engine.connect() as connection:
        found = await connection.execute(
            text("SELECT count(*) FROM pg_tables WHERE tablename = :t"), {"t": f"{prefix}_payments"}
        )
        return int(found.scalar() or 0) == 1
