"""The producer service: commands through a Mediator, events to Redis Streams.

Each notification event is appended to the stream of its logical channel,
``{prefix}:notification_event:{name}``, where it waits for the consumer
(examples/redis_consumer.py), whether that runs already or starts later.

Run it with ``python examples/redis_producer.py [prefix]``. The server is
``REDIS_URL`` (default ``redis://127.0.0.1:6379``); the prefix is the first
argument, else ``SHOP_PREFIX``, else ``shop``.
"""

from __future__ import annotations

import asyncio
import os
import sys

import attrs
from redis.asyncio import Redis

from brokers.redis import RedisStreamBroker
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
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
    prefix = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SHOP_PREFIX", "shop")
    requests = RequestMap()
    requests.bind(PlaceOrder, PlaceOrderHandler)
    requests.bind(CancelOrder, CancelOrderHandler)

    async with Redis.from_url(url) as client:
        broker = RedisStreamBroker(client=client, channel_prefix=prefix, maxlen=10_000)
        mediator = Mediator(request_map=requests, event_emitter=EventEmitter(message_broker=broker))
        with correlation_scope("checkout-1"):
            await mediator.send(PlaceOrder(order_id=101, total_cents=4200))
        await mediator.send(PlaceOrder(order_id=102, total_cents=990))
        await mediator.send(CancelOrder(order_id=101))
    print(f"sent 3 commands; their events are in the streams {prefix}:notification_event:*")


if __name__ == "__main__":
    asyncio.run(main())
