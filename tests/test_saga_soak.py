"""The saga kill -9 soak: a process running orders' sagas over SQL is killed
with SIGKILL at random points and started again, until every saga ended;
then each must have ended completed or compensated, with each ledger entry
of its steps written exactly once, none stuck and none lost.

CI runs it small; ``SAGA_SOAK=500 SAGA_SOAK_KILLS=10`` runs the issue's size.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from random import Random

import pytest
from sqlalchemy import text

from mediator.sagas import SagaStatus, SqlSagaStore
from tests.outbox_support import ROOT, open_database
from tests.saga_processes import expected_ledger, saga_id

SAGAS = int(os.environ.get("SAGA_SOAK", "120"))
KILLS = int(os.environ.get("SAGA_SOAK_KILLS", "4"))
CONCURRENCY = 16
STEP = 60.0
"""Seconds one run of the process may go without finishing a saga."""


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
async def test_sagas_killed_at_random_points_all_end_once(kind: str, tmp_path: Path) -> None:
    db = await open_database(kind, tmp_path)
    store = SqlSagaStore(db.outbox)
    try:
        key = "INTEGER PRIMARY KEY" if kind == "sqlite" else "SERIAL PRIMARY KEY"
        await db.table("ledger", f"id {key}, order_id INTEGER NOT NULL, entry TEXT NOT NULL")
        await store.create_table()
        seed = int(time.time())
        points = sorted(Random(seed).sample(range(1, SAGAS), KILLS))
        started = time.monotonic()
        finished: set[int] = set()
        kills = resumed = 0
        for point in [*points, None]:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.saga_processes",
                db.url,
                db.prefix,
                str(SAGAS),
                str(CONCURRENCY),
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=asyncio.subprocess.PIPE,
            )
            assert process.stdout is not None
            try:
                while True:
                    async with asyncio.timeout(STEP):
                        line = (await process.stdout.readline()).decode()
                    if not line or line == "all done\n":
                        break
                    if line.startswith("finished "):
                        finished.add(int(line.split()[1]))
                    resumed += line.startswith("resumed ")
                    if point is not None and len(finished) >= point:
                        process.send_signal(signal.SIGKILL)
                        kills += 1
                        break
                status = await asyncio.wait_for(process.wait(), STEP)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            if point is None:
                assert status == 0, f"the last run exited with {status} (seed {seed})"

        states = {state.id: state for state in await store.states()}
        by_status: dict[str, int] = defaultdict(int)
        for state in states.values():
            by_status[state.status.value] += 1
        async with db.engine.connect() as connection:
            rows = await connection.execute(
                text(f"SELECT order_id, entry FROM {db.prefix}_ledger ORDER BY id")
            )
            ledger: dict[int, list[str]] = defaultdict(list)
            for order_id, entry in rows:
                ledger[order_id].append(entry)
        wrong = {
            n: ledger[n] for n in range(SAGAS) if ledger[n] != expected_ledger(n)
        }  # an entry twice, or missing
        print(
            f"{SAGAS} sagas on {kind}, killed {kills} times (seed {seed}), {resumed} resumed: "
            f"{dict(by_status)}, ledgers wrong {len(wrong)}, "
            f"{time.monotonic() - started:.1f} s"
        )
        assert len(states) == SAGAS, "lost: sagas never kept"
        for n in range(SAGAS):
            state = states[saga_id(db.prefix, n)]
            ended = SagaStatus.COMPLETED if expected_ledger(n)[-1] == "ship" else None
            assert state.status is (ended or SagaStatus.COMPENSATED), (n, state.summary())
        assert wrong == {}, f"ledgers not written exactly once (seed {seed}): {wrong}"
    finally:
        await store.drop_table()
        await db.close()
