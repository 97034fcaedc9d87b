"""A consumer process stops on SIGTERM and SIGINT as docs/consumers.md says
("Stopping on SIGTERM and SIGINT"): the work in flight finishes, no
traceback, exit code 0. The process is examples/graceful_shutdown.py."""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.examples_runner import example_command

TIMEOUT = 30  # seconds for each step; the example needs well under one


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
async def test_a_signal_drains_the_work_in_flight_and_the_process_exits_cleanly(
    signum: signal.Signals,
) -> None:
    command, env = example_command("graceful_shutdown.py")
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(TIMEOUT):
            ready = await process.stdout.readline()
        assert ready == b"ready\n", (ready, await process.stderr.read() if process.stderr else b"")
        process.send_signal(signum)
        async with asyncio.timeout(TIMEOUT):
            rest, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lines = rest.decode().splitlines()
    assert process.returncode == 0, stderr.decode()
    assert lines == [f"{signum.name}: stopping", "finished report 1"], stderr.decode()
    assert b"Traceback" not in stderr, stderr.decode()
