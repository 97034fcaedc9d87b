"""Testing a consumer's handlers end to end on the in-memory broker.

This file is shown in full on the docs page "Testing" (docs/testing.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import attrs
import pytest

from brokers.memory import InMemoryMessageBroker
from mediator import (
    Backoff,
    DeadLetter,
    EventConsumer,
    EventEmitter,
    EventMap,
    MessageCodec,
    NotificationEvent,
    Retry,
    correlation_scope,
)
from mediator.testing import dead_letters, keep_handled, wait_for_event, wait_until
from mediator.transport import encode_message

# -- the application's code (normally imported from your package) ----------


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int
    total_cents: int


@attrs.frozen(kw_only=True)
class InvoiceSent(NotificationEvent):
    order_id: int


class Mailer(Protocol):
    async def send_invoice(self, order_id: int, total_cents: int) -> None: ...


def billing_events(mailer: Mailer) -> EventMap:
    events = EventMap()

    @events.bind(OrderPlaced)
    async def send_invoice(event: OrderPlaced) -> list[InvoiceSent]:
        await mailer.send_invoice(event.order_id, event.total_cents)
        return [InvoiceSent(order_id=event.order_id)]

    return events


# -- the tests ---------------------------------------------------------------

ORDERS = "shop:notification_event:OrderPlaced"


class FakeMailer:
    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []
        self.down = False

    async def send_invoice(self, order_id: int, total_cents: int) -> None:
        if self.down:
            raise ConnectionError("SMTP server is down")
        self.sent.append((order_id, total_cents))


@pytest.fixture
def broker() -> InMemoryMessageBroker:
    return InMemoryMessageBroker(channel_prefix="shop")


@pytest.fixture
def mailer() -> FakeMailer:
    return FakeMailer()


@pytest.fixture
async def consumer(
    broker: InMemoryMessageBroker, mailer: FakeMailer
) -> AsyncIterator[EventConsumer]:
    consumer = EventConsumer(
        broker=broker,
        event_map=billing_events(mailer),
        # The production default, without the waits between attempts.
        default_policy=Retry(attempts=3, backoff=Backoff(initial=0, jitter=0), then=DeadLetter()),
    )
    keep_handled(consumer)  # wait_for_event also finds what was handled before it
    await consumer.subscribe(ORDERS)
    async with consumer:  # the subscription is live from here
        yield consumer


async def publish(broker: InMemoryMessageBroker, event: NotificationEvent) -> None:
    await EventEmitter(message_broker=broker).emit(event)


async def test_an_order_is_invoiced(
    broker: InMemoryMessageBroker, mailer: FakeMailer, consumer: EventConsumer
) -> None:
    with correlation_scope("checkout-1"):
        await publish(broker, OrderPlaced(order_id=1, total_cents=4200))

    handled = await wait_for_event(consumer, OrderPlaced)

    assert handled.order_id == 1
    assert mailer.sent == [(1, 4200)]
    placed, invoiced = broker.messages  # everything published, oldest first
    assert invoiced.message_name == "InvoiceSent"
    assert invoiced.payload["order_id"] == 1
    assert invoiced.headers == {
        "correlation_id": "checkout-1",
        "causation_id": str(placed.message_id),
    }


async def test_a_failing_handler_dead_letters_the_order(
    broker: InMemoryMessageBroker, mailer: FakeMailer, consumer: EventConsumer
) -> None:
    mailer.down = True
    await publish(broker, OrderPlaced(order_id=2, total_cents=100))

    stats = await wait_until(consumer, lambda stats: stats.dead_lettered >= 1)

    assert stats.retried == 2  # three calls in all
    assert stats.dead_lettered_by_reason == {"handler_failed": 1}
    [dead] = await dead_letters(broker)
    assert dead.reason == "handler_failed"
    assert "SMTP server is down" in dead.description
    assert [m.message_name for m in broker.messages] == ["OrderPlaced"]  # no InvoiceSent


def envelope(event: NotificationEvent) -> bytes:
    return encode_message(MessageCodec.to_message(event))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", "not_json"),
        (
            envelope(OrderPlaced(order_id=9, total_cents=5)).replace(
                b'"total_cents":5', b'"total_cents":"5"'
            ),
            "invalid_payload",
        ),
    ],
)
async def test_bad_input_is_dead_lettered_and_the_next_order_handled(
    broker: InMemoryMessageBroker,
    mailer: FakeMailer,
    consumer: EventConsumer,
    data: bytes,
    reason: str,
) -> None:
    await broker.publish_raw(ORDERS, data)
    await publish(broker, OrderPlaced(order_id=3, total_cents=300))

    stats = await wait_until(consumer, lambda s: s.handled >= 1 and s.dead_lettered >= 1)

    assert stats.dead_lettered_by_reason == {reason: 1}
    [dead] = await dead_letters(broker, reason=reason)
    assert dead.data == data
    assert mailer.sent == [(3, 300)]
