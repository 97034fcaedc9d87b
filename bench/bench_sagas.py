"""A saga step against the same work by hand, on SQLite and PostgreSQL, in one run.

    python bench/bench_sagas.py [--quick]

Budget (README.md, "Benchmarks"): a saga's step costs at most 1.5 x the same
work written by hand in one transaction. The work of a step is one ledger
row inserted through the session; by hand it is one transaction inserting
it. A step's cost is measured as a difference: sagas of four such steps
against sagas of one, run side by side, the difference divided by three.
What that leaves out, the saga's own first record (written before its first
step runs), is printed on its own line, and a whole saga of three steps
against three transactions by hand beside it, for reference.

PostgreSQL is the server at DATABASE_URL (default
postgresql+asyncpg://postgres@127.0.0.1:5432/test), left out with the reason
when it does not answer; tables are made and dropped per run.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import statistics

from _timing import interleaved

from mediator.outbox import current_session
from mediator.sagas import Saga, SagaRunner, SqlSagaStore, Step
from tests.outbox_support import Database, _probe, database_url, open_database

BUDGET = 1.5
STEPS = 3


@attrs.define
class Work:
    order_id: int
    done: int = 0


class Writes(Saga[Work]):
    """A saga of `count` steps, each inserting one ledger row."""

    def __init__(self, ledger: str, count: int) -> None:
        self.name = f"writes-{count}"
        self.count = count
        self.insert = text(f"INSERT INTO {ledger} (order_id, entry) VALUES (:o, :e)")

    def steps(self) -> list[Step[Work]]:
        return [Step(self.write, name=f"write-{i}") for i in range(self.count)]

    async def write(self, work: Work) -> Work:
        await current_session().execute(self.insert, {"o": work.order_id, "e": "step"})
        return attrs.evolve(work, done=work.done + 1)


async def bench(db: Database, n: int, repeats: int) -> None:
    key = "INTEGER PRIMARY KEY" if db.kind == "sqlite" else "SERIAL PRIMARY KEY"
    ledger = await db.table("ledger", f"id {key}, order_id INTEGER NOT NULL, entry TEXT NOT NULL")
    store = SqlSagaStore(db.outbox)
    await store.create_table()
    sagas = {count: Writes(ledger, count) for count in (1, STEPS, STEPS + 1)}
    runner = SagaRunner(store, sagas.values())
    insert = sagas[1].insert
    counter = iter(range(10**9))

    async def by_hand(count: int) -> None:
        # `count` steps by hand: each one transaction inserting its ledger row.
        for _ in range(count):
            async with db.outbox.unit_of_work() as session:
                await session.execute(insert, {"o": next(counter), "e": "step"})

    def sagas_of(steps: int) -> Callable[[int], Awaitable[None]]:
        saga = sagas[steps].name

        async def run(count: int) -> None:
            for _ in range(count):
                await runner.start(saga, Work(order_id=next(counter)))

        return run

    try:
        hand, one, three, four = await interleaved(
            [by_hand, sagas_of(1), sagas_of(STEPS), sagas_of(STEPS + 1)], n, repeats
        )
    finally:
        await store.drop_table()
    # Per round (the bodies ran side by side): a step's cost is what three
    # more steps added, over three.
    steps = [(f - o) / STEPS for f, o in zip(four, one, strict=True)]
    first_record = [o - s for o, s in zip(one, steps, strict=True)]
    whole = [t / (STEPS * h) for t, h in zip(three, hand, strict=True)]
    ratio = statistics.median(s / h for s, h in zip(steps, hand, strict=True))
    verdict = "ok" if ratio <= BUDGET else "OVER BUDGET"
    print(
        f"{db.kind + ': a saga step writing a row, vs by hand':<58} "
        f"hand {statistics.median(hand) * 1e6:8.2f} us  "
        f"step {statistics.median(steps) * 1e6:8.2f} us  "
        f"ratio {ratio:5.2f} (budget <= {BUDGET}) {verdict}"
    )
    print(
        f"{db.kind + ': a saga first record (once per saga)':<58} "
        f"{statistics.median(first_record) * 1e6:8.2f} us (reference, no budget)"
    )
    print(
        f"{db.kind + ': a whole saga of 3 steps, vs 3 by hand':<58} "
        f"ratio {statistics.median(whole):5.2f} (reference, no budget)"
    )


async def main(quick: bool) -> None:
    n, repeats = (60, 3) if quick else (300, 9)
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
