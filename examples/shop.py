"""The shop the transport examples share: its commands, its events, the
producer's handlers and the billing service's handlers.

A producer and a consumer only have to agree on the event names and their
payload fields; sharing the classes, as these examples do, is one way to.
"""

from __future__ import annotations

import attrs

from mediator import (
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


def shop_requests() -> RequestMap:
    """The producer's request map."""
    requests = RequestMap()
    requests.bind(PlaceOrder, PlaceOrderHandler)
    requests.bind(CancelOrder, CancelOrderHandler)
    return requests


async def place_orders(mediator: Mediator) -> None:
    """Three commands; the first carries the correlation id of a checkout."""
    with correlation_scope("checkout-1"):
        await mediator.send(PlaceOrder(order_id=101, total_cents=4200))
    await mediator.send(PlaceOrder(order_id=102, total_cents=990))
    await mediator.send(CancelOrder(order_id=101))


def billing_events() -> EventMap:
    """The billing service's handlers: one line printed per event."""
    events = EventMap()

    @events.bind(OrderPlaced)
    async def bill(event: OrderPlaced) -> None:
        message = current_message()
        correlation = message.headers["correlation_id"] if message else "?"
        print(
            f"billing order {event.order_id}: {event.total_cents} cents ({correlation})", flush=True
        )

    @events.bind(OrderCancelled)
    async def refund(event: OrderCancelled) -> None:
        print(f"refunding order {event.order_id}", flush=True)

    return events
