"""Publishing decorators: a service publishes events from what its methods
return (@publish_result) and from the arguments they are called with
(@publish_arguments), without appending to a list of events by hand.

Run it with ``python examples/publishing.py``; no server is needed.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import attrs
import orjson

from brokers.memory import InMemoryMessageBroker
from mediator import (
    DomainEvent,
    EventEmitter,
    EventMap,
    NotificationEvent,
    publish_arguments,
    publish_result,
)


@attrs.frozen(kw_only=True)
class OrderCreated(NotificationEvent, name="order.created"):
    order_id: str
    customer_id: str
    items: list[str]
    status: str


@attrs.frozen(kw_only=True)
class OrderCompleted(NotificationEvent, name="order.completed"):
    order_id: str
    status: str


@attrs.frozen(kw_only=True)
class OrderCancelling(NotificationEvent, name="order.cancelling"):
    order_id: str
    reason: str


@attrs.frozen(kw_only=True)
class StockReleased(DomainEvent):
    """Handled in this process: it never reaches the broker."""

    order_id: str
    result: int | None = None


broker = InMemoryMessageBroker(channel_prefix="shop")
events = EventMap()
emitter = EventEmitter(event_map=events, message_broker=broker)


@events.bind(StockReleased)
async def log_release(event: StockReleased) -> None:
    print(f"local handler: order {event.order_id} released {event.result} item(s)")


class Database:
    """Stands in for a session or repository; no event declares it, so it is
    never part of a payload."""

    def __init__(self) -> None:
        self.orders: dict[str, dict[str, Any]] = {}
        self.numbers = itertools.count(101)


class OrderService:
    def __init__(self, db: Database) -> None:
        self.db = db

    @publish_result(emitter, OrderCreated)
    async def create_order(self, customer_id: str, items: list[str]) -> dict[str, Any]:
        order: dict[str, Any] = {
            "order_id": f"o-{next(self.db.numbers)}",
            "customer_id": customer_id,
            "items": items,
            "status": "CREATED",
        }
        self.db.orders[order["order_id"]] = order
        return order  # the dict is the event's fields

    @publish_result(
        emitter, OrderCompleted, condition=lambda result: result["status"] == "COMPLETED"
    )
    async def complete_order(self, order_id: str, paid: bool) -> dict[str, str]:
        status = "COMPLETED" if paid else "AWAITING_PAYMENT"
        self.db.orders[order_id]["status"] = status
        return {"order_id": order_id, "status": status}

    @publish_arguments(emitter, OrderCancelling, timing="before")
    async def cancel_order(self, order_id: str, reason: str) -> None:
        # OrderCancelling is on the broker before the body runs.
        print(f"cancel_order body: {broker.messages[-1].message_name} already published")
        self.db.orders[order_id]["status"] = "CANCELLED"
        await self.release_stock(self.db, order_id)

    @publish_arguments(emitter, StockReleased, timing="after")
    async def release_stock(self, db: Database, order_id: str) -> int:
        return len(db.orders[order_id]["items"])


def show(seen: int) -> int:
    """Print the envelopes published since the first `seen`; return the new count."""
    for message in list(broker.messages)[seen:]:
        fields = {
            key: value
            for key, value in message.payload.items()
            if key not in ("event_id", "event_timestamp")
        }
        print(f"published {message.message_name}: {orjson.dumps(fields).decode()}")
    return len(broker.messages)


async def main() -> None:
    service = OrderService(Database())
    seen = 0

    order = await service.create_order("c-42", ["book", "lamp"])
    seen = show(seen)

    await service.complete_order(order["order_id"], paid=False)
    print(f"not paid: {len(broker.messages) - seen} published")
    await service.complete_order(order["order_id"], paid=True)
    seen = show(seen)

    second = await service.create_order("c-43", ["pen"])
    seen = show(seen)
    await service.cancel_order(second["order_id"], reason="changed my mind")
    seen = show(seen)


if __name__ == "__main__":
    asyncio.run(main())
