"""The Azure Service Bus adapter through the real SDK and the loopback AMQP peer:
what an operator sees on the wire, batching, size limits, settlement, lock
handling and failures. Token validation cannot be emulated by the peer; the
credential errors are tested at the SDK's object boundary instead."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import attrs
import orjson
import pytest

import mediator

try:
    from azure.servicebus.aio import ServiceBusClient
    from azure.servicebus.exceptions import ServiceBusAuthenticationError

    from brokers.azure import AzureMessageBroker, CredentialError
    from tests.azure_peer import AmqpPeer
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise
    pytest.skip(f"azure-servicebus or python-qpid-proton missing: {exc}", allow_module_level=True)

from mediator import (
    Backoff,
    DeadLetter,
    EventConsumer,
    EventEmitter,
    EventMap,
    MessageCodec,
    MessageTooLargeError,
    NotificationEvent,
    PublishError,
    Retry,
    correlation_scope,
)
from mediator.testing import wait_until
from mediator.transport import encode_message

TOPIC = "orders"


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int
    note: str = ""


@pytest.fixture
def peer() -> Iterator[AmqpPeer]:
    with AmqpPeer() as amqp_peer:
        amqp_peer.add_subscription(TOPIC, "billing")
        amqp_peer.add_subscription(TOPIC, "audit")
        yield amqp_peer


@pytest.fixture
async def client(peer: AmqpPeer) -> AsyncIterator[ServiceBusClient]:
    async with ServiceBusClient.from_connection_string(
        peer.connection_string, retry_total=0, retry_backoff_factor=0.01
    ) as sb_client:
        yield sb_client


@pytest.fixture
async def broker(client: ServiceBusClient) -> AsyncIterator[AzureMessageBroker]:
    broker = AzureMessageBroker(
        client,
        TOPIC,
        timeout=15,
        max_wait_time=1.0,
        # The SDK polls its socket at this interval; a loopback peer answers at once.
        # Without keep-alive pings, closing the sender need not wait for one.
        sender_options={"socket_timeout": 0.05, "keep_alive": 0},
        receiver_options={"socket_timeout": 0.05},
    )
    yield broker
    await broker.stop()


async def test_an_operator_sees_the_envelope_and_filterable_properties(
    peer: AmqpPeer, broker: AzureMessageBroker
) -> None:
    event = OrderPlaced(order_id=7)
    with correlation_scope("checkout-7"):
        await EventEmitter(message_broker=broker).emit(event)
    [sent] = peer.received(TOPIC)
    assert sent.message_id == str(event.event_id)
    assert sent.subject == "OrderPlaced"
    assert sent.content_type == "application/json"
    assert sent.correlation_id == "checkout-7"
    properties = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in sent.application_properties.items()
    }
    assert properties == {
        "message_type": "notification_event",
        "message_name": "OrderPlaced",
        "channel": "orders:notification_event:OrderPlaced",
    }
    envelope = orjson.loads(sent.body)
    assert envelope == orjson.loads(
        encode_message(MessageCodec.to_message(event, {"correlation_id": "checkout-7"}))
    )


async def test_one_long_lived_sender_serves_every_publish(
    client: ServiceBusClient, broker: AzureMessageBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    get_sender = client.get_topic_sender

    def counting(topic_name: str, **kwargs: Any) -> Any:
        opened.append(topic_name)
        return get_sender(topic_name, **kwargs)

    monkeypatch.setattr(client, "get_topic_sender", counting)
    emitter = EventEmitter(message_broker=broker)
    for n in range(3):
        await emitter.emit(OrderPlaced(order_id=n))
    assert opened == [TOPIC]


async def test_a_batch_too_big_for_one_transfer_is_split_in_order(
    peer: AmqpPeer, broker: AzureMessageBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = "x" * 100_000  # three of these exceed the peer's 256 KiB batch limit
    events = [OrderPlaced(order_id=n, note=big) for n in range(5)]
    sender = broker._publisher.sender()
    transfers: list[int] = []
    send = sender.send_messages

    async def counting(message: Any, **kwargs: Any) -> None:
        transfers.append(len(message) if hasattr(message, "__len__") else 1)
        await send(message, **kwargs)

    monkeypatch.setattr(sender, "send_messages", counting)
    await EventEmitter(message_broker=broker).emit_all(events)
    assert len(transfers) > 1
    assert sum(transfers) == 5
    assert [orjson.loads(m.body)["payload"]["order_id"] for m in peer.received(TOPIC)] == [
        0,
        1,
        2,
        3,
        4,
    ]


async def test_a_single_message_over_the_limit_is_a_clear_error(
    peer: AmqpPeer, broker: AzureMessageBroker
) -> None:
    huge = OrderPlaced(order_id=1, note="x" * 300_000)
    with pytest.raises(MessageTooLargeError, match="does not fit in one Service Bus message"):
        await EventEmitter(message_broker=broker).emit(huge)
    with pytest.raises(MessageTooLargeError):
        await EventEmitter(message_broker=broker).emit_all([OrderPlaced(order_id=2), huge])
    assert peer.received(TOPIC) == []


async def test_transient_send_failures_are_retried(
    peer: AmqpPeer, client: ServiceBusClient
) -> None:
    broker = AzureMessageBroker(client, TOPIC, publish_attempts=3)
    peer.fail_next_sends(2)
    await EventEmitter(message_broker=broker).emit(OrderPlaced(order_id=1))
    assert len(peer.received(TOPIC)) == 1
    peer.fail_next_sends(5)
    with pytest.raises(PublishError, match="after 3 attempts"):
        await EventEmitter(message_broker=broker).emit(OrderPlaced(order_id=2))
    await broker.stop()


async def test_a_send_unanswered_on_a_silent_connection_is_retried_on_a_new_one(
    peer: AmqpPeer,
) -> None:
    from tests.tcp_proxy import SilencingProxy

    async with (
        SilencingProxy("127.0.0.1", peer.port) as proxy,
        ServiceBusClient.from_connection_string(
            peer.connection_string_via(proxy.port), retry_total=0
        ) as proxied,
    ):
        broker = AzureMessageBroker(proxied, TOPIC, timeout=1, sender_options={"keep_alive": 0})
        emitter = EventEmitter(message_broker=broker)
        await emitter.emit(OrderPlaced(order_id=1))
        assert proxy.silence() == 1
        # The first attempt times out on the silent connection; the next one
        # goes out on a new connection (through the proxy, which forwards it).
        await emitter.emit(OrderPlaced(order_id=2))
        assert proxy.connections == 1
        await broker.stop()
    sent = [orjson.loads(m.body)["payload"]["order_id"] for m in peer.received(TOPIC)]
    assert sent == [1, 2]


async def test_an_idle_receiver_checks_its_connection_and_keeps_it(
    client: ServiceBusClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from azure.servicebus.aio import ServiceBusReceiver

    peek = ServiceBusReceiver.peek_messages
    answered = asyncio.Event()
    peeks: list[Any] = []

    async def counting(self: ServiceBusReceiver, *args: Any, **kwargs: Any) -> Any:
        result = await peek(self, *args, **kwargs)
        peeks.append(result)
        if len(peeks) >= 3:
            answered.set()
        return result

    monkeypatch.setattr(ServiceBusReceiver, "peek_messages", counting)
    broker = AzureMessageBroker(
        client,
        TOPIC,
        max_wait_time=0.1,
        silence_timeout=0.2,
        receiver_options={"socket_timeout": 0.05},
    )
    subscription = await broker.subscribe(f"{TOPIC}:*", group="billing")
    deliveries = aiter(subscription)
    reading = asyncio.ensure_future(anext(deliveries))
    try:
        async with asyncio.timeout(15):
            await answered.wait()
        assert subscription.connected
    finally:
        reading.cancel()
        await broker.stop()
    assert peeks[:3] == [[], [], []], "a peek past the last message finds nothing"
    assert not any("went silent" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="silence_timeout"):
        AzureMessageBroker(client, TOPIC, silence_timeout=0)


async def consume(
    broker: AzureMessageBroker, events: EventMap, until: Any, **options: Any
) -> EventConsumer:
    consumer = EventConsumer(broker=broker, event_map=events, **options)
    await consumer.subscribe(f"{TOPIC}:notification_event:*", group="billing")
    async with consumer:
        await EventEmitter(message_broker=broker).emit(OrderPlaced(order_id=1))
        await wait_until(consumer, until, timeout=15)
    return consumer


async def test_success_completes_the_message(peer: AmqpPeer, broker: AzureMessageBroker) -> None:
    events = EventMap()

    @events.bind(OrderPlaced)
    async def ok(event: OrderPlaced) -> None:
        return None

    await consume(broker, events, lambda s: s.handled >= 1)
    assert [s.outcome for s in peer.settlements()] == ["completed"]
    assert peer.message_count(TOPIC, "billing") == 0


async def test_a_failing_handler_is_dead_lettered_with_reason_and_description(
    peer: AmqpPeer, broker: AzureMessageBroker
) -> None:
    events = EventMap()

    @events.bind(
        OrderPlaced, policy=Retry(attempts=2, backoff=Backoff(initial=0), then=DeadLetter())
    )
    async def broken(event: OrderPlaced) -> None:
        raise ValueError("tax service refused")

    await consume(broker, events, lambda s: s.dead_lettered >= 1)
    [settlement] = peer.settlements()
    assert settlement.outcome == "dead-lettered"
    assert settlement.dead_letter_reason == "handler_failed"
    assert "tax service refused" in (settlement.dead_letter_description or "")
    assert peer.message_count(TOPIC, "billing", dead_letter=True) == 1


async def test_a_released_message_is_abandoned_and_comes_back_counted(
    peer: AmqpPeer, broker: AzureMessageBroker
) -> None:
    counts: list[int] = []
    events = EventMap()
    emitter_broken = True

    @events.bind(OrderPlaced)
    async def flaky_follow_up(event: OrderPlaced) -> list[OrderPlaced]:
        # The handler succeeds; publishing its follow-up fails once, so the
        # consumer releases (abandons) the message and it is delivered again.
        from mediator import current_message

        message = current_message()
        assert message is not None
        counts.append(len(counts) + 1)
        return [] if not emitter_broken or len(counts) > 1 else [OrderPlaced(order_id=-1)]

    original = broker.send_messages

    async def failing_once(messages: Any) -> None:
        nonlocal emitter_broken
        if emitter_broken:
            emitter_broken = False
            raise PublishError("broker down for a moment")
        await original(messages)

    broker.send_messages = failing_once  # type: ignore[method-assign]
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe(f"{TOPIC}:notification_event:*", group="billing")
    async with consumer:
        await original([MessageCodec.to_message(OrderPlaced(order_id=1))])
        await wait_until(consumer, lambda s: s.handled >= 1, timeout=15)
    assert [s.outcome for s in peer.settlements()] == ["abandoned", "completed"]
    assert consumer.stats.released == 1


async def test_a_lost_lock_is_logged_and_left_to_redelivery(
    peer: AmqpPeer, broker: AzureMessageBroker, caplog: pytest.LogCaptureFixture
) -> None:
    entered = asyncio.Event()
    gate = asyncio.Event()
    seen: list[int] = []
    events = EventMap()

    @events.bind(OrderPlaced)
    async def slow(event: OrderPlaced) -> None:
        seen.append(event.order_id)
        if len(seen) == 1:
            entered.set()
            await gate.wait()

    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe(f"{TOPIC}:notification_event:*", group="billing")
    async with consumer:
        await EventEmitter(message_broker=broker).emit(OrderPlaced(order_id=3))
        await asyncio.wait_for(entered.wait(), timeout=15)
        peer.expire_locks()  # the lock runs out while the handler works
        gate.set()
        await wait_until(consumer, lambda s: s.handled >= 2, timeout=15)
    assert seen == [3, 3]  # delivered again after the lost lock
    assert any("lost the lock" in r.getMessage() for r in caplog.records)


async def test_a_lock_is_renewed_while_its_handler_runs(
    peer: AmqpPeer, broker: AzureMessageBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure.servicebus.aio import ServiceBusReceiver

    from brokers.azure import AzureSubscription

    # The peer locks for 30 s: renew at once, and look often, so that the
    # test need not wait out a real lock.
    monkeypatch.setattr(AzureSubscription, "renew_within", 60.0)
    monkeypatch.setattr(AzureSubscription, "renew_check", 0.01)
    renew = ServiceBusReceiver.renew_message_lock
    renewed = asyncio.Event()

    async def noting(self: ServiceBusReceiver, message: Any, **kwargs: Any) -> Any:
        result = await renew(self, message, **kwargs)
        renewed.set()
        return result

    monkeypatch.setattr(ServiceBusReceiver, "renew_message_lock", noting)
    events = EventMap()

    @events.bind(OrderPlaced)
    async def long_running(event: OrderPlaced) -> None:
        async with asyncio.timeout(15):
            await renewed.wait()

    await consume(broker, events, lambda s: s.handled >= 1)
    [settlement] = peer.settlements()
    assert settlement.outcome == "completed"
    assert settlement.lock_token in peer.renewals()


async def test_subscribing_needs_a_subscription_and_one_pattern_each(
    broker: AzureMessageBroker,
) -> None:
    with pytest.raises(ValueError, match="delivers from topic subscriptions"):
        await broker.subscribe("orders:*")
    first = await broker.subscribe("orders:notification_event:*", group="billing")
    with pytest.raises(ValueError, match="compete for its messages"):
        await broker.subscribe("orders:ecst_event:*", group="billing")
    await first.close()


async def test_a_refused_credential_says_so() -> None:
    class RefusingSender:
        # Opening the link is where Service Bus checks the token.
        async def create_message_batch(self) -> None:
            raise ServiceBusAuthenticationError(message="Unauthorized: token expired")

        async def close(self) -> None:
            return None

    class RefusingClient:
        def get_topic_sender(self, topic_name: str, **kwargs: Any) -> RefusingSender:
            return RefusingSender()

    broker = AzureMessageBroker(RefusingClient(), TOPIC)  # type: ignore[arg-type]
    with pytest.raises(CredentialError, match="refused the credential") as caught:
        await EventEmitter(message_broker=broker).emit(OrderPlaced(order_id=1))
    assert "expired" in str(caught.value)
    # The library's own class, so one `except CredentialError` serves every broker.
    assert CredentialError is mediator.CredentialError


async def test_stop_settles_in_flight_work_and_gives_back_what_was_never_started(
    peer: AmqpPeer, broker: AzureMessageBroker
) -> None:
    entered = asyncio.Event()
    gate = asyncio.Event()
    handled: list[int] = []
    events = EventMap()

    @events.bind(OrderPlaced)
    async def slow(event: OrderPlaced) -> None:
        entered.set()
        await gate.wait()
        handled.append(event.order_id)

    consumer = EventConsumer(broker=broker, event_map=events, max_concurrency=1)
    await consumer.subscribe(f"{TOPIC}:notification_event:*", group="billing")
    await consumer.start()
    await EventEmitter(message_broker=broker).emit_all([OrderPlaced(order_id=n) for n in range(3)])
    await asyncio.wait_for(entered.wait(), timeout=15)
    stopping = asyncio.create_task(consumer.stop())
    done, _ = await asyncio.wait({stopping}, timeout=0.1)
    assert not done, "stop() waits for the handler in flight"
    gate.set()
    await asyncio.wait_for(stopping, timeout=15)
    outcomes = [s.outcome for s in peer.settlements()]
    assert handled == [0]
    assert outcomes.count("completed") == 1  # settled through the still-open receiver
    # The two received but never started are back in the subscription, unlocked.
    assert peer.message_count(TOPIC, "billing") == 2
    assert outcomes.count("abandoned") == 2  # the SDK may also release what it buffered


async def test_a_missing_subscription_is_reported_not_retried() -> None:
    from azure.servicebus.exceptions import MessagingEntityNotFoundError

    from brokers.azure import EntityNotFoundError

    class MissingReceiver:
        # Attaching to an entity that does not exist is where Service Bus says so.
        async def __aenter__(self) -> None:
            raise MessagingEntityNotFoundError(message="The messaging entity could not be found")

        async def close(self) -> None:
            return None

    class Client:
        def get_subscription_receiver(self, *args: Any, **kwargs: Any) -> MissingReceiver:
            return MissingReceiver()

    broker = AzureMessageBroker(Client(), TOPIC)  # type: ignore[arg-type]
    with pytest.raises(
        EntityNotFoundError, match=r"orders/Subscriptions/nobody failed: .*does not exist"
    ):
        await broker.subscribe("orders:*", group="nobody")
    assert EntityNotFoundError is mediator.EntityNotFoundError


async def test_a_failed_receive_reopens_the_receiver_and_nothing_is_lost(
    peer: AmqpPeer,
    broker: AzureMessageBroker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from azure.servicebus.aio import ServiceBusReceiver
    from azure.servicebus.exceptions import ServiceBusConnectionError

    receive = ServiceBusReceiver.receive_messages
    failures = [ServiceBusConnectionError(message="connection reset by the test")]

    async def failing_once(self: ServiceBusReceiver, *args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return await receive(self, *args, **kwargs)

    monkeypatch.setattr(ServiceBusReceiver, "receive_messages", failing_once)
    handled: list[int] = []
    events = EventMap()

    @events.bind(OrderPlaced)
    async def record(event: OrderPlaced) -> None:
        handled.append(event.order_id)

    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe(f"{TOPIC}:notification_event:*", group="billing")
    async with consumer:
        await EventEmitter(message_broker=broker).emit_all(
            [OrderPlaced(order_id=n) for n in (1, 2)]
        )
        await wait_until(consumer, lambda s: s.handled >= 2, timeout=15)
    assert sorted(handled) == [1, 2]
    assert failures == []
    assert any("reconnecting" in r.getMessage() for r in caplog.records)
    assert any("is back after" in r.getMessage() for r in caplog.records)


PATTERN = f"{TOPIC}:notification_event:*"


async def test_a_delivery_held_across_a_reopen_never_settles_another_message(
    peer: AmqpPeer,
    broker: AzureMessageBroker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Order 1 is in its handler when the receiver is reopened; order 2 comes
    # through the new receiver. Settling order 1 must not go through the new
    # receiver, where its delivery id names another message.
    from azure.servicebus.aio import ServiceBusReceiver
    from azure.servicebus.exceptions import ServiceBusConnectionError

    receive = ServiceBusReceiver.receive_messages
    failures: list[Exception] = []
    failed = asyncio.Event()

    async def failing_on_demand(self: ServiceBusReceiver, *args: Any, **kwargs: Any) -> Any:
        if failures:
            failed.set()
            raise failures.pop()
        return await receive(self, *args, **kwargs)

    monkeypatch.setattr(ServiceBusReceiver, "receive_messages", failing_on_demand)
    entered = asyncio.Event()
    gate = asyncio.Event()
    handled: list[int] = []
    events = EventMap()

    @events.bind(OrderPlaced)
    async def record(event: OrderPlaced) -> None:
        if event.order_id == 1 and not entered.is_set():
            entered.set()
            await gate.wait()
        handled.append(event.order_id)

    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe(PATTERN, group="billing")
    emitter = EventEmitter(message_broker=broker)
    async with consumer:
        await emitter.emit(OrderPlaced(order_id=1))
        async with asyncio.timeout(15):
            await entered.wait()
            failures.append(ServiceBusConnectionError(message="connection reset by the test"))
            await failed.wait()
        await emitter.emit(OrderPlaced(order_id=2))
        await wait_until(consumer, lambda s: s.handled >= 1, timeout=15)
        gate.set()
        await wait_until(consumer, lambda s: s.handled >= 2, timeout=15)
        # Its receiver is gone, so its lock runs out and it comes back.
        peer.expire_locks()
        await wait_until(consumer, lambda s: s.handled >= 3, timeout=15)
    assert handled == [2, 1, 1]
    assert [s.outcome for s in peer.settlements()] == ["completed", "completed"]
    assert peer.message_count(TOPIC, "billing") == 0
    assert any("will be delivered again" in r.getMessage() for r in caplog.records)


async def test_settling_after_the_receiver_closed_is_logged_not_raised(
    peer: AmqpPeer,
    client: ServiceBusClient,
    broker: AzureMessageBroker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    subscription = await broker.subscribe(PATTERN, group="billing")
    await EventEmitter(message_broker=broker).emit(OrderPlaced(order_id=1))
    async with asyncio.timeout(15):
        delivery = await anext(aiter(subscription))
    await client.close()  # an application that closes its client before its consumers
    await delivery.ack()
    assert any("will be delivered again" in r.getMessage() for r in caplog.records)
    assert peer.message_count(TOPIC, "billing") == 1


async def test_stopping_the_broker_closes_its_subscriptions_together(
    broker: AzureMessageBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure.servicebus.aio import ServiceBusReceiver

    close = ServiceBusReceiver.close
    started: list[ServiceBusReceiver] = []
    both_started = asyncio.Event()
    overlapped: list[bool] = []

    async def close_together(self: ServiceBusReceiver) -> None:
        # Closing one at a time, the first close would wait here alone.
        started.append(self)
        if len(started) == 2:
            both_started.set()
        try:
            async with asyncio.timeout(5):
                await both_started.wait()
            overlapped.append(True)
        except TimeoutError:
            overlapped.append(False)
        await close(self)

    monkeypatch.setattr(ServiceBusReceiver, "close", close_together)
    await broker.subscribe(PATTERN, group="billing")
    await broker.subscribe(PATTERN, group="audit")
    await broker.stop()
    assert overlapped == [True, True]


async def test_log_lines_quote_at_most_a_kib_of_a_message(
    client: ServiceBusClient, broker: AzureMessageBroker, caplog: pytest.LogCaptureFixture
) -> None:
    from azure.servicebus import ServiceBusMessage

    caplog.set_level(logging.DEBUG, logger="mediator")
    huge = "x" * 100_000
    async with client.get_topic_sender(TOPIC) as sender:
        # Outside the pattern: completed and logged, channel and all.
        await sender.send_messages(
            ServiceBusMessage(b"{}", application_properties={"channel": f"elsewhere:{huge}"})
        )
    events = EventMap()

    @events.bind(OrderPlaced)
    async def ok(event: OrderPlaced) -> None:
        return None

    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe(PATTERN, group="billing")
    async with consumer:
        await EventEmitter(message_broker=broker).emit(OrderPlaced(order_id=1))
        await wait_until(consumer, lambda s: s.handled >= 1, timeout=15)
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("mediator")]
    assert any("elsewhere:" in line for line in ours)
    assert max(len(line) for line in ours) <= 4096


async def test_a_dead_letter_description_sent_to_service_bus_is_bounded(
    peer: AmqpPeer, broker: AzureMessageBroker
) -> None:
    subscription = await broker.subscribe(PATTERN, group="billing")
    await EventEmitter(message_broker=broker).emit(OrderPlaced(order_id=1))
    async with asyncio.timeout(15):
        delivery = await anext(aiter(subscription))
    await delivery.dead_letter("handler_failed", "y" * 100_000)
    [settlement] = peer.settlements()
    assert settlement.outcome == "dead-lettered"
    assert settlement.dead_letter_description is not None
    assert settlement.dead_letter_description.startswith("yyy")
    assert len(settlement.dead_letter_description) <= 4096  # Service Bus's own limit


async def test_dead_letters_reads_the_sub_queue_back_oldest_first(
    peer: AmqpPeer, broker: AzureMessageBroker
) -> None:
    events = EventMap()

    @events.bind(OrderPlaced, policy=DeadLetter())
    async def refuse(event: OrderPlaced) -> None:
        raise ValueError(f"order {event.order_id} refused")

    consumer = EventConsumer(broker=broker, event_map=events, max_concurrency=1)
    await consumer.subscribe(PATTERN, group="billing")
    async with consumer:
        await EventEmitter(message_broker=broker).emit_all(
            [OrderPlaced(order_id=1), OrderPlaced(order_id=2)]
        )
        await wait_until(consumer, lambda s: s.dead_lettered >= 2, timeout=15)
    records = await broker.dead_letters("billing")
    assert [r.reason for r in records] == ["handler_failed", "handler_failed"]
    assert ["order 1 refused" in records[0].description, "order 2" in records[1].description] == [
        True,
        True,
    ]
    assert [orjson.loads(r.data)["payload"]["order_id"] for r in records] == [1, 2]
    assert {r.channel for r in records} == {f"{TOPIC}:notification_event:OrderPlaced"}
    assert all(r.delivery_count == 1 and not r.truncated for r in records)
    # Reading them leaves them where they are.
    assert len(await broker.dead_letters("billing")) == 2
    assert peer.message_count(TOPIC, "billing", dead_letter=True) == 2
    with pytest.raises(ValueError, match="dead_letters\\(group="):
        await broker.dead_letters()


async def test_a_subscription_the_namespace_does_not_have_stops_the_consumer_saying_so(
    broker: AzureMessageBroker,
) -> None:
    from azure.servicebus.exceptions import ServiceBusError

    events = EventMap()

    @events.bind(OrderPlaced)
    async def ok(event: OrderPlaced) -> None:
        return None

    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe(PATTERN, group="nobody")
    # Service Bus detaches the link once it is open; the first receive says why.
    with pytest.raises(
        mediator.EntityNotFoundError, match=r"orders/Subscriptions/nobody failed: .*does not exist"
    ) as caught:
        await asyncio.wait_for(consumer.run(), timeout=15)
    assert isinstance(caught.value.__cause__, ServiceBusError)
    assert not consumer.running
