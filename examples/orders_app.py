"""The production path, end to end: a command writes its order and its event
in one transaction (the outbox), the service's relay publishes the event, and
billing, a subscription with an inbox, charges each order exactly once in the
transaction of its own writes, however often the broker delivers it.

    cd examples
    export DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/test
    export MEDIATOR_BROKER_URL=redis+streams://127.0.0.1:6379/0
    mediator run orders_app:app --workers 2 --health-port 8080   # relay + billing
    python orders_app.py place 100    # another process sends 100 PlaceOrder commands
    python orders_app.py report       # orders and payments in the database

The commands are sent by a process of their own, as a web application would
send them: it writes to the database only (the order and the outbox row, in
one transaction), and the running service relays what committed. Without
``DATABASE_URL`` the database is ``orders.db`` (SQLite) in the working
directory: one worker only on SQLite, where one relay runs per database.
Without ``MEDIATOR_BROKER_URL`` the broker is in memory, inside the service.
``ORDERS_TABLES`` prefixes the table names and the channels (default
``orders_app``), so that several copies can share a database and a broker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import attrs
from sqlalchemy import Column, Integer, MetaData, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import brokers
from mediator import (
    EventMap,
    NotificationEvent,
    Request,
    RequestHandler,
    RequestMap,
    Service,
    ServiceStarted,
)
from mediator.outbox import Outbox, current_session, sqlite_engine

logger = logging.getLogger("orders_app")

DATABASE_URL = os.environ.get("DATABASE_URL") or "sqlite+aiosqlite:///orders.db"
PREFIX = os.environ.get("ORDERS_TABLES") or "orders_app"

metadata = MetaData()
orders = Table(
    f"{PREFIX}_orders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("total_cents", Integer, nullable=False),
)
payments = Table(
    f"{PREFIX}_payments",
    metadata,
    Column("order_id", Integer, nullable=False),
    Column("amount_cents", Integer, nullable=False),
)


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent, name="orders.placed", partition_key="order_id"):
    order_id: int
    total_cents: int


@attrs.frozen(kw_only=True)
class PlaceOrder(Request[int]):
    order_id: int
    total_cents: int


class PlaceOrderHandler(RequestHandler[PlaceOrder, int]):
    """Writes the order; its event commits with it, as an outbox row."""

    async def handle(self, request: PlaceOrder) -> int:
        await current_session().execute(
            insert(orders).values(id=request.order_id, total_cents=request.total_cents)
        )
        self.events.append(OrderPlaced(order_id=request.order_id, total_cents=request.total_cents))
        return request.order_id


requests = RequestMap()
requests.bind(PlaceOrder, PlaceOrderHandler)
billing = EventMap()


@billing.bind(OrderPlaced)
async def charge(event: OrderPlaced) -> None:
    # In the delivery's transaction, with the inbox's record of the message id:
    # both commit, or neither does and the redelivery charges again.
    await current_session().execute(
        insert(payments).values(order_id=event.order_id, amount_cents=event.total_cents)
    )


@billing.bind(ServiceStarted)
async def started(event: ServiceStarted) -> None:
    logger.info("%s is billing orders", event.service)


def engine() -> AsyncEngine:
    if DATABASE_URL.startswith("sqlite"):
        return sqlite_engine(DATABASE_URL)
    # Named, so that pg_stat_activity tells the service's connections from
    # those of the process placing orders.
    role = "place" if sys.argv[1:2] == ["place"] else "service"
    return create_async_engine(
        DATABASE_URL, connect_args={"server_settings": {"application_name": f"{PREFIX} {role}"}}
    )


outbox = Outbox(engine(), prefix=PREFIX)
app = Service(
    brokers.from_env(default="memory://", channel_prefix=PREFIX),
    name="orders",
    request_map=requests,
    event_map=billing,
    outbox=outbox,  # sends write their events here; the service runs the relay
    inbox=True,  # every subscription handles each message id once
)
app.subscribe("{prefix}:notification_event:orders.*", group="billing")


@app.on_startup
async def create_tables() -> None:
    await create_all()


async def create_all() -> None:
    await outbox.create_tables()
    async with outbox.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)


async def place(count: int) -> None:
    """Send `count` commands through the service's mediator: each one
    transaction, its order and its event (no broker needed here)."""
    await create_all()
    async with outbox.engine.connect() as connection:
        start = (await connection.execute(select(func.coalesce(func.max(orders.c.id), 0)))).scalar()
    for n in range(1, count + 1):
        await app.mediator.send(PlaceOrder(order_id=int(start) + n, total_cents=100 * n))
    print(f"placed {count} orders")
    await outbox.engine.dispose()


async def report() -> None:
    """How many orders there are, how many were charged, and how many twice."""
    async with outbox.engine.connect() as connection:
        placed = (await connection.execute(select(func.count()).select_from(orders))).scalar()
        charged = (
            await connection.execute(select(func.count(func.distinct(payments.c.order_id))))
        ).scalar()
        rows = (await connection.execute(select(func.count()).select_from(payments))).scalar()
    print(f"orders {placed}, charged {charged}, charged twice {rows - charged}")
    await outbox.engine.dispose()


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "report"
    if command == "place":
        asyncio.run(place(int(sys.argv[2]) if len(sys.argv) > 2 else 10))
    elif command == "report":
        asyncio.run(report())
    else:
        sys.exit(f"usage: python orders_app.py place [COUNT] | report (not {command!r})")
