"""A producer and a consumer talking through the in-memory broker by pattern.

The producer service sends commands through its Mediator; their notification
events are published on ``shop:notification_event:{name}``. The consumer
service subscribes to ``shop:notification_event:Order*`` and its handlers get
typed events; what they raise follows with the same correlation id.

Run it with ``python examples/memory_pubsub.py``; no server is needed.
"""

from __future__ import annotations

import asyncio

import attrs

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
    correlation_scope,
    current_message,
)


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int
    total_cents: int


@attrs.frozen(kw_only=True)
class OrderCancelled(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class NewsletterSigned(NotificationEvent):
    email: str


@attrs.frozen(kw_only=True)
class PlaceOrder(Request[int]):
    total_cents: int


class PlaceOrderHandler(RequestHandler[PlaceOrder, int]):
    next_id = 100

    async def handle(self, request: PlaceOrder) -> int:
        PlaceOrderHandler.next_id += 1
        order_id = PlaceOrderHandler.next_id
        self.events.append(OrderPlaced(order_id=order_id, total_cents=request.total_cents))
        self.events.append(NewsletterSigned(email="ada@example.com"))  # not an Order* channel
        return order_id


def producer(broker: InMemoryMessageBroker) -> Mediator:
    requests = RequestMap()
    requests.bind(PlaceOrder, PlaceOrderHandler)
    return Mediator(request_map=requests, event_emitter=EventEmitter(message_broker=broker))


def consumer(broker: InMemoryMessageBroker, log: list[str]) -> EventConsumer:
    events = EventMap()

    @events.bind(OrderPlaced)
    async def bill(event: OrderPlaced) -> None:
        message = current_message()
        correlation = message.headers["correlation_id"] if message else "?"
        log.append(f"billing order {event.order_id}: {event.total_cents} cents ({correlation})")

    @events.bind(OrderCancelled)
    async def refund(event: OrderCancelled) -> None:
        log.append(f"refunding order {event.order_id}")

    return EventConsumer(broker=broker, event_map=events)


async def main() -> None:
    broker = InMemoryMessageBroker(channel_prefix="shop")
    mediator = producer(broker)
    log: list[str] = []
    billing = consumer(broker, log)
    await billing.subscribe("shop:notification_event:Order*")

    async with billing:
        with correlation_scope("checkout-1"):
            order_id = await mediator.send(PlaceOrder(total_cents=4200))
        await EventEmitter(message_broker=broker).emit(OrderCancelled(order_id=order_id))
        await billing.wait_until(lambda stats: stats.handled >= 2)

    for line in log:
        print(line)
    stats = billing.stats
    print(f"received {stats.received}, handled {stats.handled}")


if __name__ == "__main__":
    asyncio.run(main())
