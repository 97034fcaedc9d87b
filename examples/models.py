"""Events in the three model forms, side by side in one application.

    python examples/models.py

An attrs event (the default), a dataclass event written as diator writes
them, and a pydantic model go out through one emitter onto the in-memory
broker, and one consumer, with one EventMap, takes each back as an instance
of its own class. A sync handler runs in a worker thread. No server is needed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from datetime import datetime

import attrs
import pydantic

from brokers.memory import InMemoryMessageBroker
from mediator import Event, EventConsumer, EventEmitter, EventMap, NotificationEvent
from mediator.pydantic import ECSTEvent as ModelECSTEvent


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent, name="orders.placed"):
    order_id: int
    total_cents: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class UserJoinedNotificationEvent(NotificationEvent):
    user_id: int = dataclasses.field()
    joined_at: datetime = dataclasses.field()  # naive, as diator's utcnow() gave it


class Address(pydantic.BaseModel):
    city: str


class CustomerMoved(ModelECSTEvent, name="customers.moved"):
    customer_id: int
    address: Address


events = EventMap()
received: list[str] = []
done = asyncio.Event()


def record(event: Event, detail: str) -> None:
    received.append(f"received {type(event).__name__}: {detail}")
    if len(received) == 3:
        done.set()


@events.bind(OrderPlaced)
async def placed(event: OrderPlaced) -> None:
    record(event, f"order {event.order_id}, {event.total_cents} cents")


@events.bind(UserJoinedNotificationEvent)
async def joined(event: UserJoinedNotificationEvent) -> None:
    zone = "naive" if event.joined_at.tzinfo is None else "aware"
    record(event, f"user {event.user_id} at {event.joined_at.isoformat()} ({zone})")


loop_thread = threading.get_ident()


@events.bind(CustomerMoved, to_thread=True)
def moved(event: CustomerMoved) -> None:
    # A sync handler: in a worker thread, so anything blocking here leaves the loop free.
    assert threading.get_ident() != loop_thread
    record(event, f"customer {event.customer_id} to {event.address.city}")


async def main() -> None:
    broker = InMemoryMessageBroker(channel_prefix="shop")
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe("shop:*")
    emitter = EventEmitter(message_broker=broker)
    async with consumer:
        await emitter.emit_all(
            [
                OrderPlaced(order_id=1, total_cents=4200),
                UserJoinedNotificationEvent(user_id=7, joined_at=datetime(2026, 3, 7, 9, 26)),
                CustomerMoved(customer_id=3, address=Address(city="Oslo")),
            ]
        )
        await asyncio.wait_for(done.wait(), 10)
    for message in broker.messages:
        print(f"sent {message.message_name}: {sorted(message.payload)}")
    for line in sorted(received):
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
