"""The toy transport of the "Writing a transport" page (examples/toy_transport.py),
under a real EventConsumer: the kit's reconnection, settlement, dead-letter
records and error mapping, through a transport of a hundred lines."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import attrs
import pytest

from examples.toy_transport import ToyBroker, ToyServer
from mediator import EventConsumer, EventEmitter, EventMap, NotificationEvent
from mediator.testing import wait_until
from mediator.transport import (
    CredentialError,
    DeadLetterRecord,
    SubscriptionLostError,
    TransportError,
)

ORDERS = "shop:notification_event:Order*"


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class NewsletterSent(NotificationEvent):
    issue: int


class Ledger:
    """Which consumer handled which order; waits for a number of entries."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, int]] = []
        self._changed = asyncio.Condition()

    def billing(self, who: str) -> EventMap:
        events = EventMap()

        @events.bind(OrderPlaced)
        async def bill(event: OrderPlaced) -> None:
            async with self._changed:
                self.entries.append((who, event.order_id))
                self._changed.notify_all()

        return events

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5), self._changed:
            await self._changed.wait_for(lambda: len(self.entries) >= count)

    def orders(self, who: str) -> list[int]:
        return [order_id for name, order_id in self.entries if name == who]


@pytest.fixture
def server() -> ToyServer:
    return ToyServer()


@pytest.fixture
async def broker(server: ToyServer) -> AsyncIterator[ToyBroker]:
    async with ToyBroker(server, channel_prefix="shop") as broker:
        yield broker


async def test_a_matching_message_is_handled_and_the_glob_filters_out_the_rest(
    broker: ToyBroker,
) -> None:
    ledger = Ledger()
    consumer = EventConsumer(broker=broker, event_map=ledger.billing("billing"))
    await consumer.subscribe(ORDERS)
    async with consumer:
        publisher = EventEmitter(message_broker=broker)
        await publisher.emit(NewsletterSent(issue=1))  # the server delivers it; the glob drops it
        await publisher.emit(OrderPlaced(order_id=1))
        await ledger.wait_for(1)
    assert ledger.entries == [("billing", 1)]
    assert consumer.stats.received == 1
    assert consumer.stats.handled == 1


async def test_members_of_a_group_share_its_messages_and_others_get_every_one(
    broker: ToyBroker,
) -> None:
    ledger = Ledger()
    consumers = {who: EventConsumer(broker=broker, event_map=ledger.billing(who)) for who in "abc"}
    await consumers["a"].subscribe(ORDERS, group="billing")
    await consumers["b"].subscribe(ORDERS, group="billing")
    await consumers["c"].subscribe(ORDERS)
    for consumer in consumers.values():
        await consumer.start()
    try:
        await EventEmitter(message_broker=broker).emit_all(
            [OrderPlaced(order_id=n) for n in range(6)]
        )
        await ledger.wait_for(12)
    finally:
        for consumer in consumers.values():
            await consumer.stop()
    assert sorted(ledger.orders("a") + ledger.orders("b")) == list(range(6))
    assert ledger.orders("c") == list(range(6))


# --8<-- [start:reconnect]
async def test_a_broken_connection_is_logged_and_the_subscription_comes_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    billed: list[int] = []
    events = EventMap()

    @events.bind(OrderPlaced)
    async def bill(event: OrderPlaced) -> None:
        billed.append(event.order_id)

    server = ToyServer()
    async with ToyBroker(server, channel_prefix="shop") as broker:
        publisher = EventEmitter(message_broker=broker)
        consumer = EventConsumer(broker=broker, event_map=events)
        await consumer.subscribe("shop:notification_event:Order*", group="billing")
        async with consumer:
            await publisher.emit(OrderPlaced(order_id=1))
            await wait_until(consumer, lambda stats: stats.handled >= 1)

            server.break_connection()  # every link drops; the group's queue stays
            await publisher.emit(OrderPlaced(order_id=2))  # waits there for the reconnect
            await wait_until(consumer, lambda stats: stats.handled >= 2)
            assert consumer.running

    assert billed == [1, 2]
    lines = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any(line.startswith("lost <ToySubscription") for line in lines), lines
    assert any("is back after" in line for line in lines), lines


# --8<-- [end:reconnect]


async def test_bad_input_is_dead_lettered_with_its_reason_and_the_next_message_is_handled(
    server: ToyServer, broker: ToyBroker
) -> None:
    ledger = Ledger()
    consumer = EventConsumer(broker=broker, event_map=ledger.billing("billing"))
    await consumer.subscribe(ORDERS)
    bad = b'{"message_type": "notification_event", '  # cut short: not JSON
    async with consumer:
        link = await server.connect()
        link.publish([("shop:notification_event:OrderPlaced", bad)])
        await EventEmitter(message_broker=broker).emit(OrderPlaced(order_id=7))
        await ledger.wait_for(1)
        await wait_until(consumer, lambda stats: stats.dead_lettered >= 1)
    assert ledger.entries == [("billing", 7)]
    assert consumer.stats.dead_lettered_by_reason == {"not_json": 1}
    [record] = await broker.dead_letters()
    assert isinstance(record, DeadLetterRecord)
    assert record.channel == "shop:notification_event:OrderPlaced"
    assert record.reason == "not_json"
    assert record.data == bad
    assert record.size == len(bad)
    assert record.sha256 == hashlib.sha256(bad).hexdigest()
    assert not record.truncated


async def test_a_revoked_credential_stops_the_consumer_with_a_transport_error(
    server: ToyServer, broker: ToyBroker
) -> None:
    consumer = EventConsumer(broker=broker, event_map=Ledger().billing("billing"))
    await consumer.subscribe(ORDERS)
    await consumer.start()
    running = asyncio.create_task(consumer.run())
    server.revoke_access()
    with pytest.raises(CredentialError, match="revoked the credential") as failure:
        async with asyncio.timeout(5):
            await running
    assert isinstance(failure.value, TransportError)
    assert not consumer.running


async def test_a_subscription_closed_under_the_consumer_stops_it(broker: ToyBroker) -> None:
    consumer = EventConsumer(broker=broker, event_map=Ledger().billing("billing"))
    await consumer.subscribe(ORDERS)
    await consumer.start()
    running = asyncio.create_task(consumer.run())
    await broker.stop()  # the wrong order: the consumer should have been stopped first
    with pytest.raises(SubscriptionLostError, match="ended while the consumer was running"):
        async with asyncio.timeout(5):
            await running
    assert not consumer.running


async def test_subscribing_without_a_credential_raises_a_credential_error(
    server: ToyServer, broker: ToyBroker
) -> None:
    server.revoke_access()
    with pytest.raises(CredentialError) as failure:
        await broker.subscribe(ORDERS)
    assert isinstance(failure.value.__cause__, PermissionError)
