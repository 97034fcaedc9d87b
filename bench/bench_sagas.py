"""A saga step against the same work by hand, on SQLite and PostgreSQL, in one run.

    python bench/bench_sagas.py [--quick]

Budget (README.md, "Benchmarks"): a saga's step costs at most 1.5 x the same
work written by hand in one transaction. The work of a step is one ledger
row inserted through the session; by hand, each step is one transaction
inserting it. Through the saga, `SagaRunner.start` runs three such steps
over a small context kept in ``{prefix}_sagas``: what it adds is the
saga's row, written with each step's outcome.

PostgreSQL is the server at DATABASE_URL (default
postgresql+asyncpg://postgres@127.0.0.1:5432/test), left out with the reason
when it does not answer; tables are made and dropped per run.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import attrs
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _timing import compare

from mediator.outbox import current_session
from mediator.sagas import Saga, SagaRunner, SqlSagaStore, Step
from tests.outbox_support import Database, _probe, database_url, open_database

BUDGET = 1.5
STEPS = 3


@attrs.define
class Work:
    order_id: int
    done: int = 0


class ThreeSteps(Saga[Work]):
    def __init__(self, ledger: str) -> None:
        self.insert = text(f"INSERT INTO {ledger} (order_id, entry) VALUES (:o, :e)")

    def steps(self) -> list[Step[Work]]:
        return [Step(self.first), Step(self.second), Step(self.third)]

    async def _write(self, work: Work, entry: str) -> Work:
        await current_session().execute(self.insert, {"o": work.order_id, "e": entry})
        return attrs.evolve(work, done=work.done + 1)

    async def first(self, work: Work) -> Work:
        return await self._write(work, "first")

    async def second(self, work: Work) -> Work:
        return await self._write(work, "second")

    async def third(self, work: Work) -> Work:
        return await self._write(work, "third")


async def bench(db: Database, n: int, repeats: int) -> None:
    key = "INTEGER PRIMARY KEY" if db.kind == "sqlite" else "SERIAL PRIMARY KEY"
    ledger = await db.table("ledger", f"id {key}, order_id INTEGER NOT NULL, entry TEXT NOT NULL")
    store = SqlSagaStore(db.outbox)
    await store.create_table()
    saga = ThreeSteps(ledger)
    runner = SagaRunner(store, [saga])
    insert = saga.insert
    counter = iter(range(10**9))

    async def by_hand(count: int) -> None:
        # `count` steps: each one transaction inserting its ledger row.
        for _ in range(count):
            async with db.outbox.unit_of_work() as session:
                await session.execute(insert, {"o": next(counter), "e": "step"})

    async def through_sagas(count: int) -> None:
        for _ in range(count // STEPS):
            await runner.start(ThreeSteps, Work(order_id=next(counter)))

    try:
        await compare(
            f"{db.kind}: a saga step writing a row, vs by hand",
            by_hand,
            through_sagas,
            BUDGET,
            n,
            repeats,
        )
    finally:
        await store.drop_table()


async def main(quick: bool) -> None:
    n, repeats = (150, 3) if quick else (1500, 7)
    with tempfile.TemporaryDirectory() as directory:
        kinds = ["sqlite"]
        why = await _probe(database_url())
        if why is None:
            kinds.append("postgresql")
        else:
            print(f"postgresql: left out, {database_url()} does not answer ({why})")
        for kind in kinds:
            db = await open_database(kind, Path(directory))
            try:
                await bench(db, n, repeats)
            finally:
                await db.close()


if __name__ == "__main__":
    asyncio.run(main("--quick" in sys.argv))
