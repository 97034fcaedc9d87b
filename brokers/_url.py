"""One function from a URL (or a Service Bus connection string) to a broker."""

from __future__ import annotations

import importlib
import os
import re
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from mediator import SubscribingBroker

__all__ = ["BROKER_URL_VARIABLE", "SCHEMES", "from_env", "from_url", "redact"]

BROKER_URL_VARIABLE = "MEDIATOR_BROKER_URL"
"""The environment variable `from_env` (and ``mediator run``) reads the broker URL from."""

SCHEMES: dict[str, str] = {
    "memory": "in-process broker (brokers.memory), at-most-once",
    "redis": "Redis Pub/Sub (brokers.redis.RedisPubSubBroker), at-most-once",
    "rediss": "Redis Pub/Sub over TLS",
    "unix": "Redis Pub/Sub over a unix socket",
    "redis+streams": "Redis Streams (brokers.redis.RedisStreamBroker), at-least-once",
    "rediss+streams": "Redis Streams over TLS",
    "unix+streams": "Redis Streams over a unix socket",
    "amqp": "RabbitMQ (brokers.rabbitmq.RabbitMQMessageBroker), at-least-once",
    "amqps": "RabbitMQ over TLS",
    "kafka": "Kafka (brokers.kafka.KafkaMessageBroker), at-least-once",
}
"""Every URL scheme `from_url` knows, with what it builds. An Azure Service
Bus connection string (``Endpoint=sb://...``) is taken too."""

_AZURE = re.compile(r"(?:^|;)\s*Endpoint\s*=\s*sb://", re.IGNORECASE)


_SECRET_NAME = re.compile(r"pass|secret|token|key|sig|credential|auth", re.IGNORECASE)
"""Query parameters whose value is masked: their name holds one of these."""


def redact(url: str) -> str:
    """`url` with its password, every secret-looking query value
    (``password=``, ``sasl_plain_password=``, ``token=``, ...) or a connection
    string's key replaced by ``***``, for messages and logs."""
    if _AZURE.search(url):
        return re.sub(
            r"(SharedAccessKey|SharedAccessSignature)\s*=[^;]*", r"\1=***", url, flags=re.I
        )
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    if parts.query:
        parts = parts._replace(query=re.sub(r"[^&;]+", _mask_parameter, parts.query))
    return urlunsplit(parts)


def _mask_parameter(parameter: re.Match[str]) -> str:
    name, equals, _ = parameter[0].partition("=")
    if equals and _SECRET_NAME.search(unquote_plus(name)):
        return f"{name}=***"
    return parameter[0]


def from_url(url: str, *, channel_prefix: str | None = None, **options: Any) -> SubscribingBroker:
    """A broker for `url`, owning (and closing on `stop()`) the client it builds.

    ```python
    broker = brokers.from_url("redis+streams://localhost:6379/0", channel_prefix="shop")
    ```

    - ``memory://``: `InMemoryMessageBroker`.
    - ``redis://``, ``rediss://``, ``unix://``: Redis Pub/Sub; the same with
      ``+streams`` (``redis+streams://host:6379/0``) for Redis Streams.
    - ``amqp://``, ``amqps://``: RabbitMQ.
    - ``kafka://host:port[,host:port]``: Kafka.
    - ``Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...;EntityPath=topic``:
      Azure Service Bus; without ``EntityPath``, pass ``topic="..."``.

    `channel_prefix` None keeps the broker's default (``"mediator"``; the topic
    on Service Bus). `options` are the broker class's own keywords. A
    transport whose extra is not installed raises its module's ImportError,
    which names the extra; an unknown scheme raises ValueError.
    """
    prefix: dict[str, Any] = {} if channel_prefix is None else {"channel_prefix": channel_prefix}
    if _AZURE.search(url):
        return _azure(url, prefix, options)
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "memory":
        return _build("memory", "InMemoryMessageBroker", **prefix, **options)
    if scheme in ("redis", "rediss", "unix"):
        return _build("redis", "RedisPubSubBroker.from_url", url, **prefix, **options)
    if scheme in ("redis+streams", "rediss+streams", "unix+streams"):
        plain = scheme.removesuffix("+streams") + url[len(scheme) :]
        return _build("redis", "RedisStreamBroker.from_url", plain, **prefix, **options)
    if scheme in ("amqp", "amqps"):
        return _build("rabbitmq", "RabbitMQMessageBroker.from_url", url, **prefix, **options)
    if scheme == "kafka":
        return _build("kafka", "KafkaMessageBroker.from_url", url, **prefix, **options)
    known = ", ".join(f"{name}://" for name in SCHEMES)
    what = f"scheme {scheme!r}" if scheme else "no scheme"
    raise ValueError(
        f"Broker URL {redact(url)!r} has {what}; use one of {known}, or an Azure Service Bus "
        "connection string (Endpoint=sb://...;EntityPath=topic)"
    )


def from_env(
    variable: str = BROKER_URL_VARIABLE,
    *,
    default: str | None = None,
    channel_prefix: str | None = None,
    **options: Any,
) -> SubscribingBroker:
    """`from_url` of the URL in the environment variable `variable`, else of `default`.

    ```python
    broker = brokers.from_env(default="memory://", channel_prefix="shop")
    ```
    """
    url = os.environ.get(variable) or default
    if url is None:
        raise LookupError(
            f"The environment variable {variable} is not set; set it to a broker URL "
            f"(e.g. {variable}=redis+streams://localhost:6379/0) or pass from_env(default=...)"
        )
    return from_url(url, channel_prefix=channel_prefix, **options)


def _build(module: str, factory: str, *args: Any, **kwargs: Any) -> SubscribingBroker:
    # Imported here, so only the transport in use needs its extra installed.
    target: Any = importlib.import_module(f"brokers.{module}")
    for name in factory.split("."):
        target = getattr(target, name)
    broker: SubscribingBroker = target(*args, **kwargs)
    return broker


def _azure(
    connection_string: str, prefix: dict[str, Any], options: dict[str, Any]
) -> SubscribingBroker:
    fields = {
        key.strip().lower(): value.strip()
        for key, _, value in (part.partition("=") for part in connection_string.split(";"))
        if key.strip()
    }
    entity = fields.get("entitypath")
    topic: str | None = options.pop("topic", None) or options.pop("topic_name", None) or entity
    if topic is None:
        raise ValueError(
            f"Service Bus connection string {redact(connection_string)!r} names no topic; "
            "add ;EntityPath=<topic> to it or pass from_url(..., topic='<topic>')"
        )
    if entity is not None and entity != topic:
        raise ValueError(
            f"The connection string is for the entity {entity!r} but topic={topic!r} was "
            "passed; drop one of them, or use a namespace-level connection string"
        )
    return _build(
        "azure",
        "AzureMessageBroker.from_connection_string",
        connection_string,
        topic,
        **prefix,
        **options,
    )
