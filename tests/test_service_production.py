"""The production path in one Service: a command writes through the outbox,
the service's relay publishes, a subscription with an inbox handles each
message once in the transaction of its writes; and readiness that is true."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
from sqlalchemy import text

from brokers.memory import InMemoryMessageBroker
from mediator import (
    EventMap,
    MessageTooLargeError,
    NotificationEvent,
    Request,
    RequestHandler,
    RequestMap,
    Service,
)
from mediator._operations.health import HealthServer
from mediator.outbox import Inbox, current_session
from mediator.testing import wait_until
from mediator.transport import encode_message
from tests.outbox_support import KINDS, Database, open_database, relayed


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class PlaceOrder(Request[int]):
    order_id: int


@pytest.fixture(params=KINDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(request.param, tmp_path)
    try:
        yield database
    finally:
        await database.close()


async def shop(db: Database, broker: InMemoryMessageBroker, **options: object) -> Service:
    """Orders written with their event through the outbox; billing (with an
    inbox) writes one payment per order in the delivery's transaction."""
    orders = await db.table("orders", "id INTEGER PRIMARY KEY")
    payments = await db.table("payments", "order_id INTEGER NOT NULL")

    class PlaceOrderHandler(RequestHandler[PlaceOrder, int]):
        async def handle(self, request: PlaceOrder) -> int:
            await current_session().execute(
                text(f"INSERT INTO {orders} (id) VALUES (:id)"), {"id": request.order_id}
            )
            self.events.append(OrderPlaced(order_id=request.order_id))
            return request.order_id

    requests = RequestMap()
    requests.bind(PlaceOrder, PlaceOrderHandler)
    events = EventMap()

    @events.bind(OrderPlaced)
    async def charge(event: OrderPlaced) -> None:
        await current_session().execute(
            text(f"INSERT INTO {payments} (order_id) VALUES (:id)"), {"id": event.order_id}
        )

    service = Service(
        broker,
        name="shop",
        request_map=requests,
        event_map=events,
        outbox=db.outbox,
        **options,  # type: ignore[arg-type]
    )
    service.subscribe("{prefix}:notification_event:*", group="billing")
    return service


async def test_a_command_goes_through_outbox_relay_broker_and_inbox_once(db: Database) -> None:
    broker = InMemoryMessageBroker(channel_prefix=db.prefix)
    service = await shop(db, broker, inbox=True)

    async with service:
        [consumer] = service.consumers
        assert await service.mediator.send(PlaceOrder(order_id=1)) == 1
        assert service.relay is not None
        await relayed(service.relay, lambda s: s.published >= 1)
        await wait_until(consumer, lambda s: s.handled >= 1)
        # The same message again, as an at-least-once transport may deliver it.
        [published] = broker.messages
        await broker.publish_raw(
            f"{db.prefix}:notification_event:OrderPlaced", encode_message(published)
        )
        await wait_until(consumer, lambda s: s.duplicates >= 1)
        stats = service.stats()

    assert await db.scalar(f"SELECT count(*) FROM {db.prefix}_payments") == 1
    assert stats["relay"]["published"] == 1
    assert stats["relay"]["running"] is True
    assert stats["consumers"][0]["subscriptions"] == [
        {
            "pattern": f"{db.prefix}:notification_event:*",
            "group": "billing",
            "inbox": "shop:billing",
        }
    ]
    assert await Inbox(db.outbox, "shop:billing").seen(published.message_id)


async def test_a_refused_command_leaves_neither_its_row_nor_its_event(db: Database) -> None:
    broker = InMemoryMessageBroker(channel_prefix=db.prefix)
    service = await shop(db, broker, inbox=True)

    async with service:
        await service.mediator.send(PlaceOrder(order_id=1))
        with pytest.raises(Exception, match=r"(?i)unique|constraint"):
            await service.mediator.send(PlaceOrder(order_id=1))  # the same primary key
        assert service.relay is not None
        await relayed(service.relay, lambda s: s.published >= 1)

    assert [m.payload["order_id"] for m in broker.messages] == [1]
    assert (await db.outbox.counts()).get("pending", 0) == 0


async def test_sends_write_to_the_outbox_and_a_consumer_without_an_inbox_publishes(
    db: Database,
) -> None:
    broker = InMemoryMessageBroker(channel_prefix=db.prefix)

    @attrs.frozen(kw_only=True)
    class Invoiced(NotificationEvent):
        order_id: int

    class PlaceOrderHandler(RequestHandler[PlaceOrder, int]):
        async def handle(self, request: PlaceOrder) -> int:
            self.events.append(OrderPlaced(order_id=request.order_id))
            return request.order_id

    requests = RequestMap()
    requests.bind(PlaceOrder, PlaceOrderHandler)
    events = EventMap()

    @events.bind(OrderPlaced)
    async def invoice(event: OrderPlaced) -> Invoiced:
        return Invoiced(order_id=event.order_id)

    service = Service(broker, request_map=requests, event_map=events, outbox=db.outbox)
    service.subscribe("{prefix}:notification_event:OrderPlaced")
    async with service:
        [consumer] = service.consumers
        await service.mediator.send(PlaceOrder(order_id=5))
        await wait_until(consumer, lambda s: s.handled >= 1)

    # OrderPlaced went through the outbox and the relay; the consumer, with no
    # transaction of its own, published Invoiced to the broker directly.
    assert [m.message_name for m in broker.messages] == ["OrderPlaced", "Invoiced"]
    assert await db.outbox.message_ids("pending") == []


async def test_with_relay_false_the_rows_wait_for_another_process(db: Database) -> None:
    broker = InMemoryMessageBroker(channel_prefix=db.prefix)
    service = await shop(db, broker, relay=False)

    async with service:
        await service.mediator.send(PlaceOrder(order_id=5))
        assert service.relay is None
        assert "relay" not in service.stats()

    assert list(broker.messages) == []
    assert len(await db.outbox.message_ids("pending")) == 1


def test_an_inbox_needs_the_outbox_and_says_so() -> None:
    with pytest.raises(ValueError, match=r"Service\(outbox=Outbox\(engine\), inbox=True\)"):
        Service(InMemoryMessageBroker(), inbox=True)
    service = Service(InMemoryMessageBroker())
    with pytest.raises(ValueError, match="outbox's database"):
        service.subscribe("x:*", inbox=True)


async def test_readyz_is_503_with_the_reason_until_start_up_has_finished() -> None:
    broker = InMemoryMessageBroker(channel_prefix="ready")
    service = Service(broker, name="slow")
    service.subscribe("{prefix}:*")
    in_hook, release = asyncio.Event(), asyncio.Event()

    @service.on_startup
    async def warm_caches() -> None:
        in_hook.set()
        await release.wait()

    health = HealthServer(service)
    assert health.answer("GET", "/readyz") == (
        503,
        {"status": "not ready", "reason": "not started"},
    )
    starting = asyncio.create_task(service.start())
    await asyncio.wait_for(in_hook.wait(), 5)
    assert health.answer("GET", "/readyz") == (503, {"status": "not ready", "reason": "starting"})
    assert not service.ready
    release.set()
    await asyncio.wait_for(starting, 5)
    assert health.answer("GET", "/readyz") == (200, {"status": "ready"})
    await service.stop()
    assert health.answer("GET", "/readyz")[0] == 503


async def test_the_documents_show_the_outbox_and_the_inbox(db: Database) -> None:
    from mediator._operations.asyncapi import asyncapi_document
    from mediator._operations.diagram import mermaid_diagram

    service = await shop(db, InMemoryMessageBroker(channel_prefix=db.prefix), inbox=True)

    operations = asyncapi_document(service)["operations"]
    assert "published by the outbox relay" in operations["sendOrderPlaced"]["description"]
    assert "(inbox `shop:billing`)" in operations["receiveOrderPlaced_billing"]["description"]
    chart = mermaid_diagram(service)
    assert "-- outbox, relay -->" in chart
    assert f"{db.prefix}:notification_event:* group billing inbox" in chart


async def test_an_event_too_large_for_the_broker_fails_its_send_through_the_outbox(
    db: Database,
) -> None:
    broker = InMemoryMessageBroker(channel_prefix=db.prefix, max_message_size=2048)

    @attrs.frozen(kw_only=True)
    class Scanned(NotificationEvent):
        text: str

    @attrs.frozen(kw_only=True)
    class Scan(Request[None]):
        text: str

    class ScanHandler(RequestHandler[Scan, None]):
        async def handle(self, request: Scan) -> None:
            self.events.append(Scanned(text=request.text))

    requests = RequestMap()
    requests.bind(Scan, ScanHandler)
    service = Service(broker, request_map=requests, outbox=db.outbox)
    async with service:
        with pytest.raises(MessageTooLargeError, match=r"at most 2048 \(max_message_size\)"):
            await service.mediator.send(Scan(text="x" * 4096))
        await service.mediator.send(Scan(text="fits"))
        assert service.relay is not None
        await relayed(service.relay, lambda s: s.published >= 1)

    assert [m.payload["text"] for m in broker.messages] == ["fits"]
    assert await db.outbox.counts() == {"pending": 0, "sent": 1, "dead": 0}
