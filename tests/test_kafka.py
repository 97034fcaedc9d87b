"""The Kafka transport against a real Kafka-protocol broker (Tansu, or the
cluster at ``KAFKA_BOOTSTRAP_SERVERS``), and the core's partition keys it uses."""

from __future__ import annotations

import attrs
import pytest

from mediator import MessageCodec, NotificationEvent, encode_message


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent, partition_key="order_id"):
    order_id: int


@attrs.frozen(kw_only=True)
class OrderPlacedAgain(OrderPlaced, name="OrderPlaced.v2"):
    note: str = ""


@attrs.frozen(kw_only=True)
class Unkeyed(NotificationEvent):
    n: int


@attrs.frozen(kw_only=True)
class Misnamed(NotificationEvent, partition_key="order"):
    order_id: int


# -- partition keys (core) ------------------------------------------------------


def test_an_event_class_names_its_partition_key_and_the_message_carries_it() -> None:
    message = MessageCodec.to_message(OrderPlaced(order_id=42))
    assert message.partition_key == "42"
    assert b"partition_key" not in encode_message(message), "routing, not envelope content"


def test_a_subclass_inherits_the_partition_key() -> None:
    assert MessageCodec.to_message(OrderPlacedAgain(order_id=7)).partition_key == "7"


def test_without_a_partition_key_the_message_has_none() -> None:
    assert MessageCodec.to_message(Unkeyed(n=1)).partition_key is None


def test_a_partition_key_naming_no_field_says_which_class_and_what_to_do() -> None:
    with pytest.raises(TypeError, match=r"Misnamed names partition_key='order'.*name a field"):
        MessageCodec.to_message(Misnamed(order_id=1))
