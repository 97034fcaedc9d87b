"""A local Redis Cluster for the tests: three primaries with a replica each.

Started once per session from the machine's ``redis-server`` on free ports
(``--cluster-enabled yes``, no persistence, a node timeout of one second so
that a failover takes a second or two), joined by ``redis-cli --cluster
create ... --cluster-replicas 1 --cluster-yes``, and stopped by the PIDs of
its processes at the end. ``REDIS_CLUSTER_URL`` (``redis://host:port`` of
any node) names a cluster to use instead; tests that kill a node need the
local one and are skipped (failed in CI) on another.

Without ``redis-server``/``redis-cli`` the cluster tests are skipped locally
and fail when ``CI`` is set.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NoReturn

import attrs
import pytest
import redis
import redis.exceptions

from mediator import NotificationEvent
from tests.conftest import _stop

NODE_TIMEOUT_MS = 1000
"""``cluster-node-timeout``: a primary unreachable this long is failed over."""
_READY_TIMEOUT = 60.0  # seconds, for the cluster to say cluster_state:ok everywhere


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"a Redis Cluster is required when CI is set: {reason}", pytrace=False)
    pytest.skip(reason)


def _free_node_port(taken: set[int]) -> int:
    """A port free for a node and for its cluster bus (the port + 10000):
    so at most 55535."""
    for _ in range(1000):
        port = random.randint(20000, 55535)
        if port in taken or port + 10000 in taken:
            continue
        try:
            for candidate in (port, port + 10000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _info(port: int) -> dict[str, str]:
    """CLUSTER INFO of the node on `port` (empty when it does not answer)."""
    try:
        with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1) as client:
            info = client.cluster("INFO")
    except (redis.exceptions.RedisError, OSError):
        return {}
    return {str(k): str(v) for k, v in info.items()}


class LocalCluster:
    """Six ``redis-server`` processes of this session, joined in a cluster."""

    def __init__(self, workdir: Path) -> None:
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            _unavailable("the Redis Cluster tests need redis-server and redis-cli on PATH")
        self.binary, self.cli = binary, cli
        self.workdir = workdir
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        """The processes, by port; a killed one is left in (dead)."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{next(iter(self.procs))}"

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        node = self.workdir / str(port)
        node.mkdir(exist_ok=True)
        with (node / "redis.log").open("ab") as log:
            return subprocess.Popen(
                [self.binary, "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", str(node / "nodes.conf"),
                 "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                 # A replica may take over however long its link was down.
                 "--cluster-replica-validity-factor", "0", "--save", "",
                 "--appendonly", "no", "--daemonize", "no", "--dir", str(node)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def start(self) -> None:
        for _ in range(6):
            port = _free_node_port(set(self.procs))
            self.procs[port] = self._spawn(port)
        deadline = time.monotonic() + 10
        for port, proc in self.procs.items():
            while not _info(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    _unavailable(f"redis-server on {port} did not start: {self._log(port)}")
                time.sleep(0.02)  # a bounded poll of a process starting
        created = subprocess.run(
            [self.cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.procs),
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        if created.returncode != 0:
            self.stop()
            _unavailable(f"redis-cli --cluster create failed: {created.stdout[-800:]!r}")
        try:
            self.wait_ready(_READY_TIMEOUT)
        except TimeoutError:
            self.stop()
            raise

    def _log(self, port: int) -> str:
        path = self.workdir / str(port) / "redis.log"
        return path.read_text(errors="replace")[-500:] if path.exists() else ""

    def alive(self) -> list[int]:
        return [port for port, proc in self.procs.items() if proc.poll() is None]

    def wait_ready(self, timeout: float, gone: int | None = None) -> None:
        """Until every live node says cluster_state:ok, knows every slot and
        (with `gone`) no longer has the node on port `gone` as a primary (a
        bounded poll: only the servers know)."""
        deadline = time.monotonic() + timeout
        while True:
            infos = [_info(port) for port in self.alive()]
            if all(
                i.get("cluster_state") == "ok" and i.get("cluster_slots_ok") == "16384"
                for i in infos
            ) and (gone is None or all(gone not in self._primaries(p) for p in self.alive())):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster is not ok after {timeout}s: {infos}")
            time.sleep(0.05)

    @staticmethod
    def _primaries(port: int) -> list[int]:
        """The primaries the node on `port` knows of (none if it does not answer)."""
        try:
            with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1) as client:
                slots = client.execute_command("CLUSTER SLOTS")
        except (redis.exceptions.RedisError, OSError):
            return []
        return sorted(int(primary[1]) for _, _, primary, *_ in slots)

    def primary_of(self, key: str | bytes) -> int:
        """The port of the primary that holds `key`'s slot now."""
        for port in self.alive():
            try:
                with redis.Redis(port=port, socket_timeout=1) as client:
                    slot = int(client.execute_command("CLUSTER KEYSLOT", key))
                    for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS"):
                        if start <= slot <= end:
                            return int(primary[1])
            except (redis.exceptions.RedisError, OSError):
                continue
        raise LookupError(f"no live node says who holds {key!r}")

    def primaries(self) -> list[int]:
        """The ports of the primaries that hold slots now."""
        for port in self.alive():
            known = self._primaries(port)
            if known:
                return known
        raise LookupError("no live node answers CLUSTER SLOTS")

    def move_slot_of(self, key: str | bytes) -> int:
        """Move the hash slot of `key`, with its keys, to another primary (as
        ``redis-cli --cluster reshard`` does, for one slot); returns the port
        of the primary that holds it now."""
        source = self.primary_of(key)
        target = next(port for port in self.primaries() if port != source)
        clients = {port: redis.Redis(port=port, socket_timeout=5) for port in self.primaries()}
        try:
            src, dst = clients[source], clients[target]
            slot = int(src.execute_command("CLUSTER KEYSLOT", key))
            src_id = src.execute_command("CLUSTER MYID")
            dst_id = dst.execute_command("CLUSTER MYID")
            dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
            while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
            for client in (dst, src, *clients.values()):
                client.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
        finally:
            for client in clients.values():
                client.close()
        self.wait_ready(30)
        return target

    async def kill(self, port: int, timeout: float = 30.0) -> None:
        """SIGKILL the node on `port`, and return once the cluster is ok
        again (after its replica took over, if it was a primary)."""
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
        await asyncio.to_thread(self.wait_ready, timeout, port)

    async def kill_primary_of(self, key: str | bytes, timeout: float = 30.0) -> int:
        """SIGKILL the primary holding `key`'s slot, and return once its replica
        took over and the cluster is ok again; returns the killed port."""
        port = self.primary_of(key)
        await self.kill(port, timeout)
        return port

    async def restart(self, port: int, timeout: float = 30.0) -> None:
        """Start the node on `port` again (it rejoins as a replica of the
        primary that took over), and wait until it is in sync and the
        cluster ok, so that it can take over in its turn."""
        if self.procs[port].poll() is None:
            return
        self.procs[port] = self._spawn(port)
        await asyncio.to_thread(self._wait_synced, port, timeout)
        await asyncio.to_thread(self.wait_ready, timeout)

    def _wait_synced(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1) as client:
                    info = client.info("replication")
                if info.get("role") == "slave" and info.get("master_link_status") == "up":
                    return
            except (redis.exceptions.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the node on {port} is no replica in sync after {timeout}s")
            time.sleep(0.05)  # a bounded poll: only the server knows

    def stop(self) -> None:
        for proc in self.procs.values():
            _stop(proc)


_local: LocalCluster | None = None
_given: str | None = None


def cluster_url(request: pytest.FixtureRequest) -> str:
    """``redis://host:port`` of a node of the session's Redis Cluster: the
    one ``REDIS_CLUSTER_URL`` names, else the local one, started at the first
    call and stopped when the session ends. (A function rather than only a
    fixture, so the transport adapters reach it from any test module.)"""
    global _local, _given
    given = os.environ.get("REDIS_CLUSTER_URL")
    if given:
        _given = given
        return given
    if _local is None:
        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        cluster = LocalCluster(factory.mktemp("redis-cluster"))
        cluster.start()
        _local = cluster
        request.config.add_cleanup(_stop_local)
    return _local.url


def _stop_local() -> None:
    global _local
    if _local is not None:
        _local.stop()
        _local = None


def local_cluster(request: pytest.FixtureRequest) -> LocalCluster:
    """The session's local cluster; skips (fails in CI) when
    ``REDIS_CLUSTER_URL`` names another, whose nodes the tests cannot kill."""
    cluster_url(request)
    if _local is None:
        _unavailable("this test kills a node of the local cluster; REDIS_CLUSTER_URL names another")
    return _local


@pytest.fixture
def redis_cluster_url(request: pytest.FixtureRequest) -> str:
    """``redis://host:port`` of a node of a Redis Cluster (see the module docstring)."""
    return cluster_url(request)


@pytest.fixture
async def redis_cluster(request: pytest.FixtureRequest) -> AsyncIterator[LocalCluster]:
    """The local cluster, for a test that kills its nodes: afterwards the
    killed ones are started again (as replicas) and the cluster is ok."""
    cluster = local_cluster(request)
    yield cluster
    for port, proc in list(cluster.procs.items()):
        if proc.poll() is not None:
            await cluster.restart(port)


@attrs.frozen(kw_only=True)
class Alpha(NotificationEvent):
    n: int


@attrs.frozen(kw_only=True)
class Beta(NotificationEvent):
    n: int


@attrs.frozen(kw_only=True)
class Gamma(NotificationEvent):
    n: int


KINDS = (Alpha, Beta, Gamma)
"""Three events, so three streams (on three primaries, under a prefix that
`spread_prefix` chose): shared by the tests and the consumer process."""


def spread_prefix(url: str) -> str:
    """A fresh prefix under which the streams of `KINDS` are on three
    different primaries (a prefix is hashed with the rest of the key)."""
    with redis.RedisCluster.from_url(url) as client:
        for _ in range(1000):
            prefix = f"mtk-k{uuid.uuid4().hex[:8]}"
            nodes = {
                client.get_node_from_key(f"{prefix}:notification_event:{kind.__name__}").name
                for kind in KINDS
            }
            if len(nodes) == len(KINDS) == len(client.get_primaries()):
                return prefix
    raise AssertionError("no prefix spreads the streams over three primaries")


# -- a consumer process to SIGKILL (python -m tests.redis_cluster_support SETTINGS_JSON) --


def _handled_before(path: str) -> set[int]:
    """The numbers earlier runs wrote to `path`."""
    if not os.path.exists(path):
        return set()
    with open(path, "rb") as before:
        return {int(line) for line in before.read().split()}


async def _consume(settings: dict[str, Any], seen: set[int]) -> None:
    """Read the events of `KINDS` in a group on the cluster, appending each
    handled number to a file; print ``ready`` once live, ``handled N`` every
    250 events, ``done`` once the file holds every number below ``total``."""
    from brokers.redis import RedisStreamMessageBroker
    from mediator import EventConsumer, EventMap

    path, total, prefix = str(settings["path"]), int(settings["total"]), str(settings["prefix"])
    done = asyncio.Event()
    handled = 0
    # One write per number, appended whole: a SIGKILL never leaves half a line.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    events = EventMap()

    async def record(event: Alpha | Beta | Gamma) -> None:
        nonlocal handled
        await asyncio.sleep(0.0005)  # the work of a real handler, so a kill lands mid-stream
        os.write(fd, b"%d\n" % event.n)
        seen.add(event.n)
        handled += 1
        if handled % 250 == 0:
            print(f"handled {handled}", flush=True)
        if len(seen) == total:
            done.set()

    for kind in KINDS:
        events.bind(kind, record)
    broker = RedisStreamMessageBroker.from_url(
        settings["url"], prefix, **settings.get("options", {})
    )
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe(f"{prefix}:notification_event:*", group=str(settings["group"]))
    async with broker, consumer:
        print("ready", flush=True)
        if len(seen) == total:
            done.set()
        await done.wait()
        print("done", flush=True)
    os.close(fd)


if __name__ == "__main__":
    import sys

    import orjson

    settings = orjson.loads(sys.argv[1])
    asyncio.run(_consume(settings, _handled_before(settings["path"])))
