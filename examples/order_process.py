"""The order as a process manager: services that talk only through events.

The stock, payment and shipping services each handle a command and publish
what happened. The order process reacts: an order placed reserves its
stock; stock reserved charges the payment; a payment charged ships the
order and waits a moment for the carrier; a failed payment releases
the stock; a shipment that does not come in time refunds the payment and
releases the stock. Each order's process keeps its state per order id, and
its timeout is kept in the store, so it would fire after a restart too
(docs/sagas.md, "Process managers").

Order 1 ships, order 2's card is declined, order 3's carrier never answers.
Run it with ``python examples/order_process.py``; no server is needed. With
``MEDIATOR_BROKER_URL`` (say ``redis+streams://localhost:6379/0``) it runs
on that broker, and with ``ORDERS_DATABASE_URL`` (say
``postgresql+asyncpg://postgres@localhost/test``) it keeps the processes and
their timeouts in that database, in tables prefixed ``ORDERS_TABLE_PREFIX``
(``shop``); the channel prefix is ``ORDERS_CHANNEL_PREFIX`` (``shop``), and
the carrier's time ``ORDERS_SHIPPING_TIMEOUT`` (0.3 s: a broker that finds
new streams once a second needs more).
"""

from __future__ import annotations

import asyncio
import logging
import os

import attrs

import brokers
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
from mediator.sagas import (
    MemoryProcessStore,
    Process,
    ProcessManager,
    ProcessStore,
    TimeoutDispatcher,
    handles,
)


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int
    total_cents: int


@attrs.frozen(kw_only=True)
class StockReserved(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class PaymentCharged(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class PaymentDeclined(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class OrderShipped(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class ShipmentOverdue(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class Command(Request[None]):
    order_id: int


class ReserveStock(Command): ...


class ReleaseStock(Command): ...


class ChargePayment(Command): ...


class RefundPayment(Command): ...


class Ship(Command): ...


SHIPPING_TIMEOUT = float(os.environ.get("ORDERS_SHIPPING_TIMEOUT", "0.3"))
"""Seconds the order process waits for the carrier after the payment."""

ledger: list[str] = []
"""What the services did, in order."""


class Services(RequestHandler[Command, None]):
    """Stock, payment and shipping, each publishing what happened."""

    async def handle(self, request: Command) -> None:
        name, order_id = type(request).__name__, request.order_id
        ledger.append(f"{name} {order_id}")
        if isinstance(request, ReserveStock):
            self.events.append(StockReserved(order_id=order_id))
        elif isinstance(request, ChargePayment):
            declined = order_id == 2
            self.events.append(
                PaymentDeclined(order_id=order_id)
                if declined
                else PaymentCharged(order_id=order_id)
            )
        elif isinstance(request, Ship) and order_id != 3:  # order 3's carrier never answers
            self.events.append(OrderShipped(order_id=order_id))


@attrs.define
class Order:
    order_id: int
    outcome: str = "open"


class OrderProcess(ProcessManager[Order]):
    def __init__(self, orders: int) -> None:
        self.outcomes: dict[int, str] = {}
        self.all_ended = asyncio.Event()
        self._orders = orders

    @handles(OrderPlaced, key="order_id", starts=True)
    async def placed(self, process: Process[Order], event: OrderPlaced) -> None:
        process.state = Order(order_id=event.order_id)
        await process.send(ReserveStock(order_id=event.order_id))

    @handles(StockReserved, key="order_id")
    async def reserved(self, process: Process[Order], event: StockReserved) -> None:
        await process.send(ChargePayment(order_id=event.order_id))

    @handles(PaymentCharged, key="order_id")
    async def charged(self, process: Process[Order], event: PaymentCharged) -> None:
        await process.send(Ship(order_id=event.order_id))
        process.request_timeout(SHIPPING_TIMEOUT, ShipmentOverdue(order_id=event.order_id))

    @handles(PaymentDeclined, key="order_id")
    async def declined(self, process: Process[Order], event: PaymentDeclined) -> None:
        await process.send(ReleaseStock(order_id=event.order_id))
        self.end(process, "declined: stock released")

    @handles(OrderShipped, key="order_id")
    async def shipped(self, process: Process[Order], event: OrderShipped) -> None:
        self.end(process, "shipped")

    @handles(ShipmentOverdue, key="order_id")
    async def overdue(self, process: Process[Order], event: ShipmentOverdue) -> None:
        await process.send(RefundPayment(order_id=event.order_id))
        await process.send(ReleaseStock(order_id=event.order_id))
        self.end(process, "not shipped in time: refunded, stock released")

    def end(self, process: Process[Order], outcome: str) -> None:
        assert process.state is not None
        process.state = attrs.evolve(process.state, outcome=outcome)
        process.complete()
        self.outcomes[process.state.order_id] = outcome
        if len(self.outcomes) == self._orders:
            self.all_ended.set()


async def process_store() -> tuple[ProcessStore, object]:
    """The store: in memory, or in ORDERS_DATABASE_URL; and what to dispose of."""
    url = os.environ.get("ORDERS_DATABASE_URL")
    if not url:
        return MemoryProcessStore(), None
    from sqlalchemy.ext.asyncio import create_async_engine

    from mediator.outbox import Outbox
    from mediator.sagas import SqlProcessStore

    engine = create_async_engine(url)
    store = SqlProcessStore(Outbox(engine, prefix=os.environ.get("ORDERS_TABLE_PREFIX", "shop")))
    await store.create_tables()
    return store, engine


async def main() -> None:
    logging.basicConfig(level=logging.CRITICAL)
    prefix = os.environ.get("ORDERS_CHANNEL_PREFIX", "shop")
    broker = brokers.from_env(default="memory://", channel_prefix=prefix)
    requests = RequestMap()
    for command in (ReserveStock, ReleaseStock, ChargePayment, RefundPayment, Ship):
        requests.bind(command, Services)
    emitter = EventEmitter(message_broker=broker)
    mediator = Mediator(request_map=requests, event_emitter=emitter)

    store, engine = await process_store()
    events = EventMap()
    process = OrderProcess(orders=3)
    process.bind(events, store, mediator=mediator)
    consumer = EventConsumer(broker=broker, event_map=events, max_concurrency=1)
    await consumer.subscribe(f"{prefix}:notification_event:*")
    timeouts = TimeoutDispatcher(store, [process], mediator=mediator, interval=0.05)
    try:
        async with consumer:
            ticking = asyncio.create_task(timeouts.run())
            for order_id, cents in ((1, 4200), (2, 990), (3, 1500)):
                await emitter.emit(OrderPlaced(order_id=order_id, total_cents=cents))
            async with asyncio.timeout(30):
                await process.all_ended.wait()
            timeouts.stop()
            await ticking  # the round under way commits
    finally:
        await broker.stop()
        if engine is not None:
            await engine.dispose()  # type: ignore[attr-defined]
    for line in ledger:
        print(line)
    for order_id, outcome in sorted(process.outcomes.items()):
        print(f"order {order_id}: {outcome}")


if __name__ == "__main__":
    asyncio.run(main())
