"""The order saga: reserve the stock, charge the payment, ship; undone last
first when a step fails.

Order 1 goes through. Order 2's card is declined: its stock is released.
Order 3's carrier never answers: the shipment times out, the payment is
refunded and the stock released. The saga's progress is recorded step by
step (here in memory; `SqlSagaStore` keeps it beside the outbox), so a
process stopped mid-saga resumes it (docs/sagas.md).

Run it with ``python examples/sagas.py``; no server is needed.
"""

from __future__ import annotations

import asyncio
import logging

import attrs

from mediator import Backoff, Retry
from mediator.sagas import MemorySagaStore, Saga, SagaRunner, Step


@attrs.define
class Order:
    order_id: int
    total_cents: int
    reservation: str | None = None
    payment: str | None = None
    shipment: str | None = None


class Warehouse:
    def __init__(self) -> None:
        self.reserved: set[int] = set()

    async def reserve(self, order_id: int) -> str:
        self.reserved.add(order_id)  # reserving twice reserves once: idempotent
        return f"res-{order_id}"

    async def release(self, order_id: int) -> None:
        self.reserved.discard(order_id)


class Payments:
    declined = frozenset({2})

    def __init__(self) -> None:
        self.charged: dict[int, int] = {}

    async def charge(self, order_id: int, cents: int) -> str:
        if order_id in self.declined:
            raise RuntimeError(f"card declined for order {order_id}")
        self.charged[order_id] = cents  # keyed by order: charging twice charges once
        return f"pay-{order_id}"

    async def refund(self, order_id: int) -> None:
        self.charged.pop(order_id, None)


class Carrier:
    unreachable = frozenset({3})

    async def ship(self, order_id: int) -> str:
        if order_id in self.unreachable:
            await asyncio.Event().wait()  # no answer, ever
        return f"parcel-{order_id}"


class PlaceOrder(Saga[Order]):
    def __init__(self, warehouse: Warehouse, payments: Payments, carrier: Carrier) -> None:
        self.warehouse, self.payments, self.carrier = warehouse, payments, carrier

    def steps(self) -> list[Step[Order]]:
        quickly = Retry(attempts=2, backoff=Backoff(initial=0.01))
        return [
            Step(self.reserve_stock, compensate=self.release_stock),
            Step(self.charge_payment, compensate=self.refund_payment, retry=quickly),
            Step(self.ship, timeout=0.2),
        ]

    async def reserve_stock(self, order: Order) -> Order:
        return attrs.evolve(order, reservation=await self.warehouse.reserve(order.order_id))

    async def release_stock(self, order: Order) -> Order:
        await self.warehouse.release(order.order_id)
        return attrs.evolve(order, reservation=None)

    async def charge_payment(self, order: Order) -> Order:
        payment = await self.payments.charge(order.order_id, order.total_cents)
        return attrs.evolve(order, payment=payment)

    async def refund_payment(self, order: Order) -> Order:
        await self.payments.refund(order.order_id)
        return attrs.evolve(order, payment=None)

    async def ship(self, order: Order) -> Order:
        return attrs.evolve(order, shipment=await self.carrier.ship(order.order_id))


async def main() -> None:
    logging.basicConfig(level=logging.CRITICAL)  # the saga logs its failures; quiet here
    warehouse, payments = Warehouse(), Payments()
    runner = SagaRunner(MemorySagaStore(), [PlaceOrder(warehouse, payments, Carrier())])
    for order_id, cents in ((1, 4200), (2, 990), (3, 1500)):
        result = await runner.start(PlaceOrder, Order(order_id=order_id, total_cents=cents))
        why = f": {result.error}" if result.error else ""
        print(f"order {order_id} {result.status}{why}")
    print(f"reserved {sorted(warehouse.reserved)}, charged {payments.charged}")
    print(f"counts {await runner.counts()}")


if __name__ == "__main__":
    asyncio.run(main())
