"""The AsyncAPI 3.0 document of a Service: what it publishes and receives, on
which broker (docs/asyncapi.md)."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import msgspec
import orjson

from mediator._events import Event, event_name, message_type_of
from mediator._models import form_of
from mediator._operations.asyncapi_processes import annotate_operation, describe_process_managers
from mediator._operations.raised_events import process_handlers
from mediator._operations.service import Service
from mediator._patterns import GlobPattern

__all__ = ["ASYNCAPI_VERSION", "asyncapi_document", "dump"]

ASYNCAPI_VERSION = "3.0.0"

_ID = re.compile(r"[^\w.\-]")
"""What an AsyncAPI map key (a component or channel id) may not contain."""

_HEADERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Envelope headers: strings, set by the producer and its interceptors.",
    "properties": {
        "correlation_id": {
            "type": "string",
            "description": "The same for every message of one piece of work.",
        },
        "causation_id": {
            "type": "string",
            "description": "The message_id of the message whose handling published this one.",
        },
        "traceparent": {"type": "string", "description": "W3C Trace Context, when traced."},
        "tracestate": {"type": "string", "description": "W3C Trace Context, when traced."},
    },
    "additionalProperties": {"type": "string"},
}


def asyncapi_document(service: Service, *, version: str = "1.0.0") -> dict[str, Any]:
    """The AsyncAPI 3.0 document of `service`, as a JSON-ready dict: its
    broker, the channels it publishes to and receives from, and each event's
    message and payload schema (docs/asyncapi.md, "What is in it")."""
    broker = service.broker
    transport = _Transport.of(broker)
    prefix = broker.channel_prefix if broker is not None else "{prefix}"
    published = service.published_events()
    received: dict[type[Event], list[tuple[str, str | None, str | None, Any]]] = {}
    for spec in service.subscriptions:
        glob = GlobPattern(spec.pattern)
        for event_type in spec.event_map.event_classes().values():
            if glob.matches(_logical(prefix, event_type)):
                received.setdefault(event_type, []).append(
                    (spec.pattern, spec.group, spec.inbox, spec.event_map)
                )
    processes = process_handlers(service.event_maps)
    reaching: dict[tuple[int, type[Event]], list[str]] = {}
    event_types = list(dict.fromkeys([*published, *received]))
    channel_ids = _unique_ids(event_types)
    schemas = _payload_schemas(event_types)

    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for event_type in event_types:
        cid = channel_ids[event_type]
        logical = _logical(prefix, event_type)
        messages[cid] = _message(event_type, schemas[event_type], transport)
        channel: dict[str, Any] = {
            "address": transport.address(logical, event_type),
            "title": logical,
            "messages": {cid: {"$ref": f"#/components/messages/{cid}"}},
        }
        channel.update(transport.channel_binding(logical, event_type))
        channels[cid] = channel
        ref = {"$ref": f"#/channels/{cid}"}
        message_ref = [{"$ref": f"#/channels/{cid}/messages/{cid}"}]
        if event_type in published:
            operations[f"send{cid}"] = {
                "action": "send",
                "channel": ref,
                "summary": f"Publish {event_name(event_type)}",
                "messages": message_ref,
                **transport.operation_binding("send", None),
            }
            if service.outbox is not None:
                operations[f"send{cid}"]["description"] = (
                    "Written to the outbox in the transaction of the send that raised it; "
                    "published by the outbox relay once that transaction committed."
                )
        for pattern, group, inbox, event_map in received.get(event_type, ()):
            base = f"receive{cid}" + (f"_{_ID.sub('_', group)}" if group else "")
            operation_id, n = base, 2
            while operation_id in operations:
                operation_id, n = f"{base}_{n}", n + 1
            in_group = f"in group {group!r}" if group else "(broadcast, no group)"
            operations[operation_id] = {
                "action": "receive",
                "channel": ref,
                "summary": f"Handle {event_name(event_type)} {in_group}",
                "description": f"Subscription pattern `{pattern}`."
                + (
                    f" Each message id is handled once (inbox `{inbox}`), in one transaction "
                    "with the handlers' writes."
                    if inbox
                    else ""
                ),
                "messages": message_ref,
                **transport.operation_binding("receive", group),
            }
            if annotate_operation(operations[operation_id], processes, event_type, event_map):
                reaching.setdefault((id(event_map), event_type), []).append(operation_id)

    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": service.name,
            "version": version,
            "description": (
                f"Messages {service.name} publishes and receives through "
                f"{transport.description}. Every message is a JSON envelope around the "
                "event's payload."
            ),
        },
        "defaultContentType": "application/json",
    }
    servers = transport.servers()
    if servers:
        document["servers"] = servers
    document["channels"] = channels
    document["operations"] = operations
    document["components"] = {"messages": messages, "schemas": schemas.components}
    if processes:
        document["x-process-managers"] = describe_process_managers(processes, reaching, channel_ids)
    return document


def dump(document: dict[str, Any], *, yaml: bool = False) -> str:
    """`document` as indented JSON, or YAML (which needs PyYAML installed)."""
    if not yaml:
        return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"
    try:
        pyyaml: Any = importlib.import_module("yaml")
    except ImportError as exc:
        raise ImportError(
            "YAML output needs PyYAML: pip install 'mediator-toolkit[asyncapi]', or drop --yaml "
            "for JSON"
        ) from exc
    # A copy without shared objects, which YAML would write as anchors and aliases.
    plain = orjson.loads(orjson.dumps(document))
    return str(pyyaml.safe_dump(plain, sort_keys=False, allow_unicode=True, width=100))


# -- pieces -------------------------------------------------------------------


def _logical(prefix: str, event_type: type[Event]) -> str:
    return f"{prefix}:{message_type_of(event_type)}:{event_name(event_type)}"


def _unique_ids(event_types: Iterable[type[Event]]) -> dict[type[Event], str]:
    ids: dict[type[Event], str] = {}
    taken: set[str] = set()
    for event_type in event_types:
        base = _ID.sub("_", event_name(event_type))
        cid, n = base, 2
        while cid in taken:
            cid, n = f"{base}_{n}", n + 1
        taken.add(cid)
        ids[event_type] = cid
    return ids


class _Schemas(dict[type[Event], dict[str, Any]]):
    components: dict[str, Any]


_REF = "#/components/schemas/{name}"


def _model_schemas(
    models: list[type[Any]], components: dict[str, Any]
) -> dict[type[Any], dict[str, Any]]:
    """pydantic models' schemas, by pydantic itself, in the components."""
    refs: dict[type[Any], dict[str, Any]] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF.replace("{name}", "{model}"))
        components.update(schema.pop("$defs", {}))
        name = model.__name__
        components[name] = schema
        refs[model] = {"$ref": _REF.format(name=name)}
    return refs


def _payload_schemas(event_types: list[type[Event]]) -> _Schemas:
    models = [t for t in event_types if form_of(t) == "pydantic"]
    plain = [t for t in event_types if t not in models]
    refs, components = msgspec.json.schema_components(plain, ref_template=_REF)
    by_type = dict(zip(plain, refs, strict=True)) | _model_schemas(models, components)
    for component in components.values():
        properties = component.get("properties", {})
        if "event_timestamp" in properties:
            # Written by the codec as ISO 8601: with its offset, none when naive.
            properties["event_timestamp"] = {"type": "string", "format": "date-time"}
        if "event_id" in properties:
            required = component.setdefault("required", [])
            # The codec always writes both, so a consumer can rely on them.
            for field in ("event_id", "event_timestamp"):
                if field not in required:
                    required.append(field)
    schemas = _Schemas((t, by_type[t]) for t in event_types)
    schemas.components = dict(sorted(components.items()))
    return schemas


def _message(event_type: type[Event], payload: dict[str, Any], transport: _Transport) -> Any:
    name = event_name(event_type)
    kind = message_type_of(event_type)
    doc = (event_type.__doc__ or "").strip()
    message: dict[str, Any] = {
        "name": name,
        "title": event_type.__qualname__,
        "contentType": "application/json",
        "payload": {
            "type": "object",
            "description": "The wire envelope; `payload` holds the event's fields.",
            "required": ["message_type", "message_name", "message_id", "payload"],
            "properties": {
                "message_type": {"type": "string", "const": kind},
                "message_name": {"type": "string", "const": name},
                "message_id": {
                    "type": "string",
                    "format": "uuid",
                    "description": "Equals payload.event_id; kept on redelivery.",
                },
                "payload": payload,
                "headers": _HEADERS_SCHEMA,
            },
        },
    }
    if doc and not doc.startswith(f"{event_type.__name__}("):  # attrs' generated docstring
        message["summary"] = doc.splitlines()[0]
    message.update(transport.message_binding(event_type))
    return message


class _Transport:
    """What one kind of broker puts in the document; the in-memory one and unknown ones."""

    class_name = ""
    description = "an in-process broker"

    def __init__(self, broker: Any) -> None:
        self.broker = broker

    @staticmethod
    def of(broker: Any) -> _Transport:
        names = {cls.__name__ for cls in type(broker).__mro__}
        for kind in (_RedisStreams, _RedisPubSub, _RabbitMQ, _Kafka, _ServiceBus):
            if kind.class_name in names:
                return kind(broker)
        return _Transport(broker)

    def servers(self) -> dict[str, Any]:
        return {}

    def address(self, logical: str, event_type: type[Event]) -> str:
        return logical

    def channel_binding(self, logical: str, event_type: type[Event]) -> dict[str, Any]:
        return {}

    def operation_binding(self, action: str, group: str | None) -> dict[str, Any]:
        if group is None:
            return {}
        return {"x-consumer-group": group}

    def message_binding(self, event_type: type[Event]) -> dict[str, Any]:
        return {}


class _RedisPubSub(_Transport):
    class_name = "RedisPubSubMessageBroker"
    description = "Redis Pub/Sub (at-most-once)"
    kind = "pubsub"

    def servers(self) -> dict[str, Any]:
        client = self.broker.client
        nodes = getattr(client, "nodes_manager", None)
        if nodes is not None:  # a RedisCluster: the node it starts from
            first = next(iter(nodes.startup_nodes.values()), None)
            tls = nodes.connection_kwargs.get("connection_class", type).__name__ == "SSLConnection"
            return {
                "redis": {
                    "host": "?" if first is None else f"{first.host}:{first.port}",
                    "protocol": "rediss" if tls else "redis",
                    "description": f"{self.description}, on a Redis Cluster",
                }
            }
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        host = kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
        tls = pool.connection_class.__name__ == "SSLConnection"
        server: dict[str, Any] = {
            "host": str(host),
            "protocol": "rediss" if tls else "redis",
            "description": self.description,
        }
        if "db" in kwargs and "path" not in kwargs:
            server["pathname"] = f"/{kwargs['db']}"
        return {"redis": server}

    def channel_binding(self, logical: str, event_type: type[Event]) -> dict[str, Any]:
        return {"bindings": {"redis": {}}, "x-redis": {"type": self.kind, "key": logical}}


class _RedisStreams(_RedisPubSub):
    class_name = "RedisStreamMessageBroker"
    description = "Redis Streams (at-least-once, consumer groups)"
    kind = "stream"


class _RabbitMQ(_Transport):
    class_name = "RabbitMQMessageBroker"
    description = "RabbitMQ (AMQP 0-9-1, at-least-once)"

    def servers(self) -> dict[str, Any]:
        url = getattr(self.broker, "_url", None)
        connection = getattr(self.broker, "_connection", None)
        if url is None and connection is not None:
            url = str(getattr(connection, "url", "") or "")
        parts = urlsplit(url or "amqp://localhost:5672/")
        host = parts.hostname or "localhost"
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        server: dict[str, Any] = {
            "host": f"{host}:{port}",
            "protocol": parts.scheme or "amqp",
            "protocolVersion": "0.9.1",
            "description": self.description,
        }
        if parts.path and parts.path != "/":
            server["pathname"] = parts.path
        return {"rabbitmq": server}

    def address(self, logical: str, event_type: type[Event]) -> str:
        return f"{message_type_of(event_type)}.{event_name(event_type)}"

    def channel_binding(self, logical: str, event_type: type[Event]) -> dict[str, Any]:
        return {
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {
                        "name": self.broker.channel_prefix,
                        "type": "topic",
                        "durable": True,
                        "autoDelete": False,
                    },
                    "bindingVersion": "0.3.0",
                }
            }
        }

    def operation_binding(self, action: str, group: str | None) -> dict[str, Any]:
        if action == "send":
            return {
                "bindings": {
                    "amqp": {"deliveryMode": 2, "mandatory": True, "bindingVersion": "0.3.0"}
                }
            }
        binding: dict[str, Any] = {"bindings": {"amqp": {"ack": True, "bindingVersion": "0.3.0"}}}
        if group is not None:
            binding["x-consumer-group"] = group
            binding["x-amqp-queue"] = f"{self.broker.channel_prefix}.{group}"
        return binding


class _Kafka(_Transport):
    class_name = "KafkaMessageBroker"
    description = "Kafka (at-least-once, consumer groups)"

    def servers(self) -> dict[str, Any]:
        servers = list(getattr(self.broker, "bootstrap_servers", ()) or ["localhost:9092"])
        return {
            f"kafka{i}" if i else "kafka": {
                "host": server,
                "protocol": "kafka",
                "description": self.description,
            }
            for i, server in enumerate(servers)
        }

    def address(self, logical: str, event_type: type[Event]) -> str:
        return (
            f"{self.broker.channel_prefix}.{message_type_of(event_type)}.{event_name(event_type)}"
        )

    def channel_binding(self, logical: str, event_type: type[Event]) -> dict[str, Any]:
        return {
            "bindings": {
                "kafka": {"topic": self.address(logical, event_type), "bindingVersion": "0.5.0"}
            }
        }

    def operation_binding(self, action: str, group: str | None) -> dict[str, Any]:
        if action == "send" or group is None:
            return {}
        return {
            "bindings": {
                "kafka": {
                    "groupId": {"type": "string", "enum": [group]},
                    "bindingVersion": "0.5.0",
                }
            },
            "x-consumer-group": group,
        }

    def message_binding(self, event_type: type[Event]) -> dict[str, Any]:
        field = event_type.__partition_key__
        if field is None:
            return {}
        return {
            "bindings": {
                "kafka": {
                    "key": {
                        "type": "string",
                        "description": f"The event's {field}, so its events keep their order.",
                    },
                    "bindingVersion": "0.5.0",
                }
            }
        }


class _ServiceBus(_Transport):
    class_name = "AzureMessageBroker"
    description = "Azure Service Bus (AMQP 1.0, peek-lock, at-least-once)"

    def servers(self) -> dict[str, Any]:
        namespace = getattr(self.broker.client, "fully_qualified_namespace", None) or "localhost"
        return {
            "servicebus": {
                "host": str(namespace),
                "protocol": "amqps",
                "protocolVersion": "1.0",
                "description": self.description,
            }
        }

    def address(self, logical: str, event_type: type[Event]) -> str:
        return str(self.broker.topic_name)

    def channel_binding(self, logical: str, event_type: type[Event]) -> dict[str, Any]:
        return {
            "x-azure-service-bus": {
                "topic": self.broker.topic_name,
                "subject": event_name(event_type),
                "logicalChannel": logical,
            }
        }

    def operation_binding(self, action: str, group: str | None) -> dict[str, Any]:
        if action == "send" or group is None:
            return {}
        return {"x-consumer-group": group, "x-azure-subscription": group}
