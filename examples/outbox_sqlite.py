"""The outbox on SQLite: a command's row and its event commit together, the
relay publishes the event after the commit, and a consumer handles it.

    python examples/outbox_sqlite.py

Needs the outbox extra (pip install 'mediator-toolkit[outbox]'); no server.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import attrs
from sqlalchemy import text

from brokers.memory import InMemoryMessageBroker
from mediator import (
    EventConsumer,
    EventEmitter,
    EventMap,
    Mediator,
    NotificationEvent,
    Request,
    RequestHandler,
    RequestMap,
)
from mediator.outbox import Outbox, OutboxRelay, current_session, sqlite_engine


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent, partition_key="order_id"):
    order_id: int
    total_cents: int


@attrs.frozen(kw_only=True)
class PlaceOrder(Request[int]):
    total_cents: int


class PlaceOrderHandler(RequestHandler[PlaceOrder, int]):
    async def handle(self, request: PlaceOrder) -> int:
        # The session of this send's transaction: the row commits with the event.
        result = await current_session().execute(
            text("INSERT INTO orders (total_cents) VALUES (:total) RETURNING id"),
            {"total": request.total_cents},
        )
        order_id: int = result.scalar_one()
        self.events.append(OrderPlaced(order_id=order_id, total_cents=request.total_cents))
        if request.total_cents <= 0:
            raise ValueError(f"an order of {request.total_cents} cents")
        return order_id


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        engine = sqlite_engine(f"sqlite+aiosqlite:///{Path(directory) / 'shop.db'}")
        outbox = Outbox(engine)
        await outbox.create_tables()
        async with engine.begin() as connection:
            await connection.execute(
                text("CREATE TABLE orders (id INTEGER PRIMARY KEY, total_cents INTEGER NOT NULL)")
            )

        requests = RequestMap()
        requests.bind(PlaceOrder, PlaceOrderHandler)
        events = EventMap()
        billed = asyncio.Event()

        @events.bind(OrderPlaced)
        async def bill(event: OrderPlaced) -> None:
            print(f"billing: order {event.order_id}, {event.total_cents} cents")
            billed.set()

        mediator = Mediator(
            request_map=requests,
            # The outbox is the emitter's broker: events become rows of the send's transaction.
            event_emitter=EventEmitter(event_map=events, message_broker=outbox),
            unit_of_work=outbox.unit_of_work,
        )
        broker = InMemoryMessageBroker(channel_prefix="shop")
        consumer = EventConsumer(broker=broker, event_map=events)
        await consumer.subscribe("shop:notification_event:OrderPlaced")

        async with consumer, OutboxRelay(outbox, broker):
            order_id = await mediator.send(PlaceOrder(total_cents=4200))
            print(f"placed order {order_id}")
            await asyncio.wait_for(billed.wait(), 10)
            try:
                await mediator.send(PlaceOrder(total_cents=-5))
            except ValueError as exc:
                print(f"refused {exc}: its row and its event were rolled back together")

        async with engine.connect() as connection:
            orders = (await connection.execute(text("SELECT count(*) FROM orders"))).scalar()
        print(f"orders: {orders}, outbox rows: {await outbox.counts()}")
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
