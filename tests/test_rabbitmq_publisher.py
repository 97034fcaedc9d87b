"""What the RabbitMQ publisher sends for an envelope
(brokers/rabbitmq/_publisher.py), without a server: the routing key and AMQP
properties other programs read, and the mandatory marker."""

from __future__ import annotations

import attrs
import pytest

from brokers.rabbitmq._naming import MANDATORY_KEY, routing_key_of
from brokers.rabbitmq._publisher import outgoing_of
from mediator import Message, MessageCodec, NotificationEvent, PublishError
from mediator.transport import encode_message


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int


def envelope(headers: dict[str, str] | None = None) -> Message:
    return MessageCodec.to_message(OrderPlaced(order_id=1), headers)


def test_an_envelope_is_a_persistent_json_message_named_by_its_event() -> None:
    message = envelope({"correlation_id": "checkout-7"})
    sent = outgoing_of(message, routing_key_of(message), encode_message, mandatory=False)

    assert sent.routing_key == "notification_event.OrderPlaced"
    assert sent.body == encode_message(message)
    properties = sent.properties
    assert properties.delivery_mode == 2
    assert properties.content_type == "application/json"
    assert properties.message_id == str(message.message_id)
    assert properties.message_type == "OrderPlaced"
    assert properties.headers == {"correlation_id": "checkout-7"}
    assert sent.label == f"OrderPlaced ({message.message_id})"


def test_an_envelope_without_headers_has_no_amqp_headers() -> None:
    message = envelope()
    assert not message.headers
    sent = outgoing_of(message, routing_key_of(message), encode_message, mandatory=False)
    assert sent.properties.headers is None


def test_a_mandatory_publish_adds_the_marker_the_alternate_exchange_returns() -> None:
    message = envelope({"correlation_id": "checkout-7"})
    sent = outgoing_of(message, routing_key_of(message), encode_message, mandatory=True)

    assert sent.properties.headers == {"correlation_id": "checkout-7", "BCC": [MANDATORY_KEY]}
    assert message.headers == {"correlation_id": "checkout-7"}  # the envelope is untouched


def test_a_routing_key_over_255_bytes_is_refused_before_the_body_is_encoded() -> None:
    def encode(message: Message) -> bytes:
        raise AssertionError("encoded a message that cannot be published")

    message = envelope()
    with pytest.raises(PublishError, match="over 255 bytes"):
        outgoing_of(message, "notification_event." + "é" * 119, encode, mandatory=False)
    assert outgoing_of(message, "k" * 255, encode_message, mandatory=False).routing_key == "k" * 255
