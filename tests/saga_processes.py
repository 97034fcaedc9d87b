"""The process the saga soak kills: ``python -m tests.saga_processes DB_URL
TABLE_PREFIX COUNT CONCURRENCY``.

It resumes the unfinished sagas kept in ``{prefix}_sagas``, then starts
orders 0..COUNT-1 (ids derived from the prefix and the order, so a restart
resumes a run instead of starting another), `CONCURRENCY` at a time, and
prints ``finished N STATUS`` as each one ends, then ``all done``. Each
step writes its ledger row through the step's own transaction.

Order n's payment is refused when n % 5 == 0 (compensated: stock released);
its shipment fails when n % 7 == 0 otherwise (compensated: payment refunded,
stock released).
"""

from __future__ import annotations

import asyncio
import sys
import uuid

import attrs
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from mediator.outbox import Outbox, current_session, sqlite_engine
from mediator.sagas import Saga, SagaRunner, Step
from mediator.sagas import SqlSagaStore as SqlSagaStore

NAMESPACE = uuid.UUID("8a3f1c52-9d0e-4c5b-a1f7-3e2d6b9c0a41")


@attrs.define
class Soaked:
    order_id: int


def saga_id(prefix: str, order_id: int) -> uuid.UUID:
    """The id of order `order_id`'s saga, the same in every run of the process."""
    return uuid.uuid5(NAMESPACE, f"{prefix}-{order_id}")


def expected_ledger(order_id: int) -> list[str]:
    """The ledger entries order `order_id` ends with, each exactly once."""
    if order_id % 5 == 0:
        return ["reserve", "release"]
    if order_id % 7 == 0:
        return ["reserve", "charge", "refund", "release"]
    return ["reserve", "charge", "ship"]


class SoakOrder(Saga[Soaked]):
    def __init__(self, prefix: str) -> None:
        self.ledger = f"{prefix}_ledger"

    def steps(self) -> list[Step[Soaked]]:
        return [
            Step(self.reserve, compensate=self.release),
            Step(self.charge, compensate=self.refund),
            Step(self.ship),
        ]

    async def _write(self, order: Soaked, entry: str) -> None:
        await asyncio.sleep(0)  # a window for the kill between the step's writes
        await current_session().execute(
            text(f"INSERT INTO {self.ledger} (order_id, entry) VALUES (:o, :e)"),
            {"o": order.order_id, "e": entry},
        )

    async def reserve(self, order: Soaked) -> None:
        await self._write(order, "reserve")

    async def release(self, order: Soaked) -> None:
        await self._write(order, "release")

    async def charge(self, order: Soaked) -> None:
        if order.order_id % 5 == 0:
            raise RuntimeError(f"card declined for order {order.order_id}")
        await self._write(order, "charge")

    async def refund(self, order: Soaked) -> None:
        await self._write(order, "refund")

    async def ship(self, order: Soaked) -> None:
        if order.order_id % 7 == 0:
            raise RuntimeError(f"no carrier for order {order.order_id}")
        await self._write(order, "ship")


async def main(url: str, prefix: str, count: int, concurrency: int) -> None:
    engine = sqlite_engine(url) if url.startswith("sqlite") else create_async_engine(url)
    outbox = Outbox(engine, prefix=prefix)
    runner = SagaRunner(SqlSagaStore(outbox), [SoakOrder(prefix)])
    for result in await runner.recover():
        print(f"resumed {result.id} {result.status}", flush=True)
    gate = asyncio.Semaphore(concurrency)

    async def run(order_id: int) -> None:
        async with gate:
            result = await runner.start(
                SoakOrder, Soaked(order_id), saga_id=saga_id(prefix, order_id)
            )
            print(f"finished {order_id} {result.status}", flush=True)

    await asyncio.gather(*(run(n) for n in range(count)))
    print("all done", flush=True)
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
