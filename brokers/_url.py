"""One function from a URL (or a Service Bus connection string) to a broker."""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

from mediator.transport import SubscribingBroker

__all__ = ["BROKER_URL_VARIABLE", "SCHEMES", "URL_OPTIONS", "from_env", "from_url", "redact"]

BROKER_URL_VARIABLE = "MEDIATOR_BROKER_URL"
"""The environment variable `from_env` (and ``mediator run``) reads the broker URL from."""

SCHEMES: dict[str, str] = {
    "memory": "in-process broker (brokers.memory), at-most-once",
    "redis": "Redis Pub/Sub (brokers.redis.RedisPubSubMessageBroker), at-most-once",
    "rediss": "Redis Pub/Sub over TLS",
    "unix": "Redis Pub/Sub over a unix socket",
    "redis+streams": "Redis Streams (brokers.redis.RedisStreamMessageBroker), at-least-once",
    "rediss+streams": "Redis Streams over TLS",
    "unix+streams": "Redis Streams over a unix socket",
    "redis+cluster": "Redis Pub/Sub on a Redis Cluster (any node's host:port)",
    "rediss+cluster": "Redis Pub/Sub on a Redis Cluster over TLS",
    "redis+cluster+streams": "Redis Streams on a Redis Cluster (any node's host:port)",
    "rediss+cluster+streams": "Redis Streams on a Redis Cluster over TLS",
    "amqp": "RabbitMQ (brokers.rabbitmq.RabbitMQMessageBroker), at-least-once",
    "amqps": "RabbitMQ over TLS",
    "kafka": "Kafka (brokers.kafka.KafkaMessageBroker), at-least-once",
    "nats": "NATS JetStream (brokers.nats.NatsMessageBroker), at-least-once",
    "tls": "NATS JetStream over TLS",
}
"""Every URL scheme `from_url` knows, with what it builds. An Azure Service
Bus connection string (``Endpoint=sb://...``) is taken too."""

_AZURE = re.compile(r"(?:^|;)\s*Endpoint\s*=\s*sb://", re.IGNORECASE)
_FAMILIES = {
    "memory": "memory",
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
    "redis+streams": "redis+streams",
    "rediss+streams": "redis+streams",
    "unix+streams": "redis+streams",
    "redis+cluster": "redis",
    "rediss+cluster": "redis",
    "redis+cluster+streams": "redis+streams",
    "rediss+cluster+streams": "redis+streams",
    "amqp": "amqp",
    "amqps": "amqp",
    "kafka": "kafka",
    "nats": "nats",
    "tls": "nats",
}


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


# -- options in the URL's query ------------------------------------------------


def _integer(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("a whole number, 0 or more")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also NaN
        raise ValueError("a number of seconds, 0 or more")
    return value


def _flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise ValueError("true or false")


def _one_of(*values: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in values:
            raise ValueError(" or ".join(repr(v) for v in values))
        return text

    return parse


def _text(text: str) -> str:
    return text


_SHARED: dict[str, Callable[[str], Any]] = {
    "max_message_size": _integer,
    "dead_letter_limit": _integer,
}
_START_FROM = _one_of("new", "beginning")
URL_OPTIONS: dict[str, dict[str, Callable[[str], Any]]] = {
    "memory": {**_SHARED, "history": _integer, "buffer_size": _integer},
    "redis": {
        **_SHARED,
        "channel_layout": _one_of("name", "diator"),
        "silence_timeout": _seconds,
    },
    "redis+streams": {
        **_SHARED,
        "maxlen": _integer,
        "start_from": _START_FROM,
        "claim_idle": _seconds,
        "claim_interval": _seconds,
        "discovery_interval": _seconds,
        "block_ms": _integer,
        "batch_size": _integer,
        "idle_consumer_timeout": _seconds,
        "silence_timeout": _seconds,
    },
    "amqp": {
        **_SHARED,
        "prefetch": _integer,
        "mandatory": _flag,
        "publish_timeout": _seconds,
        "connect_timeout": _seconds,
        "connection_name": _text,
        "reconnect_interval": _seconds,
    },
    "kafka": {
        **_SHARED,
        "create_topics": _flag,
        "partitions": _integer,
        "replication_factor": _integer,
        "idempotence": _flag,
        "start_from": _START_FROM,
        "ordered": _flag,
        "discovery_interval": _seconds,
        "commit_interval": _seconds,
        "prefetch": _integer,
        "timeout": _seconds,
        # aiokafka's, for every client the broker makes (client_options):
        "client_id": _text,
        "security_protocol": _one_of("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        "sasl_mechanism": _one_of("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
        "sasl_plain_username": _text,
        "sasl_plain_password": _text,
        # the consumers' (consumer_options) and the producer's (producer_options):
        "session_timeout_ms": _integer,
        "heartbeat_interval_ms": _integer,
        "max_request_size": _integer,
    },
    "nats": {
        **_SHARED,
        "prefetch": _integer,
        "ack_wait": _seconds,
        "fetch_timeout": _seconds,
        "max_ack_pending": _integer,
        "duplicate_window": _seconds,
        "storage": _one_of("file", "memory"),
        "replicas": _integer,
        "max_age": _seconds,
        "max_bytes": _integer,
        "create_stream": _flag,
        "start_from": _START_FROM,
        "ephemeral_inactivity": _seconds,
        "publish_timeout": _seconds,
        "timeout": _seconds,
        # nats-py's, for the connection the broker makes (connect_options):
        "name": _text,
        "token": _text,
        "user_credentials": _text,
    },
}
"""The broker options a URL's query may set, per scheme family, each with
its parser: ``redis+streams://host:6379/0?claim_idle=60&batch_size=100``.
Values are checked and converted (whole numbers, seconds, true/false, one
of a few words); an unknown name is refused, naming the known ones."""

_CLIENT_KEYS: dict[str, frozenset[str]] = {
    # redis-py reads these from the URL itself.
    "redis": frozenset(
        {
            "db",
            "health_check_interval",
            "legacy_responses",
            "max_connections",
            "protocol",
            "retry_on_error",
            "retry_on_timeout",
            "socket_connect_timeout",
            "socket_keepalive",
            "socket_read_size",
            "socket_timeout",
            "ssl_check_hostname",
            "ssl_exclude_verify_flags",
            "ssl_include_verify_flags",
            "ssl_min_version",
            "timeout",
            "client_name",
            "ssl_cert_reqs",
            "ssl_ca_certs",
            "ssl_certfile",
            "ssl_keyfile",
        }
    ),
    # aiormq and aio-pika read these from the URL itself.
    "amqp": frozenset(
        {
            "auth",
            "cadata",
            "cafile",
            "capath",
            "certfile",
            "heartbeat",
            "keyfile",
            "name",
            "no_verify_ssl",
            "timeout",
            "interleave",
            "happy_eyeballs_delay",
            "fail_fast",
        }
    ),
}
_CLIENT_KEYS["redis+streams"] = _CLIENT_KEYS["redis"]
_KAFKA_SECTIONS = {
    "client_id": "client_options",
    "security_protocol": "client_options",
    "sasl_mechanism": "client_options",
    "sasl_plain_username": "client_options",
    "sasl_plain_password": "client_options",
    "session_timeout_ms": "consumer_options",
    "heartbeat_interval_ms": "consumer_options",
    "max_request_size": "producer_options",
}


def _url_options(url: str, family: str, given: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """`url` without the query parameters that are broker options, and those
    options parsed, merged with the keywords `given`. The client's own
    parameters (redis-py's, aiormq's) stay in the URL."""
    parts = urlsplit(url)
    if not parts.query:
        return url, dict(given)
    ours, client = URL_OPTIONS[family], _CLIENT_KEYS.get(family, frozenset())
    options: dict[str, Any] = {}
    kept: list[tuple[str, str]] = []
    for name, text in parse_qsl(parts.query, keep_blank_values=True):
        if name in client:
            kept.append((name, text))
            continue
        parse = ours.get(name)
        if parse is None:
            known = sorted(ours) + sorted(client)
            raise ValueError(
                f"Broker URL {redact(url)!r}: {name!r} is not an option of a {family}:// broker; "
                f"the URL takes {', '.join(known)}"
            )
        if name in options:
            raise ValueError(f"Broker URL {redact(url)!r} gives {name!r} twice; give it once")
        try:
            options[name] = parse(text)
        except ValueError as exc:
            shown = "***" if _SECRET_NAME.search(name) else repr(text[:100])
            raise ValueError(
                f"Broker URL {redact(url)!r}: {name}={shown} is not {str(exc) or 'valid'}"
            ) from None
    for name in options.keys() & given.keys():
        raise ValueError(
            f"Broker URL {redact(url)!r} sets {name!r}, and so does the keyword {name}=...; "
            "set it in one place"
        )
    if family == "kafka":
        options = _kafka_sections(options)
    elif family == "nats":
        options = _nats_sections(options)
    merged = dict(given)
    for name, value in options.items():
        if isinstance(value, dict) and isinstance(merged.get(name), Mapping):
            value = {**value, **merged[name]}
        merged[name] = value
    # Cut by hand: urlunsplit would write unix:///path as unix:/path.
    base = url.split("?", 1)[0]
    return (f"{base}?{urlencode(kept)}" if kept else base), merged


def _kafka_sections(options: dict[str, Any]) -> dict[str, Any]:
    """aiokafka's own settings, moved into the option dicts they belong in."""
    out: dict[str, Any] = {}
    for name, value in options.items():
        section = _KAFKA_SECTIONS.get(name)
        if section is None:
            out[name] = value
        else:
            out.setdefault(section, {})[name] = value
    return out


_NATS_CONNECT = frozenset({"name", "token", "user_credentials"})


def _nats_sections(options: dict[str, Any]) -> dict[str, Any]:
    """nats-py's own settings, moved into the broker's connect_options."""
    out: dict[str, Any] = {}
    for name, value in options.items():
        if name in _NATS_CONNECT:
            out.setdefault("connect_options", {})[name] = value
        else:
            out[name] = value
    return out


def from_url(url: str, *, channel_prefix: str | None = None, **options: Any) -> SubscribingBroker:
    """A broker for `url`, owning (and closing on `stop()`) the client it builds.

    ```python
    broker = brokers.from_url("redis+streams://localhost:6379/0", channel_prefix="shop")
    ```

    - ``memory://``: `InMemoryMessageBroker`.
    - ``redis://``, ``rediss://``, ``unix://``: Redis Pub/Sub; the same with
      ``+streams`` (``redis+streams://host:6379/0``) for Redis Streams.
    - ``redis+cluster://host:port``, ``redis+cluster+streams://host:port``
      (``rediss+`` for TLS): the same on a Redis Cluster, from any one node.
    - ``amqp://``, ``amqps://``: RabbitMQ.
    - ``kafka://host:port[,host:port]``: Kafka.
    - ``nats://[user:password@]host:port[,host:port]`` (``tls://`` for TLS):
      NATS JetStream.
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
    family = _FAMILIES.get(scheme)
    if family is not None:
        url, options = _url_options(url, family, options)
    if scheme == "memory":
        return _build("memory", "InMemoryMessageBroker", **prefix, **options)
    if scheme in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
        return _build("redis", "RedisPubSubMessageBroker.from_url", url, **prefix, **options)
    if scheme in (
        "redis+streams",
        "rediss+streams",
        "unix+streams",
        "redis+cluster+streams",
        "rediss+cluster+streams",
    ):
        plain = scheme.removesuffix("+streams") + url[len(scheme) :]
        return _build("redis", "RedisStreamMessageBroker.from_url", plain, **prefix, **options)
    if scheme in ("amqp", "amqps"):
        return _build("rabbitmq", "RabbitMQMessageBroker.from_url", url, **prefix, **options)
    if scheme == "kafka":
        return _build("kafka", "KafkaMessageBroker.from_url", url, **prefix, **options)
    if scheme in ("nats", "tls"):
        return _build("nats", "NatsMessageBroker.from_url", url, **prefix, **options)
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
