"""The AsyncAPI 3.0 document of the example shop, checked for its structure
and for what it promises: every envelope the codec writes fits the schema of
its message, and every reference resolves.

No maintained package carries the official AsyncAPI 3.0 JSON Schema for
Python, so the structure is checked here field by field, and the payload
schemas with a JSON Schema validator."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

import brokers
from mediator import EventMap, MessageCodec, NotificationEvent, Service
from mediator._operations.asyncapi import asyncapi_document, dump
from mediator._operations.cli import main
from mediator.transport import encode_message

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def shop(monkeypatch: pytest.MonkeyPatch) -> Any:
    """examples/service.py, imported as the ``mediator`` command imports it."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.delenv(brokers.BROKER_URL_VARIABLE, raising=False)
    for name in ("service", "shop"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import service

    import shop

    return service, shop


def _walk_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _walk_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_refs(item)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_the_shop_document_has_every_channel_operation_and_message(shop: Any) -> None:
    service, _ = shop
    document = asyncapi_document(service.app)
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == "shop"
    assert document["defaultContentType"] == "application/json"
    assert "servers" not in document  # the in-memory broker is in the process
    assert set(document) <= {
        "asyncapi",
        "info",
        "servers",
        "defaultContentType",
        "channels",
        "operations",
        "components",
    }
    channels = document["channels"]
    assert set(channels) == {"OrderPlaced", "OrderCancelled", "NewsletterSigned"}
    for name, channel in channels.items():
        assert channel["address"] == f"shop:notification_event:{name}"
        assert channel["messages"] == {name: {"$ref": f"#/components/messages/{name}"}}
    operations = document["operations"]
    # Sent: everything the request handlers raise. Received: the billing group's Order*.
    assert {op: o["action"] for op, o in operations.items()} == {
        "sendOrderPlaced": "send",
        "sendNewsletterSigned": "send",
        "sendOrderCancelled": "send",
        "receiveOrderPlaced_billing": "receive",
        "receiveOrderCancelled_billing": "receive",
    }
    received = operations["receiveOrderPlaced_billing"]
    assert received["channel"] == {"$ref": "#/channels/OrderPlaced"}
    assert received["messages"] == [{"$ref": "#/channels/OrderPlaced/messages/OrderPlaced"}]
    assert received["x-consumer-group"] == "billing"
    assert "shop:notification_event:Order*" in received["description"]
    # Every event the billing map is bound to is received; every one raised is sent.
    bound = set(service.app.event_map.event_classes())
    assert {f"receive{name}_billing" for name in bound} <= set(operations)
    for ref in _walk_refs(document):
        assert _resolve(document, ref) is not None, ref


def test_each_message_is_the_envelope_around_the_payload_schema_of_its_class(shop: Any) -> None:
    service, events = shop
    document = asyncapi_document(service.app)
    schemas = document["components"]["schemas"]
    placed = schemas["OrderPlaced"]
    assert placed["type"] == "object"
    assert placed["properties"]["order_id"] == {"type": "integer"}
    assert placed["properties"]["total_cents"] == {"type": "integer"}
    assert placed["properties"]["event_id"] == {"type": "string", "format": "uuid"}
    assert placed["properties"]["event_timestamp"] == {"type": "string", "format": "date-time"}
    assert set(placed["required"]) == {"order_id", "total_cents", "event_id", "event_timestamp"}
    message = document["components"]["messages"]["OrderPlaced"]
    assert message["name"] == "OrderPlaced"
    assert message["contentType"] == "application/json"
    envelope = message["payload"]
    assert envelope["required"] == ["message_type", "message_name", "message_id", "payload"]
    assert envelope["properties"]["message_name"]["const"] == "OrderPlaced"
    assert envelope["properties"]["payload"] == {"$ref": "#/components/schemas/OrderPlaced"}

    # What the codec really writes fits; what it would refuse does not.
    registry: Registry[Any] = Registry().with_resource(
        "urn:asyncapi", Resource.from_contents(document, default_specification=DRAFT7)
    )
    for name, event in {
        "OrderPlaced": events.OrderPlaced(order_id=1, total_cents=5),
        "OrderCancelled": events.OrderCancelled(order_id=1),
        "NewsletterSigned": events.NewsletterSigned(email="ada@example.com"),
    }.items():
        schema = {"$ref": f"urn:asyncapi#/components/messages/{name}/payload"}
        validator = jsonschema.Draft7Validator(
            schema, registry=registry, format_checker=jsonschema.FormatChecker()
        )
        wire = orjson.loads(
            encode_message(MessageCodec.to_message(event, {"correlation_id": "c1"}))
        )
        validator.validate(wire)
        wrong = {**wire, "payload": {**wire["payload"], "event_timestamp": 5}}
        assert not validator.is_valid(wrong)
    jsonschema.Draft7Validator.check_schema(schemas["OrderPlaced"])


def test_receive_operations_follow_each_subscription_and_its_group() -> None:
    events = EventMap()

    class Pinged(NotificationEvent, name="ping.v1"):
        pass

    @events.bind(Pinged)
    async def pong(event: Pinged) -> None:
        return None

    service = Service(brokers.from_url("memory://", channel_prefix="app"), event_map=events)
    service.subscribe("app:*", group="a")
    service.subscribe("app:*:ping.*")
    service.subscribe("other:*", group="b")  # matches nothing registered
    operations = asyncapi_document(service)["operations"]
    assert sorted(operations) == ["receiveping.v1", "receiveping.v1_a"]
    assert "x-consumer-group" not in operations["receiveping.v1"]


@pytest.mark.parametrize(
    ("url", "protocol", "host", "address"),
    [
        ("redis://cache:6380/2", "redis", "cache:6380", "shop:notification_event:OrderPlaced"),
        ("rediss+streams://c:6390", "rediss", "c:6390", "shop:notification_event:OrderPlaced"),
        ("redis+cluster://n1:7000", "redis", "n1:7000", "shop:notification_event:OrderPlaced"),
        (
            "redis+cluster+streams://n1:7000",
            "redis",
            "n1:7000",
            "shop:notification_event:OrderPlaced",
        ),
        ("amqp://u:p@mq:5673/vh", "amqp", "mq:5673", "notification_event.OrderPlaced"),
        ("kafka://k1:9092,k2:9093", "kafka", "k1:9092", "shop.notification_event.OrderPlaced"),
    ],
)
def test_servers_and_bindings_follow_the_transport(
    shop: Any, url: str, protocol: str, host: str, address: str
) -> None:
    service, _ = shop
    service.app.broker = brokers.from_url(url, channel_prefix="shop")
    document = asyncapi_document(service.app)
    [server, *more] = document["servers"].values()
    assert (server["protocol"], server["host"]) == (protocol, host)
    assert "p@" not in orjson.dumps(document).decode()  # no credentials in a document
    channel = document["channels"]["OrderPlaced"]
    assert channel["address"] == address
    if protocol.startswith("redis"):
        kind = "stream" if "streams" in url else "pubsub"
        assert channel["x-redis"] == {"type": kind, "key": "shop:notification_event:OrderPlaced"}
    elif protocol == "amqp":
        assert server["pathname"] == "/vh"
        amqp = channel["bindings"]["amqp"]
        assert amqp["is"] == "routingKey"
        assert amqp["exchange"] == {
            "name": "shop",
            "type": "topic",
            "durable": True,
            "autoDelete": False,
        }
        receive = document["operations"]["receiveOrderPlaced_billing"]
        assert receive["x-amqp-queue"] == "shop.billing"
        send = document["operations"]["sendOrderPlaced"]
        assert send["bindings"]["amqp"]["deliveryMode"] == 2
    else:
        assert [s["host"] for s in (server, *more)] == ["k1:9092", "k2:9093"]
        assert channel["bindings"]["kafka"]["topic"] == address
        receive = document["operations"]["receiveOrderPlaced_billing"]
        assert receive["bindings"]["kafka"]["groupId"] == {"type": "string", "enum": ["billing"]}


def test_service_bus_names_the_topic_and_each_subject(shop: Any) -> None:
    service, _ = shop
    service.app.broker = brokers.from_url(
        "Endpoint=sb://ns.servicebus.example/;SharedAccessKeyName=k;SharedAccessKey=s;"
        "EntityPath=orders"
    )
    document = asyncapi_document(service.app)
    assert document["servers"]["servicebus"]["host"] == "ns.servicebus.example"
    channel = document["channels"]["OrderPlaced"]
    assert channel["address"] == "orders"
    assert channel["x-azure-service-bus"]["subject"] == "OrderPlaced"


def test_the_command_writes_json_or_yaml_of_the_same_document(
    shop: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(EXAMPLES)
    assert main(["asyncapi", "service:app"]) == 0
    from_json = orjson.loads(capsys.readouterr().out)
    assert main(["asyncapi", "service:app", "--yaml"]) == 0
    text = capsys.readouterr().out
    assert "&id" not in text  # no YAML anchors: readable, and portable to every parser
    assert yaml.safe_load(text) == from_json
    assert dump(from_json) == dump(asyncapi_document(shop[0].app))


def test_the_docs_show_the_document_the_command_writes_today(shop: Any) -> None:
    page = (EXAMPLES.parent / "docs" / "asyncapi.md").read_text()
    shown = page.split("```yaml\n", 1)[1].split("\n```", 1)[0]
    assert yaml.safe_load(shown) == orjson.loads(dump(asyncapi_document(shop[0].app)))
