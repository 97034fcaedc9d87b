"""What the RabbitMQ tests share: the server's address, and real faults.

Contract:

* RabbitMQ's address comes from ``AMQP_URL`` (default
  ``amqp://guest:guest@127.0.0.1:5672/``).
* When nothing answers AMQP there, the RabbitMQ tests are skipped locally
  with the reason, and fail when ``CI`` is set (to a non-empty value), so a
  CI job can never go green by skipping them.
* Every test uses names of its own (exchange, queues, connection name,
  policy) and deletes what it declared.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import socket
from collections.abc import AsyncIterator, Iterable
from typing import Any, NoReturn

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from yarl import URL

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
_PROBE_TIMEOUT = 2.0  # seconds to connect and read the server's greeting
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def amqp_url_setting() -> str:
    return os.environ.get("AMQP_URL") or DEFAULT_AMQP_URL


@functools.cache
def _probe(url: str) -> str | None:
    """None when something at `url` greets us as an AMQP 0-9-1 server, else why not."""
    parsed = URL(url)
    host, port = parsed.host or "127.0.0.1", parsed.port or 5672
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT) as sock:
            sock.sendall(_AMQP_HEADER)
            greeting = sock.recv(8)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    # A method frame (type 1) on channel 0: Connection.Start.
    if greeting[:3] != b"\x01\x00\x00":
        return f"{host}:{port} answered {greeting!r}, not an AMQP 0-9-1 greeting"
    return None


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"RabbitMQ is required when CI is set: {reason}", pytrace=False)
    pytest.skip(reason)


def amqp_url() -> str:
    """The URL of a RabbitMQ that answers; skips (or fails under CI) otherwise."""
    url = amqp_url_setting()
    why = _probe(url)
    if why is not None:
        _unavailable(f"no RabbitMQ at {URL(url).with_password(None)} ({why})")
    return url


async def connect(name: str, reconnect_interval: float = 0.1) -> AbstractRobustConnection:
    """A robust connection named `name` (so a fault injector can find it)."""
    return await aio_pika.connect_robust(
        amqp_url(),
        client_properties={"connection_name": name},
        reconnect_interval=reconnect_interval,
    )


UNROUTABLE_SUFFIXES = (".unroutable", ".unroutable.keep")
"""What a broker declares beside its exchange for messages no queue is bound for."""


async def delete_everything(
    connection: AbstractRobustConnection, exchanges: Iterable[str], queues: Iterable[str]
) -> None:
    """Delete queues (quorum ones too: neither if-unused nor if-empty) and exchanges;
    with each broker exchange go the unroutable exchanges and queue declared beside it.
    Deleting what does not exist is not an error."""
    exchanges, queues = list(exchanges), list(queues)
    for exchange in [e for e in exchanges if not e.endswith(".dead-letter")]:
        exchanges += [exchange + suffix for suffix in UNROUTABLE_SUFFIXES]
        queues.append(exchange + UNROUTABLE_SUFFIXES[0])
    async with connection.channel(publisher_confirms=False) as channel:
        for queue in queues:
            await channel.queue_delete(queue, if_unused=False, if_empty=False)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)


async def first_message(
    connection: AbstractRobustConnection, queue: str, timeout: float = 10
) -> AbstractIncomingMessage:
    """Wait for a message in `queue` and return it, leaving it there: it is
    taken unacknowledged, and goes back to its place when the channel closes."""
    async with connection.channel(publisher_confirms=False) as channel:
        declared = await channel.get_queue(queue, ensure=False)
        received: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        await declared.consume(received.put, no_ack=False)
        async with asyncio.timeout(timeout):
            return await received.get()


async def _rabbitmqctl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        "-q",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {stderr.decode()[-500:]}")
    return stdout.decode()


@contextlib.asynccontextmanager
async def policy(
    name: str, pattern: str, definition: dict[str, Any], apply_to: str
) -> AsyncIterator[None]:
    """A RabbitMQ policy (``rabbitmqctl set_policy``), cleared on the way out."""
    if shutil.which("rabbitmqctl") is None:
        _unavailable("rabbitmqctl is not on PATH: setting a policy needs it")
    await _rabbitmqctl(
        "set_policy",
        name,
        pattern,
        json.dumps(definition),
        "--apply-to",
        apply_to,
        "--priority",
        "10",
    )
    try:
        yield
    finally:
        await _rabbitmqctl("clear_policy", name)


async def close_connections(name: str) -> int:
    """Close every connection named `name` from the server side
    (``rabbitmqctl close_connection``), as an operator, a restart or a
    node failover would; returns how many were closed."""
    if shutil.which("rabbitmqctl") is None:
        _unavailable("rabbitmqctl is not on PATH: closing connections from the server needs it")
    listing = await _rabbitmqctl(
        "list_connections", "--no-table-headers", "pid", "client_properties"
    )
    closed = 0
    for line in listing.splitlines():
        pid, _, properties = line.partition("\t")
        if f'{{"connection_name","{name}"}}' in properties:
            await _rabbitmqctl("close_connection", pid, "closed by a fault-injection test")
            closed += 1
    return closed


@contextlib.asynccontextmanager
async def watching_reconnects(logger_name: str) -> AsyncIterator[asyncio.Event]:
    """An event set when a subscription logs that it is back after being lost
    (the transport kit's "... is back after ...s away" line)."""
    back = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "is back after" in record.getMessage():
                back.set()

    watch = Watch(logging.WARNING)
    target = logging.getLogger(logger_name)
    target.addHandler(watch)
    try:
        yield back
    finally:
        target.removeHandler(watch)
