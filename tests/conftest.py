"""Fixtures for tests that need a Redis server.

Contract:

* Redis's address comes from ``REDIS_URL`` (default ``redis://127.0.0.1:6379``).
* When nothing answers there and a ``redis-server`` binary is on ``PATH``, a private
  server is started on a free port, once per session, and killed by its PID at the end.
* When neither works the Redis tests are skipped locally, and fail when ``CI`` is set
  (to a non-empty value), so a CI job can never go green by skipping them.

Every test gets its own ``key_prefix``; keys and channels it creates must start with it,
and the keys are deleted after the test.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import pytest_asyncio
import redis
import redis.asyncio
import redis.exceptions

from tests.kafka_support import kafka_server as kafka_server  # the Kafka fixture, by re-export

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"
_PROBE_TIMEOUT = 1.0  # seconds, per PING attempt
_STARTUP_TIMEOUT = 10.0  # seconds, for a private server to answer PING
_STOP_TIMEOUT = 10.0  # seconds, for a private server to exit after SIGTERM
_START_ATTEMPTS = 3  # a free port can be taken between probing it and the server binding it


def _ping(url: str) -> str | None:
    """PING the server at `url`; None when it answers, else why it did not."""
    try:
        with redis.Redis.from_url(
            url, socket_connect_timeout=_PROBE_TIMEOUT, socket_timeout=_PROBE_TIMEOUT
        ) as client:
            client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server we started, by its PID: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start_private_server(binary: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str] | str:
    """Start `binary` on a free port; (process, url) once it answers PING, else why not."""
    failures: list[str] = []
    for attempt in range(_START_ATTEMPTS):
        port = _free_port()
        url = f"redis://127.0.0.1:{port}"
        logfile = workdir / f"redis-{attempt}.log"
        # The server logs to stdout, and reports a bad configuration on stderr: both go to
        # `logfile` (a file, not a pipe, so nothing has to drain it). Popen dups the fd.
        with logfile.open("wb") as log_fd:
            proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    str(workdir),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        why = _ping(url)
        while why is not None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # poll interval, bounded by the deadline
            why = _ping(url)
        if why is None:
            return proc, url
        hung = proc.poll() is None
        _stop(proc)
        log = logfile.read_text(errors="replace").strip()
        if hung:
            failures.append(
                f"port {port}: no answer in {_STARTUP_TIMEOUT} s, {why}; log: {log[-500:]!r}"
            )
            break  # a server that runs but does not answer will not do better on another port
        failures.append(f"port {port}: exit code {proc.returncode}, {why}; log: {log[-500:]!r}")
    return "; ".join(failures)


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"Redis is required when CI is set: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a Redis server that answers PING (see the module docstring)."""
    url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    why = _ping(url)
    if why is None:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        _unavailable(f"no Redis at {url} ({why}) and no redis-server binary on PATH")
    started = _start_private_server(binary, tmp_path_factory.mktemp("redis-server"))
    if isinstance(started, str):
        _unavailable(f"no Redis at {url} ({why}) and {binary} did not start: {started}")
    proc, private_url = started
    try:
        yield private_url
    finally:
        _stop(proc)


@pytest_asyncio.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A client of `redis_url` returning bytes, closed after the test."""
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()


@pytest_asyncio.fixture
async def key_prefix(redis_client: redis.asyncio.Redis) -> AsyncIterator[str]:
    """A unique prefix for the test's keys and channels; its keys are deleted afterwards.

    It holds no glob metacharacter, so ``<prefix>*`` matches exactly the keys starting
    with it, and a pattern ``<prefix>...`` can only match channels starting with it.
    """
    prefix = f"mtk-test-{uuid.uuid4().hex[:8]}"
    yield prefix
    keys = [key async for key in redis_client.scan_iter(match=f"{prefix}*", count=1000)]
    for start in range(0, len(keys), 1000):
        await redis_client.delete(*keys[start : start + 1000])
