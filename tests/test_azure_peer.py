"""The real azure-servicebus asyncio SDK against the loopback AMQP peer in ``azure_peer``.

These tests pin what the peer emulates, so that the Azure broker adapter's tests can rely on
it: sends and batches to a topic, fan-out to subscriptions, peek-lock receives, complete,
abandon, dead-letter (and the dead-letter sub-queue), peek, lock renewal, lock loss and
retried sends.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

try:
    from azure.servicebus import (
        ServiceBusMessage,
        ServiceBusReceivedMessage,
        ServiceBusReceiveMode,
        ServiceBusSubQueue,
    )
    from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver
    from azure.servicebus.exceptions import MessageLockLostError, ServiceBusError

    from tests.azure_peer import LOCK_DURATION_MS, AmqpPeer
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise
    pytest.skip(f"azure-servicebus or python-qpid-proton missing: {exc}", allow_module_level=True)

TOPIC = "orders"
WAIT = 5  # seconds: max_wait_time for receives that expect messages


@pytest.fixture
def peer() -> Iterator[AmqpPeer]:
    with AmqpPeer() as amqp_peer:
        amqp_peer.add_subscription(TOPIC, "billing")
        amqp_peer.add_subscription(TOPIC, "Shipping")  # names are case-insensitive
        yield amqp_peer


@pytest.fixture
async def client(peer: AmqpPeer) -> AsyncIterator[ServiceBusClient]:
    # Small backoff: the retry test should not wait the SDK's default 0.8 s per attempt.
    async with ServiceBusClient.from_connection_string(
        peer.connection_string, retry_total=3, retry_backoff_factor=0.01
    ) as sb_client:
        yield sb_client


def _body(message: ServiceBusReceivedMessage) -> bytes:
    return b"".join(message.body)


async def _receive(receiver: ServiceBusReceiver, count: int) -> list[ServiceBusReceivedMessage]:
    """Receive exactly ``count`` messages (they may come in more than one call)."""
    messages: list[ServiceBusReceivedMessage] = []
    for _ in range(count):
        batch = await receiver.receive_messages(
            max_message_count=count - len(messages), max_wait_time=WAIT
        )
        messages.extend(batch)
        if len(messages) >= count:
            break
    assert len(messages) == count, f"expected {count} messages, got {len(messages)}"
    return messages


# Without keep-alive pings a sender's close need not wait for the next one (up to 1 s).
SENDER = {"keep_alive": 0, "socket_timeout": 0.05}


async def _send(client: ServiceBusClient, *messages: ServiceBusMessage) -> None:
    async with client.get_topic_sender(TOPIC, **SENDER) as sender:
        for message in messages:
            await sender.send_messages(message)


async def test_properties_round_trip_through_a_subscription(
    peer: AmqpPeer, client: ServiceBusClient
) -> None:
    await _send(
        client,
        ServiceBusMessage(
            b'{"order": 7}',
            message_id="m-1",
            subject="OrderPlaced",
            content_type="application/json",
            correlation_id="req-1",
            application_properties={"event": "OrderPlaced", "version": 2},
        ),
    )

    [recorded] = peer.received(TOPIC)
    assert recorded.message_id == "m-1"
    assert recorded.subject == "OrderPlaced"
    assert recorded.content_type == "application/json"
    assert recorded.correlation_id == "req-1"
    assert recorded.application_properties == {"event": "OrderPlaced", "version": 2}
    assert recorded.body == b'{"order": 7}'

    async with client.get_subscription_receiver(
        TOPIC, "billing", receive_mode=ServiceBusReceiveMode.PEEK_LOCK
    ) as receiver:
        [message] = await _receive(receiver, 1)
        assert message.message_id == "m-1"
        assert message.subject == "OrderPlaced"
        assert message.content_type == "application/json"
        assert message.correlation_id == "req-1"
        # The SDK hands application properties over with bytes keys, and strings as bytes.
        assert message.application_properties == {b"event": b"OrderPlaced", b"version": 2}
        assert _body(message) == b'{"order": 7}'
        assert message.delivery_count == 0
        assert message.sequence_number == 1
        assert message.enqueued_time_utc is not None
        assert message.locked_until_utc is not None
        token = message.lock_token  # the SDK forgets it once the message is settled
        assert token is not None
        await receiver.complete_message(message)

    assert peer.outcome(token) == "completed"
    assert peer.message_count(TOPIC, "billing") == 0
    assert peer.message_count(TOPIC, "shipping") == 1  # its own copy is untouched


async def test_a_batch_reaches_every_subscription_in_order(
    peer: AmqpPeer, client: ServiceBusClient
) -> None:
    async with client.get_topic_sender(TOPIC, **SENDER) as sender:
        batch = await sender.create_message_batch()
        for n in range(3):
            batch.add_message(ServiceBusMessage(f"body-{n}", message_id=f"b-{n}"))
        await sender.send_messages(batch)
        await sender.send_messages([ServiceBusMessage(b"listed", message_id="l-0")])

    assert [m.message_id for m in peer.received(TOPIC)] == ["b-0", "b-1", "b-2", "l-0"]
    assert [m.body for m in peer.received(TOPIC)] == [b"body-0", b"body-1", b"body-2", b"listed"]

    for subscription in ("billing", "SHIPPING"):
        async with client.get_subscription_receiver(TOPIC, subscription) as receiver:
            messages = await _receive(receiver, 4)
            assert [m.message_id for m in messages] == ["b-0", "b-1", "b-2", "l-0"]
            assert [m.sequence_number for m in messages] == [1, 2, 3, 4]
            for message in messages:
                await receiver.complete_message(message)
    assert peer.message_count(TOPIC, "billing") == peer.message_count(TOPIC, "shipping") == 0


async def test_abandon_brings_the_message_back_with_one_more_delivery(
    peer: AmqpPeer, client: ServiceBusClient
) -> None:
    await _send(client, ServiceBusMessage(b"retry me", message_id="a-1"))

    async with client.get_subscription_receiver(TOPIC, "billing") as receiver:
        [first] = await _receive(receiver, 1)
        first_token = first.lock_token
        assert first_token is not None
        await receiver.abandon_message(first)
        [second] = await _receive(receiver, 1)
        second_token = second.lock_token
        assert second_token is not None
        assert second.message_id == "a-1"
        assert first.delivery_count == 0
        assert second.delivery_count == 1
        assert second_token != first_token
        await receiver.complete_message(second)

    assert peer.outcome(first_token) == "abandoned"
    assert peer.outcome(second_token) == "completed"


async def test_dead_letter_moves_the_message_to_the_sub_queue(
    peer: AmqpPeer, client: ServiceBusClient
) -> None:
    await _send(
        client,
        ServiceBusMessage(b"poison", message_id="d-1", application_properties={"event": "X"}),
    )

    async with client.get_subscription_receiver(TOPIC, "billing") as receiver:
        [message] = await _receive(receiver, 1)
        await receiver.dead_letter_message(
            message, reason="UnknownEvent", error_description="no handler for X"
        )
        # Nothing is left for the subscription itself.
        assert await receiver.receive_messages(max_message_count=1, max_wait_time=0.5) == []

    [settlement] = peer.settlements()
    assert settlement.outcome == "dead-lettered"
    assert settlement.dead_letter_reason == "UnknownEvent"
    assert settlement.dead_letter_description == "no handler for X"
    assert peer.message_count(TOPIC, "billing", dead_letter=True) == 1

    async with client.get_subscription_receiver(
        TOPIC, "billing", sub_queue=ServiceBusSubQueue.DEAD_LETTER
    ) as dead_letters:
        [dead] = await _receive(dead_letters, 1)
        assert dead.message_id == "d-1"
        assert _body(dead) == b"poison"
        assert dead.dead_letter_reason == "UnknownEvent"
        assert dead.dead_letter_error_description == "no handler for X"
        assert dead.application_properties is not None
        assert dead.application_properties[b"event"] == b"X"
        await dead_letters.complete_message(dead)

    assert peer.message_count(TOPIC, "billing", dead_letter=True) == 0


async def test_renew_lock_and_peek(peer: AmqpPeer, client: ServiceBusClient) -> None:
    await _send(client, ServiceBusMessage(b"one", message_id="p-1"))
    await _send(client, ServiceBusMessage(b"two", message_id="p-2"))

    async with client.get_subscription_receiver(TOPIC, "billing") as receiver:
        peeked = await receiver.peek_messages(max_message_count=10)
        assert [m.message_id for m in peeked] == ["p-1", "p-2"]
        assert [m.sequence_number for m in peeked] == [1, 2]

        # Peeking locks nothing: both are still delivered, for the first time.
        messages = await _receive(receiver, 2)
        assert [m.delivery_count for m in messages] == [0, 0]
        first = messages[0]
        assert first.locked_until_utc is not None
        before = first.locked_until_utc
        renewed = await receiver.renew_message_lock(first)
        assert renewed >= before
        assert first.locked_until_utc == renewed
        assert (renewed - before).total_seconds() < LOCK_DURATION_MS / 1000
        assert peer.renewals() == [first.lock_token]
        for message in messages:
            await receiver.complete_message(message)


async def test_a_lost_lock_fails_settlement_and_the_message_comes_back(
    peer: AmqpPeer, client: ServiceBusClient
) -> None:
    await _send(client, ServiceBusMessage(b"slow", message_id="x-1"))

    async with client.get_subscription_receiver(TOPIC, "billing") as receiver:
        [message] = await _receive(receiver, 1)
        token = message.lock_token
        assert token is not None
        peer.expire_locks()
        with pytest.raises(MessageLockLostError):
            await receiver.renew_message_lock(message)
        with pytest.raises(MessageLockLostError):
            await receiver.complete_message(message)
        [again] = await _receive(receiver, 1)
        assert again.delivery_count == 1
        await receiver.complete_message(again)

    assert peer.outcome(token) == "lock-lost"


async def test_sends_rejected_as_server_busy_are_retried(
    peer: AmqpPeer, client: ServiceBusClient
) -> None:
    peer.fail_next_sends(2)
    await _send(client, ServiceBusMessage(b"eventually", message_id="r-1"))

    assert peer.failures_injected == 2
    assert [m.message_id for m in peer.received(TOPIC)] == ["r-1"]


async def test_an_unknown_topic_is_an_error(peer: AmqpPeer) -> None:
    # The real service may raise a more specific subclass; adapters should catch the base.
    async with (
        ServiceBusClient.from_connection_string(peer.connection_string, retry_total=0) as client,
        client.get_topic_sender("no-such-topic") as sender,
    ):
        with pytest.raises(ServiceBusError):
            await sender.send_messages(ServiceBusMessage(b"lost"))
    assert peer.received() == []


def test_stopping_the_peer_closes_its_listener() -> None:
    with AmqpPeer() as amqp_peer:
        port = amqp_peer.port
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    assert not amqp_peer.running
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=5),
    ):
        pass


async def test_peek_reads_a_dead_letter_queue_in_sequence_order_from_where_asked(
    client: ServiceBusClient,
) -> None:
    await _send(client, *(ServiceBusMessage(f"m{n}".encode()) for n in range(3)))
    async with client.get_subscription_receiver(TOPIC, "billing") as receiver:
        messages = await _receive(receiver, 3)
        for message in reversed(messages):  # dead-lettered last message first
            await receiver.dead_letter_message(message, reason=f"r{message.sequence_number}")

    async with client.get_subscription_receiver(
        TOPIC, "billing", sub_queue=ServiceBusSubQueue.DEAD_LETTER
    ) as dead_letters:
        # As Service Bus does: by sequence number, whatever order they arrived in.
        peeked = await dead_letters.peek_messages(max_message_count=10, sequence_number=1)
        assert [m.sequence_number for m in peeked] == [1, 2, 3]
        assert [m.dead_letter_reason for m in peeked] == ["r1", "r2", "r3"]
        rest = await dead_letters.peek_messages(max_message_count=10, sequence_number=2)
        assert [_body(m) for m in rest] == [b"m1", b"m2"]
