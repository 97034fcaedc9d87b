"""The ``mediator`` command, run as operators run it: a process of its own on
Redis Streams or the memory broker, stopped with SIGTERM, read through its
output and exit status (each status docs/running.md lists is tested here)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import orjson
import pytest
import redis.asyncio

from brokers.redis import RedisStreamMessageBroker
from mediator import EventEmitter, EventMap
from mediator._operations.cli import main
from mediator._operations.exit_status import (
    DRAIN_CANCELLED,
    FAILED,
    FORCED,
    GAVE_UP,
    SEVERITY,
    STOPPED,
    USAGE,
)
from tests.cli_app import OrderPlaced

ROOT = Path(__file__).resolve().parent.parent
STEP = 30.0
"""Seconds any one step (start, handle, stop) may take before the test fails."""


@attrs.define
class Command:
    """A running ``mediator`` process, its output read line by line."""

    process: asyncio.subprocess.Process
    stdout: list[str] = attrs.field(factory=list)
    stderr: list[str] = attrs.field(factory=list)

    async def line(self, where: str, contains: str) -> str:
        """The next line on `where` ("stdout"/"stderr") containing `contains`."""
        stream = self.process.stdout if where == "stdout" else self.process.stderr
        assert stream is not None
        kept = self.stdout if where == "stdout" else self.stderr
        async with asyncio.timeout(STEP):
            while True:
                raw = await stream.readline()
                if not raw:
                    raise AssertionError(
                        f"{where} ended before a line with {contains!r}:\n" + "\n".join(kept)
                    )
                text = raw.decode().rstrip("\n")
                kept.append(text)
                if contains in text:
                    return text

    async def finish(self) -> int:
        async with asyncio.timeout(STEP):
            out, err = await self.process.communicate()
        self.stdout.extend(out.decode().splitlines())
        self.stderr.extend(err.decode().splitlines())
        assert self.process.returncode is not None
        return self.process.returncode


def _env(prefix: str, redis_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "examples")]),
        "CLI_APP_PREFIX": prefix,
        "REDIS_URL": redis_url,
        **extra,
    }


async def _start(*args: str, env: dict[str, str]) -> Command:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mediator",
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    return Command(process)


@pytest.fixture
async def commands() -> AsyncIterator[list[Command]]:
    """Every command a test starts; one still running at the end is killed by its PID."""
    started: list[Command] = []
    yield started
    for command in started:
        if command.process.returncode is None:
            command.process.kill()
            await command.process.wait()


async def _publish(redis_url: str, prefix: str, order_ids: range) -> None:
    broker = RedisStreamMessageBroker.from_url(redis_url, prefix)
    emitter = EventEmitter(event_map=EventMap(), message_broker=broker)
    async with broker:
        for order_id in order_ids:
            await emitter.emit(OrderPlaced(order_id=order_id))


async def _handled(client: redis.asyncio.Redis, prefix: str, at_least: int) -> list[str]:
    """The records of handled events, once there are `at_least` (bounded poll)."""
    deadline = time.monotonic() + STEP
    while True:
        records = [r.decode() for r in await client.lrange(f"{prefix}:handled", 0, -1)]
        if len(records) >= at_least or time.monotonic() > deadline:
            return records
        await asyncio.sleep(0.05)  # poll interval, bounded by the deadline


async def test_run_handles_messages_and_a_sigterm_drains_and_exits_0_with_nothing_lost(
    redis_url: str,
    key_prefix: str,
    redis_client: redis.asyncio.Redis,
    commands: list[Command],
) -> None:
    streams = redis_url.replace("redis://", "redis+streams://", 1)
    env = _env(key_prefix, redis_url, CLI_APP_BROKER=streams, CLI_APP_GATE="10")
    first = await _start("run", "tests.cli_app:service", env=env)
    commands.append(first)
    await first.line("stdout", "started billing")
    await _publish(redis_url, key_prefix, range(60))
    # Stop while the group is part-way through: 10 handled, the next ones in
    # flight (held at the gate until the stop has begun), the rest unread.
    assert len(await _handled(redis_client, key_prefix, 10)) == 10
    first.process.send_signal(signal.SIGTERM)
    await first.line("stderr", "SIGTERM: stopping service billing")
    await redis_client.rpush(f"{key_prefix}:gate", *range(60))
    assert await first.finish() == 0, "\n".join(first.stderr)
    assert "stopping billing" in first.stdout
    assert not any("Traceback" in line for line in first.stderr), first.stderr
    assert any("stopped cleanly (SIGTERM)" in line for line in first.stderr)
    handled_first = len(await _handled(redis_client, key_prefix, 0))
    assert 10 < handled_first < 60, "the deliveries in flight were finished, the rest left"

    # The rest, and whatever the first run had read but not handled, is the next run's.
    second = await _start("run", "tests.cli_app:service", env=env)
    commands.append(second)
    await second.line("stdout", "started billing")
    records = await _handled(redis_client, key_prefix, 60)
    second.process.send_signal(signal.SIGTERM)
    assert await second.finish() == 0, "\n".join(second.stderr)
    ids = [int(record.split(":")[0]) for record in records]
    assert sorted(ids) == list(range(60)), "every event handled exactly once"
    for key in await redis_client.smembers(f"{key_prefix}:streams"):
        for group in await redis_client.xinfo_groups(key):
            assert group["pending"] == 0, group


async def test_two_workers_share_one_group(
    redis_url: str,
    key_prefix: str,
    redis_client: redis.asyncio.Redis,
    commands: list[Command],
) -> None:
    streams = redis_url.replace("redis://", "redis+streams://", 1)
    env = _env(key_prefix, redis_url, CLI_APP_WORK="0.02")
    # The stream exists before the workers start, so both join the group on it at
    # once (a stream that appears later is found by whichever looks first).
    await _publish(redis_url, key_prefix, range(-1, 0))
    # The broker from --broker: the app's own (in memory) is replaced, its prefix kept.
    command = await _start(
        "run", "tests.cli_app:service", "--broker", streams, "--workers", "2", env=env
    )
    commands.append(command)
    await command.line("stdout", "started billing")
    await command.line("stdout", "started billing")
    await _publish(redis_url, key_prefix, range(40))
    records = [r for r in await _handled(redis_client, key_prefix, 40) if not r.startswith("-")]
    command.process.send_signal(signal.SIGTERM)
    assert await command.finish() == 0, "\n".join(command.stderr)
    assert sorted(int(r.split(":")[0]) for r in records) == list(range(40))
    pids = {r.split(":")[1] for r in records}
    assert len(pids) == 2, f"one worker took everything: {pids}"
    assert command.stdout.count("stopping billing") == 2
    [stream] = await redis_client.smembers(f"{key_prefix}:streams")
    [group] = await redis_client.xinfo_groups(stream)
    assert group["name"] == b"billing"
    assert group["pending"] == 0


async def test_a_failing_start_exits_1_with_the_reason_in_one_line(
    redis_url: str, key_prefix: str, commands: list[Command]
) -> None:
    env = _env(key_prefix, redis_url)
    command = await _start(
        "run", "tests.cli_app:service", "--broker", "redis+streams://127.0.0.1:1", env=env
    )
    commands.append(command)
    assert await command.finish() == 1
    [reason] = [line for line in command.stderr if line.startswith("mediator run:")]
    assert reason.startswith("mediator run: BrokerUnavailableError: ")
    assert "127.0.0.1:1" in reason
    assert not any("Traceback" in line for line in command.stderr), command.stderr


async def test_without_restarts_a_worker_that_fails_to_start_stops_the_command(
    redis_url: str, key_prefix: str, commands: list[Command]
) -> None:
    env = _env(key_prefix, redis_url)
    command = await _start(
        "run",
        "tests.cli_app:service",
        "--broker",
        "redis+streams://127.0.0.1:1",
        "--workers",
        "2",
        "--restart-limit",
        "0",
        env=env,
    )
    commands.append(command)
    assert await command.finish() == GAVE_UP
    assert sum(line.startswith("mediator run: BrokerUnavailableError") for line in command.stderr)
    assert "--restart-limit 0" in command.stderr[-1]


async def test_the_health_endpoint_answers_liveness_readiness_and_stats(
    redis_url: str, key_prefix: str, commands: list[Command]
) -> None:
    env = _env(key_prefix, redis_url)
    command = await _start(
        "run", "tests.cli_app:service", "--broker", "memory://", "--health-port", "0", env=env
    )
    commands.append(command)
    line = await command.line("stderr", "health endpoint on http://127.0.0.1:")
    port = int(line.rsplit(":", 1)[1])
    await command.line("stdout", "started billing")
    # Logged once start() has returned: ready from then on.
    await command.line("stderr", "service billing started")
    assert await _get(port, "/livez") == (200, {"status": "alive"})
    assert await _get(port, "/readyz") == (200, {"status": "ready"})
    status, stats = await _get(port, "/stats")
    assert status == 200
    assert stats["service"] == "billing"
    [consumer] = stats["consumers"]
    assert consumer["subscriptions"] == [
        {"pattern": f"{key_prefix}:notification_event:Order*", "group": "billing", "inbox": None}
    ]
    assert consumer["handled"] == 0
    assert (await _get(port, "/nope"))[0] == 404
    command.process.send_signal(signal.SIGINT)
    assert await command.finish() == 0, "\n".join(command.stderr)


async def _get(port: int, path: str) -> tuple[int, dict[str, object]]:
    async with asyncio.timeout(STEP):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        await writer.drain()
        response = await reader.read()
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), orjson.loads(body)


def test_a_path_that_names_no_service_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["asyncapi", "tests.cli_app:records"])
    assert exited.value.code == 2
    assert "not a mediator.Service" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["diagram", f"no_such_module_{uuid.uuid4().hex}:app"])
    assert exited.value.code == 2
    assert "cannot import" in capsys.readouterr().err


def test_asyncapi_and_diagram_write_to_a_file(tmp_path: Path) -> None:
    target = tmp_path / "asyncapi.json"
    assert main(["asyncapi", "tests.cli_app:service", "-o", str(target)]) == 0
    assert orjson.loads(target.read_bytes())["asyncapi"] == "3.0.0"
    chart = tmp_path / "routes.mmd"
    assert main(["diagram", "tests.cli_app:service", "--output", str(chart)]) == 0
    assert chart.read_text().startswith("flowchart LR\n")


def test_the_console_script_is_the_same_command() -> None:
    from importlib.metadata import entry_points

    [script] = entry_points(group="console_scripts", name="mediator")
    assert script.load() is main


# -- lifecycle on the memory broker (tests/cli_lifecycle_app.py) -----------------


def _lifecycle_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


async def _run_app(
    commands: list[Command], app: str, *args: str, env: dict[str, str] | None = None
) -> Command:
    command = await _start(
        "run", f"tests.cli_lifecycle_app:{app}", *args, env=env or _lifecycle_env()
    )
    commands.append(command)
    return command


def _two_free_ports() -> int:
    """A port P such that P and P + 1 are free (worker i serves on P + i)."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise AssertionError("found no two consecutive free ports")


def test_the_exit_statuses_and_their_ranking_are_the_documented_ones() -> None:
    assert (STOPPED, FAILED, USAGE, FORCED, DRAIN_CANCELLED, GAVE_UP) == (0, 1, 2, 3, 4, 5)
    # Least to most serious, as docs/running.md ranks them for the parent of --workers.
    assert SEVERITY == (0, 4, 3, 1, 5, 2)


@pytest.mark.parametrize(
    "args",
    [
        ("tests.cli_lifecycle_app:plain", "--workers", "0"),
        ("tests.cli_lifecycle_app:plain", "--no-such-option"),
        ("tests.cli_lifecycle_app:plain", "--restart-limit", "-1"),
        ("tests.cli_lifecycle_app:nothing_here", "--workers", "2"),
    ],
    ids=["workers-0", "unknown-option", "negative-limit", "worker-usage-error"],
)
async def test_a_usage_error_exits_2(commands: list[Command], args: tuple[str, ...]) -> None:
    command = await _start("run", *args, env=_lifecycle_env())
    commands.append(command)
    assert await command.finish() == USAGE
    assert command.stderr[-1].startswith(("mediator run: ", "mediator: error: ")), command.stderr
    assert not any("Traceback" in line for line in command.stderr), command.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_service_that_ends_by_itself_exits_0_and_is_not_restarted(
    commands: list[Command], workers: str
) -> None:
    command = await _run_app(commands, "ends_by_itself", "--workers", workers)
    assert await command.finish() == STOPPED, "\n".join(command.stderr)
    assert command.stdout.count("started ends_by_itself") == int(workers)
    assert not any("restarting it in" in line for line in command.stderr), command.stderr


async def test_a_failing_service_exits_1_with_the_reason_last(commands: list[Command]) -> None:
    command = await _run_app(commands, "failing_start")
    assert await command.finish() == FAILED
    assert command.stderr[-1] == ("mediator run: RuntimeError: the start-up hook failed on purpose")
    assert "broker stopped" in command.stdout, "what had started was stopped"


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_during_a_slow_start_up_hook_stops_what_started_and_exits_0(
    commands: list[Command], workers: str
) -> None:
    command = await _run_app(commands, "slow_start", "--workers", workers)
    for _ in range(int(workers)):
        await command.line("stdout", "waiting in start-up")
    command.process.send_signal(signal.SIGTERM)
    assert await command.finish() == STOPPED, "\n".join(command.stderr)
    assert command.stdout.count("start-up cancelled") == int(workers)
    assert command.stdout.count("broker stopped") == int(workers)
    stopped = [line for line in command.stderr if "service slow_start did not start" in line]
    assert len(stopped) == int(workers), command.stderr
    assert not any("Traceback" in line for line in command.stderr), command.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_drain_cut_short_by_the_drain_timeout_exits_4(
    commands: list[Command], workers: str
) -> None:
    command = await _run_app(commands, "stuck", "--drain-timeout", "0.2", "--workers", workers)
    for _ in range(int(workers)):
        await command.line("stdout", "handling stuck")
    command.process.send_signal(signal.SIGTERM)
    assert await command.finish() == DRAIN_CANCELLED, "\n".join(command.stderr)
    reason = "mediator run: 1 deliveries were still running after the drain timeout (0.2 s)"
    assert sum(line.startswith(reason) for line in command.stderr) == int(workers)


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_second_signal_stops_at_once_and_exits_3(
    commands: list[Command], workers: str
) -> None:
    command = await _run_app(commands, "stuck", "--drain-timeout", "60", "--workers", workers)
    for _ in range(int(workers)):
        await command.line("stdout", "handling stuck")
    command.process.send_signal(signal.SIGTERM)
    for _ in range(int(workers)):
        await command.line("stderr", "SIGTERM: stopping service stuck (draining)")
    command.process.send_signal(signal.SIGINT)
    assert await command.finish() == FORCED, "\n".join(command.stderr)
    forced = "mediator run: stopped by a second SIGINT, not drained"
    assert command.stderr.count(forced) == int(workers)


async def test_a_killed_worker_is_restarted_with_its_number_and_health_port(
    commands: list[Command],
) -> None:
    port = _two_free_ports()
    command = await _run_app(
        commands,
        "plain",
        "--broker",
        "memory://",
        "--workers",
        "2",
        "--health-port",
        str(port),
        "--restart-delay",
        "0.05",
    )
    pid = int((await command.line("stderr", "worker 1 started: pid ")).rsplit(" ", 1)[1])
    await command.line("stderr", f"[{pid}] service plain started")
    assert await _get(port + 1, "/readyz") == (200, {"status": "ready"})

    os.kill(pid, signal.SIGKILL)
    await command.line("stderr", f"worker 1 (pid {pid}) was killed by SIGKILL")
    line = await command.line("stderr", "worker 1 restarted: pid ")
    restarted = int(line.rsplit(" ", 1)[1])
    assert restarted != pid
    await command.line("stderr", f"[{restarted}] service plain started")
    # The same number, so the same port: probes keep pointing at the right place.
    assert await _get(port + 1, "/readyz") == (200, {"status": "ready"})
    assert await _get(port, "/readyz") == (200, {"status": "ready"})

    command.process.send_signal(signal.SIGTERM)
    assert await command.finish() == STOPPED, "\n".join(command.stderr)
    assert any(f"worker 1 (pid {restarted}) exited with status 0" in x for x in command.stderr)
    assert command.stdout.count("started plain") == 3


async def test_a_worker_failing_at_every_start_makes_the_parent_give_up_with_5(
    commands: list[Command],
) -> None:
    command = await _run_app(
        commands,
        "failing_start",
        "--workers",
        "2",
        "--restart-delay",
        "0.05",
        "--restart-limit",
        "2",
        env=_lifecycle_env(CLI_APP_FAILING_WORKER="1"),
    )
    assert await command.finish() == GAVE_UP, "\n".join(command.stderr)
    restarts = [line for line in command.stderr if "restarting it in" in line]
    assert len(restarts) == 2, restarts
    assert all(
        re.search(r"worker 1 \(pid \d+\) exited with status 1 after [\d.]+ s; restarting", x)
        for x in restarts
    ), restarts
    assert sum("worker 1 restarted: pid" in line for line in command.stderr) == 2
    assert not any("worker 0 restarted" in line for line in command.stderr)
    # Worker 0 was stopped by the parent: drained, or not yet started.
    assert any(
        re.search(r"worker 0 \(pid \d+\) (exited with status 0|was killed by SIGTERM)", x)
        for x in command.stderr
    ), command.stderr
    assert re.fullmatch(
        r"mediator run: worker 1 \(pid \d+\) exited with status 1 after [\d.]+ s: 3 failures "
        r"within 60 s, more than --restart-limit 2 restarts allow; gave up restarting it and "
        r"stopped the other workers \(its errors are above\)",
        command.stderr[-1],
    ), command.stderr[-1]
