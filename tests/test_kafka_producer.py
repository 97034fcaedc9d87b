"""Kafka publishing (brokers/kafka/_producer.py), without a server: the
record of an envelope, the records cut off with their connection sent once
more (and only those), and what a refused publish says."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import attrs
import pytest
from aiokafka import errors as aiokafka_errors

from brokers.kafka._naming import topic_name
from brokers.kafka._producer import Record, publish_error, records_of, send_records
from mediator import (
    CredentialError,
    Message,
    MessageCodec,
    MessageTooLargeError,
    NotificationEvent,
    PublishError,
)
from mediator.transport import encode_message


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent, partition_key="order_id"):
    order_id: int


@attrs.frozen(kw_only=True)
class Unkeyed(NotificationEvent):
    n: int


def topic_for(message: Message) -> str:
    return topic_name("shop", message.message_type, message.message_name)


def records(*values: bytes) -> list[Record]:
    return [("shop.notification_event.Step", value, None, []) for value in values]


class Producer:
    """aiokafka's producer as far as publishing uses it: `send` hands a
    record over and returns the future of its acknowledgement, which fails
    with the next error of `failures` for that value (None: acknowledged)."""

    def __init__(self, failures: dict[bytes, list[BaseException | None]] | None = None) -> None:
        self.failures = failures or {}
        self.sent: list[bytes] = []

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[None]:
        self.sent.append(value)
        acknowledged = asyncio.get_running_loop().create_future()
        outcomes = self.failures.get(value) or [None]
        failure = outcomes.pop(0)
        if failure is None:
            acknowledged.set_result(None)
        else:
            acknowledged.set_exception(failure)
        return acknowledged

    async def started(self) -> Producer:
        return self


# -- records ---------------------------------------------------------------------


def test_an_envelope_is_a_record_of_its_channels_topic_keyed_by_its_partition_key() -> None:
    message = MessageCodec.to_message(OrderPlaced(order_id=42), {"correlation_id": "c-1"})
    [(topic, value, key, headers)] = records_of([message], topic_for, encode_message)

    assert topic == "shop.notification_event.OrderPlaced"
    assert value == encode_message(message)
    assert key == b"42"
    assert headers == [("correlation_id", b"c-1")]


def test_an_event_without_a_partition_key_makes_an_unkeyed_record() -> None:
    [(_, _, key, headers)] = records_of(
        [MessageCodec.to_message(Unkeyed(n=1))], topic_for, encode_message
    )
    assert key is None
    assert headers == []


def test_a_batch_keeps_its_order() -> None:
    messages = [MessageCodec.to_message(OrderPlaced(order_id=n)) for n in (3, 1, 2)]
    keys = [key for _, _, key, _ in records_of(messages, topic_for, encode_message)]
    assert keys == [b"3", b"1", b"2"]


# -- sending ---------------------------------------------------------------------


async def test_every_record_is_handed_over_in_order_and_acknowledged_once() -> None:
    producer = Producer()
    await send_records(producer.started, records(b"1", b"2", b"3"))
    assert producer.sent == [b"1", b"2", b"3"]


async def test_records_cut_off_with_their_connection_are_sent_once_more(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cut_off = aiokafka_errors.RequestTimedOutError()
    producer = Producer({b"2": [cut_off, None], b"3": [cut_off, None]})

    await send_records(producer.started, records(b"1", b"2", b"3", b"4"))

    assert producer.sent == [b"1", b"2", b"3", b"4", b"2", b"3"]
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.name == "mediator.brokers.kafka"
    assert "publishing 2 record(s) was cut off" in warning.getMessage()


async def test_a_record_cut_off_twice_raises_the_cut_off() -> None:
    closed = aiokafka_errors.KafkaConnectionError("connection closed")
    producer = Producer({b"1": [closed, closed]})
    with pytest.raises(aiokafka_errors.KafkaConnectionError):
        await send_records(producer.started, records(b"1"))
    assert producer.sent == [b"1", b"1"]


async def test_an_error_of_a_records_own_is_raised_and_nothing_is_sent_again() -> None:
    too_large = aiokafka_errors.MessageSizeTooLargeError()
    cut_off = aiokafka_errors.RequestTimedOutError()
    producer = Producer({b"1": [cut_off], b"2": [too_large]})
    with pytest.raises(aiokafka_errors.MessageSizeTooLargeError):
        await send_records(producer.started, records(b"1", b"2", b"3"))
    assert producer.sent == [b"1", b"2", b"3"]


async def test_a_producer_that_does_not_start_is_raised_as_it_came() -> None:
    async def unreachable() -> Any:
        raise aiokafka_errors.KafkaConnectionError("Unable to bootstrap")

    with pytest.raises(aiokafka_errors.KafkaConnectionError, match="bootstrap"):
        await send_records(unreachable, records(b"1"))


# -- publish errors --------------------------------------------------------------

MESSAGES = [MessageCodec.to_message(OrderPlaced(order_id=1))]
SERVERS = ["k1:9092"]


@pytest.mark.parametrize(
    "error", [aiokafka_errors.MessageSizeTooLargeError(), aiokafka_errors.RecordTooLargeError()]
)
def test_a_record_kafka_finds_too_large_says_which_limits_to_raise(error: Exception) -> None:
    refused = publish_error(MESSAGES, error, idempotence=True, servers=SERVERS)
    assert isinstance(refused, MessageTooLargeError)
    assert "Kafka refused OrderPlaced as too large" in str(refused)
    assert "max_request_size" in str(refused)
    assert "max.message.bytes" in str(refused)


def test_a_refused_write_is_a_credential_error_naming_the_acls() -> None:
    error = aiokafka_errors.TopicAuthorizationFailedError()
    refused = publish_error(MESSAGES, error, idempotence=False, servers=SERVERS)
    assert isinstance(refused, CredentialError)
    assert "the producer's ACLs" in str(refused)


def test_a_broker_without_idempotent_producers_is_told_to_switch_idempotence_off() -> None:
    error = aiokafka_errors.UnknownError()
    hinted = publish_error(MESSAGES, error, idempotence=True, servers=SERVERS)
    assert type(hinted) is PublishError
    assert str(hinted).endswith("pass idempotence=False")
    plain = publish_error(MESSAGES, error, idempotence=False, servers=SERVERS)
    assert "idempotence" not in str(plain)


def test_any_other_failure_names_the_events_and_the_servers() -> None:
    messages = [*MESSAGES, MessageCodec.to_message(Unkeyed(n=1))]
    error = aiokafka_errors.KafkaTimeoutError()
    refused = publish_error(messages, error, idempotence=True, servers=["k1:9092", "k2:9092"])
    assert type(refused) is PublishError
    assert str(refused).startswith(
        "could not publish OrderPlaced, Unkeyed to Kafka at k1:9092,k2:9092: "
    )
