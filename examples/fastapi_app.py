"""A FastAPI application running a Service: ``POST /orders`` sends the
PlaceOrder command, whose handler raises OrderPlaced, which the service's
own billing subscription consumes, behind the broker.

    cd examples
    python fastapi_app.py                  # uvicorn on 127.0.0.1:8000 (PORT, HOST)
    curl -si -X POST localhost:8000/orders -H 'X-Correlation-ID: checkout-1' \\
         -H 'content-type: application/json' -d '{"order_id": 1, "total_cents": 4200}'
    curl -si localhost:8000/orders/1/receipt

``GET /orders/{id}/receipt`` waits (up to 10 s) until billing charged the
order. The service starts with the application and stops with it: on
SIGTERM uvicorn finishes the requests in flight (a receipt still waiting
for billing included), then the service drains its consumers (billing a
placed order takes a moment) and the process exits 0.
A second PlaceOrder of the same order answers 409 (`OrderExists`). The
broker is in memory; ``MEDIATOR_BROKER_URL`` names another one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Annotated, Any

import attrs
from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import brokers
from mediator import (
    EventMap,
    Mediator,
    NotificationEvent,
    Request,
    RequestHandler,
    RequestMap,
    Service,
    current_correlation_id,
)
from mediator.starlette import (
    CorrelationIdMiddleware,
    error_responses,
    get_mediator,
    get_service,
    lifespan,
)

logger = logging.getLogger("fastapi_app")


class OrderExists(Exception):
    """A PlaceOrder for an order already placed."""


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent, name="orders.placed", partition_key="order_id"):
    order_id: int
    total_cents: int


@attrs.frozen(kw_only=True)
class PlaceOrder(Request[int]):
    order_id: int
    total_cents: int


placed: set[int] = set()
"""The orders table."""
billed: dict[int, int] = {}
"""Billing's ledger: the cents charged per order."""
_charged: dict[int, asyncio.Event] = {}


def charged(order_id: int) -> asyncio.Event:
    """Set once billing charged `order_id`."""
    return _charged.setdefault(order_id, asyncio.Event())


class PlaceOrderHandler(RequestHandler[PlaceOrder, int]):
    async def handle(self, request: PlaceOrder) -> int:
        if request.order_id in placed:
            raise OrderExists(f"order {request.order_id} is already placed")
        placed.add(request.order_id)
        self.events.append(OrderPlaced(order_id=request.order_id, total_cents=request.total_cents))
        return request.order_id


def build_service() -> Service:
    """The service: the PlaceOrder handler, and billing subscribed to its events."""
    requests = RequestMap()
    requests.bind(PlaceOrder, PlaceOrderHandler)
    billing = EventMap()

    @billing.bind(OrderPlaced)
    async def charge(event: OrderPlaced) -> None:
        await asyncio.sleep(0.2)  # the payment provider takes a moment
        logger.info(
            "billed order %d: %d cents (correlation %s)",
            event.order_id,
            event.total_cents,
            current_correlation_id(),
        )
        billed[event.order_id] = event.total_cents
        charged(event.order_id).set()

    service = Service(
        brokers.from_env(default="memory://", channel_prefix="web"),
        name="orders-web",
        request_map=requests,
        event_map=billing,
    )
    service.subscribe("{prefix}:notification_event:orders.*", group="billing")
    return service


class OrderBody(BaseModel):
    order_id: int
    total_cents: int


router = APIRouter()


@router.post("/orders", status_code=201)
async def place_order(
    body: OrderBody, mediator: Annotated[Mediator, Depends(get_mediator)]
) -> dict[str, Any]:
    order_id = await mediator.send(PlaceOrder(order_id=body.order_id, total_cents=body.total_cents))
    return {"order_id": order_id, "correlation_id": current_correlation_id()}


@router.get("/orders/{order_id}/receipt")
async def receipt(order_id: int) -> JSONResponse:
    logger.info("waiting for the receipt of order %d", order_id)
    try:
        async with asyncio.timeout(10):
            await charged(order_id).wait()
    except TimeoutError:
        return JSONResponse({"error": f"order {order_id} is not billed yet"}, 404)
    return JSONResponse({"order_id": order_id, "billed_cents": billed[order_id]})


@router.get("/readyz")
async def ready(service: Annotated[Service, Depends(get_service)]) -> JSONResponse:
    reason = service.not_ready_because()
    return JSONResponse({"ready": reason is None, "reason": reason}, 200 if reason is None else 503)


def create_app(service: Service) -> FastAPI:
    """The application of `service`: started and stopped with it."""
    app = FastAPI(
        lifespan=lifespan(service),
        exception_handlers=error_responses({OrderExists: 409}),
    )
    app.add_middleware(CorrelationIdMiddleware)
    app.include_router(router)
    return app


service = build_service()
app = create_app(service)


def main() -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def exit_drained(signum: int, frame: object) -> None:
        # uvicorn raises the signal again once it has shut down: exit as
        # `mediator run` does, 0 when every delivery drained, else 4.
        sys.exit(4 if service.cancelled_at_stop else 0)

    signal.signal(signal.SIGTERM, exit_drained)
    uvicorn.run(
        app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8000")),
        timeout_graceful_shutdown=10,  # for the requests in flight; the service drains after
    )


if __name__ == "__main__":
    main()
