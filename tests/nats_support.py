"""What the NATS tests share: the server's address, private servers, and a
consumer process to kill.

Contract:

* NATS's address comes from ``NATS_URL`` (default ``nats://127.0.0.1:4222``).
  The tests use it when it answers with JetStream enabled and a
  ``max_payload`` of at least 4 MiB (the bad-input suite publishes bodies
  over the consumer's 1 MiB limit; run it with ``max_payload: 4MB``).
* Otherwise, when ``nats-server`` is on ``PATH``, a private server (file
  store in a temporary directory, ``max_payload`` 8 MiB) is started on a
  free port once per session, and stopped by its PID at the end.
* When neither works the NATS tests are skipped locally with the reason, and
  fail when ``CI`` is set, so a CI job can never go green by skipping them.
* Every test uses a prefix of its own; its stream is deleted afterwards.

`PrivateNats` is a server of a test's own, to restart or kill.

    python -m tests.nats_support consumer SETTINGS_JSON
    python -m tests.nats_support relay DB_URL TABLE_PREFIX NATS_URL CHANNEL_PREFIX

run a consumer service for a test to SIGKILL (see `consumer_process`), and
an outbox relay that SIGKILLs itself once JetStream acknowledged its first
publish, before it marks the rows sent (see `dying_relay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import attrs
import pytest

from mediator import EventConsumer, EventMap, Message, NotificationEvent

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
WANTED_PAYLOAD = 4 << 20
"""The max_payload the bad-input tests need (a body over the consumer's 1 MiB)."""
_PROBE_TIMEOUT = 2.0
_STARTUP_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0


def nats_url_setting() -> str:
    return os.environ.get("NATS_URL") or DEFAULT_NATS_URL


def probe(url: str) -> dict[str, Any] | str:
    """The INFO a NATS server at `url` greets with, else why there is none."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 4222
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT) as sock:
            greeting = sock.recv(4096)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    if not greeting.startswith(b"INFO "):
        return f"{host}:{port} answered {greeting[:40]!r}, not a NATS INFO line"
    try:
        info: dict[str, Any] = json.loads(greeting[5:].split(b"\r\n", 1)[0])
    except ValueError as exc:
        return f"{host}:{port} sent an unreadable INFO: {exc}"
    return info


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"NATS is required when CI is set: {reason}", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateNats:
    """A nats-server of a test's own, with JetStream on a file store in
    `workdir`, restartable on the same port, stopped by its PID."""

    def __init__(self, workdir: Path, *, max_payload: int = 8 << 20) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            _unavailable("no nats-server on PATH for a private NATS server")
        self.binary = binary
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.config = workdir / "nats.conf"
        self.config.write_text(f"max_payload: {max_payload}\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        with (self.workdir / "nats.log").open("ab") as log:
            return subprocess.Popen(
                [self.binary, "-c", str(self.config), "-a", "127.0.0.1", "-p", str(self.port),
                 "-js", "-sd", str(self.workdir / "store")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def start_blocking(self) -> None:
        self.proc = self._spawn()
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while not isinstance(probe(self.url), dict):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.workdir / "nats.log").read_text(errors="replace")[-500:]
                self.stop_blocking()
                _unavailable(f"nats-server did not start on port {self.port}: {log!r}")
            time.sleep(0.02)  # a bounded poll of a process starting

    def stop_blocking(self, *, kill: bool = False) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def remove(self) -> None:
        """Stop the server and delete its directory (its store and log)."""
        self.stop_blocking()
        shutil.rmtree(self.workdir, ignore_errors=True)

    async def start(self) -> None:
        await asyncio.to_thread(self.start_blocking)

    async def stop(self, *, kill: bool = False) -> None:
        await asyncio.to_thread(self.stop_blocking, kill=kill)

    async def restart(self, *, kill: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL with `kill`) and start again on the same
        port and store: what JetStream acknowledged is kept."""
        await self.stop(kill=kill)
        await self.start()


@functools.cache
def _session_server() -> PrivateNats:
    server = PrivateNats(Path(tempfile.mkdtemp(prefix="mtk-nats-")))
    server.start_blocking()
    return server


def nats_url(request: pytest.FixtureRequest | None = None) -> str:
    """The URL of a NATS server for the tests (see the module docstring)."""
    url = nats_url_setting()
    info = probe(url)
    if (
        isinstance(info, dict)
        and info.get("jetstream")
        and info.get("max_payload", 0) >= (WANTED_PAYLOAD)
    ):
        return url
    if shutil.which("nats-server") is not None:
        fresh = _session_server.cache_info().currsize == 0
        server = _session_server()
        if fresh and request is not None:
            request.config.add_cleanup(server.remove)
        return server.url
    if isinstance(info, dict):
        if not info.get("jetstream"):
            _unavailable(f"the NATS at {url} runs without JetStream (start it with -js)")
        return url  # too small a max_payload: the oversized bad input fails, saying so
    _unavailable(f"no NATS at {url} ({info}) and no nats-server on PATH")


async def delete_stream(url: str, stream: str) -> None:
    """Delete `stream` (with its consumers) if it exists."""
    import nats
    import nats.js.errors

    client = await nats.connect(url, allow_reconnect=False)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await client.jetstream().delete_stream(stream)
    finally:
        await client.close()


# -- processes to kill -------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Numbered(NotificationEvent):
    n: int


RELAY_LEASE = 0.5
"""Seconds the rows of a relay that died stay leased before another takes them."""


async def dying_relay(db_url: str, table_prefix: str, url: str, channel_prefix: str) -> None:
    """An OutboxRelay to NATS that dies (SIGKILL) right after JetStream
    acknowledged its first publish: its rows are published, not marked sent."""
    from brokers.nats import NatsMessageBroker
    from mediator.outbox import Outbox, OutboxRelay, sqlite_engine

    class Dying(NatsMessageBroker):
        async def send_messages(self, messages: Sequence[Message]) -> None:
            await super().send_messages(messages)
            os.kill(os.getpid(), signal.SIGKILL)

        async def send_message(self, message: Message) -> None:
            await self.send_messages([message])

    engine = sqlite_engine(db_url)
    broker = Dying.from_url(url, channel_prefix)
    outbox = Outbox(engine, prefix=table_prefix)
    async with broker, OutboxRelay(outbox, broker, lease=RELAY_LEASE, poll_interval=0.05):
        print("ready", flush=True)
        await asyncio.Event().wait()  # until its first publish kills it


@attrs.frozen
class ProcessSettings:
    url: str
    prefix: str
    group: str
    path: str
    """The file of handled numbers, one per line."""
    total: int


def handled_before(path: str) -> set[int]:
    """The numbers earlier runs wrote to `path`."""
    if not os.path.exists(path):
        return set()
    with open(path, "rb") as previous:
        return {int(line) for line in previous.read().split()}


async def consumer_process(settings: ProcessSettings) -> None:
    """Read `Numbered` events in the group and append each handled number
    to the file; print ``ready`` once subscribed, ``handled N`` every 250,
    and ``done`` once the file holds every number below `total`."""
    from brokers.nats import NatsMessageBroker

    seen = handled_before(settings.path)
    done = asyncio.Event()
    handled = 0
    # One write per number, appended whole: a SIGKILL never leaves half a line.
    fd = os.open(settings.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    events = EventMap()

    @events.bind(Numbered)
    async def record(event: Numbered) -> None:
        nonlocal handled
        await asyncio.sleep(0.0005)  # the work of a real handler, so a kill lands mid-stream
        os.write(fd, b"%d\n" % event.n)
        seen.add(event.n)
        handled += 1
        if handled % 250 == 0:
            print(f"handled {handled}", flush=True)
        if len(seen) == settings.total:
            done.set()

    broker = NatsMessageBroker.from_url(settings.url, settings.prefix, ack_wait=2.0)
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe(f"{settings.prefix}:notification_event:*", group=settings.group)
    async with broker, consumer:
        print("ready", flush=True)
        if len(seen) == settings.total:
            done.set()
        await done.wait()
        print("done", flush=True)
    os.close(fd)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "consumer":
        asyncio.run(consumer_process(ProcessSettings(**json.loads(sys.argv[2]))))
    elif len(sys.argv) == 6 and sys.argv[1] == "relay":
        asyncio.run(dying_relay(*sys.argv[2:]))
    else:
        sys.exit(__doc__)
