"""The producer service: commands through a Mediator, events to an Azure Service Bus topic.

Each notification event becomes one message on the topic, with the logical
channel ``{topic}:notification_event:{name}`` in its ``channel`` application
property. The messages wait in the topic's subscriptions for the consumer
(examples/azure_consumer.py), whether that runs already or starts later.

Run it with ``python examples/azure_producer.py``. The namespace is
``SERVICEBUS_CONNECTION_STRING``; the topic is ``SERVICEBUS_TOPIC`` (default
``orders``).
"""

from __future__ import annotations

import asyncio
import os
import sys

import attrs

from brokers.azure import AzureMessageBroker
from mediator import (
    EventEmitter,
    Mediator,
    NotificationEvent,
    Request,
    RequestHandler,
    RequestMap,
    correlation_scope,
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
class PlaceOrder(Request[None]):
    order_id: int
    total_cents: int


@attrs.frozen(kw_only=True)
class CancelOrder(Request[None]):
    order_id: int


class PlaceOrderHandler(RequestHandler[PlaceOrder, None]):
    async def handle(self, request: PlaceOrder) -> None:
        self.events.append(OrderPlaced(order_id=request.order_id, total_cents=request.total_cents))
        self.events.append(NewsletterSigned(email="ada@example.com"))  # not an Order* channel


class CancelOrderHandler(RequestHandler[CancelOrder, None]):
    async def handle(self, request: CancelOrder) -> None:
        self.events.append(OrderCancelled(order_id=request.order_id))


async def main() -> None:
    connection_string = os.environ.get("SERVICEBUS_CONNECTION_STRING")
    if not connection_string:
        sys.exit("SERVICEBUS_CONNECTION_STRING is not set: give it a namespace's connection string")
    topic = os.environ.get("SERVICEBUS_TOPIC", "orders")
    requests = RequestMap()
    requests.bind(PlaceOrder, PlaceOrderHandler)
    requests.bind(CancelOrder, CancelOrderHandler)

    # The broker made from a connection string owns its client: leaving the block closes it.
    async with AzureMessageBroker.from_connection_string(connection_string, topic) as broker:
        mediator = Mediator(request_map=requests, event_emitter=EventEmitter(message_broker=broker))
        with correlation_scope("checkout-1"):
            await mediator.send(PlaceOrder(order_id=101, total_cents=4200))
        await mediator.send(PlaceOrder(order_id=102, total_cents=990))
        await mediator.send(CancelOrder(order_id=101))
    print(f"sent 3 commands; their events are on topic {topic}")


if __name__ == "__main__":
    asyncio.run(main())
