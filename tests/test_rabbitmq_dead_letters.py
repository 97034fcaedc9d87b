"""Dead letters on RabbitMQ (brokers/rabbitmq/_dead_letters.py), without a
server: the copy the broker writes, and the record `dead_letters()` and
`unroutable()` read back from a message of their queues."""

from __future__ import annotations

import hashlib

from pamqp import commands as spec
from pamqp.common import FieldTable

from brokers.rabbitmq._dead_letters import dead_letter_copy, record_of, unroutable_record
from mediator.transport import DeadLetterRecord

CHANNEL = "shop:notification_event:OrderPlaced"


def delivered(headers: FieldTable | None = None) -> spec.Basic.Properties:
    """The properties of a delivery from a group queue, as the broker published it."""
    return spec.Basic.Properties(
        content_type="application/json",
        delivery_mode=2,
        message_id="0b6f-order-1",
        message_type="OrderPlaced",
        headers=headers,
    )


def test_a_dead_letter_reads_back_as_the_record_it_was_written_with() -> None:
    record = DeadLetterRecord.of(CHANNEL, b'{"order_id": 1}', "handler_failed", "boom", 3)
    copy = dead_letter_copy(record, delivered(), "notification_event.OrderPlaced")

    assert copy.body == record.data
    assert record_of(copy.properties.headers or {}, copy.body, "ignored") == record


def test_a_dead_letter_keeps_the_message_s_identity_and_routing_key() -> None:
    record = DeadLetterRecord.of(CHANNEL, b"{}", "rejected", "no")
    copy = dead_letter_copy(record, delivered(), "notification_event.OrderPlaced")

    assert copy.routing_key == "notification_event.OrderPlaced"
    properties = copy.properties
    assert (properties.message_id, properties.message_type) == ("0b6f-order-1", "OrderPlaced")
    assert properties.content_type == "application/json"
    assert properties.delivery_mode == 2  # persistent


def test_a_dead_letter_keeps_the_envelope_headers_and_drops_rabbitmq_s() -> None:
    headers: FieldTable = {"correlation_id": "checkout-7", "x-delivery-count": 4, "x-death": []}
    record = DeadLetterRecord.of(CHANNEL, b"{}", "too_many_deliveries", "5 deliveries", 5)
    copy = dead_letter_copy(record, delivered(headers), "notification_event.OrderPlaced")

    written = copy.properties.headers or {}
    assert written["correlation_id"] == "checkout-7"
    assert not [name for name in written if name.startswith("x-")]
    assert written["dead_letter_reason"] == "too_many_deliveries"
    assert written["dead_letter_delivery_count"] == "5"
    assert "dead_letter_data" not in written  # the body is the message's


def test_a_large_body_is_kept_as_its_first_64_kib_with_the_whole_s_size_and_hash() -> None:
    body = b"x" * 100_000
    record = DeadLetterRecord.of(CHANNEL, body, "too_large", "over the limit")
    copy = dead_letter_copy(record, delivered(), "notification_event.OrderPlaced")

    read = record_of(copy.properties.headers or {}, copy.body, CHANNEL)
    assert len(read.data) == 65_536
    assert (read.size, read.sha256, read.truncated) == (
        100_000,
        hashlib.sha256(body).hexdigest(),
        True,
    )


def test_a_message_rabbitmq_dead_lettered_itself_says_why_from_x_death() -> None:
    headers = {
        "x-death": [{"reason": "delivery_limit", "queue": "shop.billing", "count": 1}],
        "x-delivery-count": 20,
    }
    read = record_of(headers, b"{}", CHANNEL)

    assert (read.channel, read.reason, read.delivery_count) == (CHANNEL, "delivery_limit", 21)
    assert read.description == "dead-lettered by RabbitMQ from queue shop.billing: delivery_limit"


def test_a_message_with_no_record_at_all_reads_as_unknown() -> None:
    read = record_of({"x-death": "not a list"}, b"raw", CHANNEL)

    assert (read.reason, read.delivery_count, read.data) == ("unknown", 1, b"raw")
    assert read.description == "dead-lettered by RabbitMQ from queue ?: unknown"


def test_a_message_no_queue_was_bound_for_reads_as_unroutable() -> None:
    read = unroutable_record(b"{}", "notification_event.OrderPlaced", CHANNEL, "shop")

    assert (read.channel, read.reason, read.data) == (CHANNEL, "unroutable", b"{}")
    assert read.description == (
        "published to exchange 'shop' with routing key 'notification_event.OrderPlaced' "
        "while no queue was bound for it"
    )
