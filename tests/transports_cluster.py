"""The Redis Cluster adapters of the transport-parametrized tests
(tests/transports.py): both Redis brokers on a `RedisCluster` client, against
the session's cluster (tests/redis_cluster_support.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest

from tests.redis_cluster_support import cluster_url
from tests.transports import RedisPubSubTransport, RedisStreamsTransport

if TYPE_CHECKING:
    from redis.asyncio.cluster import RedisCluster

    from tests.tcp_proxy import SilencingProxy
    from tests.transports import Transport


def cluster_client(url: str, name: str, **options: Any) -> RedisCluster:
    """A cluster client whose connections carry `name` (so a fault injector
    can find and kill them on every node); `options` are RedisCluster's."""
    from redis.asyncio.cluster import RedisCluster

    return RedisCluster.from_url(url, client_name=name, **options)


class RedisClusterPubSubTransport(RedisPubSubTransport):
    """`RedisPubSubMessageBroker` on the cluster."""

    name = "redis-cluster-pubsub"

    def __init__(
        self, prefix: str, url: str, client_options: dict[str, Any] | None = None, **options: Any
    ) -> None:
        from brokers.redis import RedisPubSubMessageBroker

        self.prefix = prefix
        self.client = cluster_client(url, prefix, **(client_options or {}))  # type: ignore[assignment]
        self.broker = RedisPubSubMessageBroker(client=self.client, channel_prefix=prefix, **options)
        self._others = []


class RedisClusterStreamsTransport(RedisStreamsTransport):
    """`RedisStreamMessageBroker` on the cluster, with the short intervals
    of the single-node adapter."""

    name = "redis-cluster-streams"

    def __init__(
        self, prefix: str, url: str, client_options: dict[str, Any] | None = None, **options: Any
    ) -> None:
        self.prefix = prefix
        self.client = cluster_client(url, prefix, **(client_options or {}))  # type: ignore[assignment]
        self._options = options
        self.broker = self.new_broker()


async def kill_connections(transport: Transport) -> int:
    """CLIENT KILL, on every node of the cluster, each connection of the
    test's client (named by its prefix), from connections of one's own."""
    from redis.asyncio import Redis

    client: RedisCluster = transport.client  # type: ignore[attr-defined]
    killed = 0
    for node in client.get_nodes():
        admin = Redis(host=node.host, port=node.port)
        try:
            for entry in await admin.client_list():
                if entry.get("name") == transport.prefix:  # type: ignore[attr-defined]
                    killed += await admin.client_kill_filter(_id=entry["id"])
        finally:
            await admin.aclose()
    return killed


@asynccontextmanager
async def redis_cluster_pubsub_transport(
    prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Transport]:
    transport = RedisClusterPubSubTransport(prefix, cluster_url(request))
    try:
        yield transport
    finally:
        await transport.close()


@asynccontextmanager
async def redis_cluster_streams_transport(
    prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Transport]:
    transport = RedisClusterStreamsTransport(prefix, cluster_url(request))
    try:
        yield transport
    finally:
        await transport.close()


class ProxyGroup:
    """One `SilencingProxy` per node of the cluster, silenced together."""

    def __init__(self, proxies: list[SilencingProxy]) -> None:
        self.proxies = proxies

    def silence(self) -> int:
        return sum(proxy.silence() for proxy in self.proxies)

    @property
    def connections(self) -> int:
        return sum(proxy.connections for proxy in self.proxies)


@asynccontextmanager
async def silenceable_cluster(
    name: str, prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Any]:
    """The cluster transport `name` whose client reaches every node through a
    `SilencingProxy` of its own (redis-py's `address_remap` sends it there),
    and a broker on a client of its own that reaches the nodes directly."""
    from redis.asyncio.cluster import RedisCluster

    from brokers.redis import RedisPubSubMessageBroker, RedisStreamMessageBroker
    from tests.tcp_proxy import SilencingProxy
    from tests.test_compliance import Silenceable

    url = cluster_url(request)
    direct_client = RedisCluster.from_url(url)
    silence_timeout = 1.0
    async with contextlib.AsyncExitStack() as stack:
        await direct_client.initialize()
        proxies: dict[tuple[str, int], SilencingProxy] = {}
        for node in direct_client.get_nodes():
            proxy = SilencingProxy(node.host, node.port)
            proxies[node.host, node.port] = await stack.enter_async_context(proxy)

        def remap(address: tuple[str, int]) -> tuple[str, int]:
            proxy = proxies.get(address)
            return address if proxy is None else ("127.0.0.1", proxy.port)

        first = next(iter(proxies.values()))
        proxied = f"redis://127.0.0.1:{first.port}"
        # As from_url sets it: a reply is due within BLOCK plus silence_timeout.
        options = {"address_remap": remap, "socket_timeout": silence_timeout + 0.05}
        transport: RedisClusterPubSubTransport | RedisClusterStreamsTransport
        direct: RedisPubSubMessageBroker | RedisStreamMessageBroker
        if name == "redis-cluster-pubsub":
            transport = RedisClusterPubSubTransport(
                prefix, proxied, options, silence_timeout=silence_timeout
            )
            direct = RedisPubSubMessageBroker(direct_client, prefix)
        else:
            transport = RedisClusterStreamsTransport(
                prefix, proxied, options, silence_timeout=silence_timeout
            )
            direct = RedisStreamMessageBroker(direct_client, prefix)
        try:
            yield Silenceable(
                transport, direct, ProxyGroup(list(proxies.values())), bound=2 * silence_timeout
            )  # type: ignore[arg-type]
        finally:
            await transport.close()
            await direct.stop()
            await direct_client.aclose()
