"""Redis: the two kinds of client the brokers take, one server or a cluster.

A `redis.asyncio.Redis` talks to one server; a
`redis.asyncio.cluster.RedisCluster` to a Redis Cluster, routing each
command by its key's hash slot (docs/redis-cluster.md). What differs
between them for the brokers is here: how a client is built from a URL,
where it connects (for messages), and its connection settings.
"""

from __future__ import annotations

from typing import Any, TypeAlias
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

Client: TypeAlias = Redis | RedisCluster
"""What both Redis brokers take: a client of one server, or of a cluster."""

CLUSTER_SUFFIX = "+cluster"
"""What a URL's scheme ends with for a cluster: ``redis+cluster://host:port``."""


def is_cluster_url(url: str) -> bool:
    """Whether `url` names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
    return url.partition("://")[0].lower().endswith(CLUSTER_SUFFIX)


def client_from_url(url: str) -> Client:
    """A client for `url`: a `RedisCluster` for ``redis+cluster://host:port``
    (any node of the cluster: the client finds the others), else a `Redis`."""
    if not is_cluster_url(url):
        return Redis.from_url(url)
    scheme, _, rest = url.partition("://")
    plain = f"{scheme[: -len(CLUSTER_SUFFIX)]}://{rest}"
    hosts = urlsplit(plain).netloc.rpartition("@")[2]
    if "," in hosts:
        raise ValueError(
            f"A cluster URL names one node (the client finds the others): {hosts!r} names "
            "several; keep one of them"
        )
    return RedisCluster.from_url(plain)


def decodes_responses(client: Client) -> bool:
    """Whether `client` hands replies over as str instead of bytes."""
    return bool(client.get_encoder().decode_responses)


def address(client: Client) -> str:
    """Where `client` connects (``host:port``, a socket path, or ``cluster
    host:port`` with a node it started from), for messages."""
    if isinstance(client, RedisCluster):
        nodes = list(client.nodes_manager.startup_nodes.values())
        where = f"{nodes[0].host}:{nodes[0].port}" if nodes else "?"
        return f"cluster {where}"
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def default_reply_timeout(client: Client, seconds: float) -> None:
    """Give up on a reply after `seconds` on the connections `client` opens,
    unless a timeout was set on it (one server) or given in its URL."""
    if isinstance(client, RedisCluster):
        # RedisCluster defaults to 5 s: too short for a blocked read longer than that.
        settings: list[dict[str, Any]] = [client.nodes_manager.connection_kwargs]
        settings += [node.connection_kwargs for node in client.nodes_manager.startup_nodes.values()]
        for kwargs in settings:
            if kwargs.get("socket_timeout") in (None, 5):
                kwargs["socket_timeout"] = seconds
        return
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("socket_timeout") is None:
        kwargs["socket_timeout"] = seconds
