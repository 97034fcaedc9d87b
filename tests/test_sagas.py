"""Orchestrated sagas (mediator.sagas, docs/sagas.md): the classic order
saga on every store (in memory, SQLite, PostgreSQL): completed, compensated
after a failed step in reverse order, a failing compensation retried then
failed, retried and abandoned by an operator; a run stopped mid-step resumed
without running a recorded step again; on SQL, a step's writes commit with
its recorded outcome; the optimistic lock."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
from sqlalchemy import text

from mediator import Backoff, Retry
from mediator.outbox import current_session
from mediator.sagas import (
    MemorySagaStore,
    Saga,
    SagaConflictError,
    SagaError,
    SagaRunner,
    SagaStatus,
    SagaStore,
    Step,
)
from tests.outbox_support import ROOT, Database, open_database

STORES = ("memory", "sqlite", "postgresql")
NO_WAIT = Backoff(initial=0, jitter=0)


@attrs.define
class Order:
    order_id: int
    total_cents: int
    reservation: str | None = None
    payment: str | None = None
    shipment: str | None = None


class Shop:
    """The services the saga calls, with what each did, and failures to order."""

    def __init__(self, db: Database | None) -> None:
        self.db = db
        self.calls: list[str] = []
        self.fail: dict[str, int] = {}
        """Step name → how many more calls of it fail."""
        self.hold: dict[str, asyncio.Event] = {}
        """Step name → an event the call waits for (a crash lands meanwhile)."""
        self.entered: dict[str, asyncio.Event] = {}
        self.ship_timeout: float | None = None

    async def call(self, name: str, order: Order) -> None:
        self.calls.append(name)
        if name in self.hold:
            self.entered.setdefault(name, asyncio.Event()).set()
            await self.hold[name].wait()
        if self.fail.get(name, 0) > 0:
            self.fail[name] -= 1
            raise RuntimeError(f"{name} refused order {order.order_id}")
        if self.db is not None:  # the step's own write, in the step's transaction
            await current_session().execute(
                text(f"INSERT INTO {self.db.prefix}_ledger (order_id, entry) VALUES (:o, :e)"),
                {"o": order.order_id, "e": name},
            )


class PlaceOrder(Saga[Order]):
    compensation_retry = Retry(attempts=3, backoff=NO_WAIT)

    def __init__(self, shop: Shop) -> None:
        self.shop = shop

    def steps(self) -> list[Step[Order]]:
        return [
            Step(self.reserve_stock, compensate=self.release_stock),
            Step(
                self.charge_payment,
                compensate=self.refund_payment,
                retry=Retry(attempts=2, backoff=NO_WAIT),
            ),
            Step(self.ship, timeout=self.shop.ship_timeout),
        ]

    async def reserve_stock(self, order: Order) -> Order:
        await self.shop.call("reserve_stock", order)
        return attrs.evolve(order, reservation=f"r-{order.order_id}")

    async def release_stock(self, order: Order) -> Order:
        await self.shop.call("release_stock", order)
        return attrs.evolve(order, reservation=None)

    async def charge_payment(self, order: Order) -> Order:
        await self.shop.call("charge_payment", order)
        return attrs.evolve(order, payment=f"p-{order.order_id}")

    async def refund_payment(self, order: Order) -> None:
        await self.shop.call("refund_payment", order)

    async def ship(self, order: Order) -> Order:
        await self.shop.call("ship", order)
        return attrs.evolve(order, shipment=f"s-{order.order_id}")


@attrs.define
class World:
    store: SagaStore
    shop: Shop
    db: Database | None

    def runner(self, **options: Any) -> SagaRunner:
        return SagaRunner(self.store, [PlaceOrder(self.shop)], **options)

    async def ledger(self) -> list[tuple[int, str]]:
        assert self.db is not None
        async with self.db.engine.connect() as connection:
            rows = await connection.execute(
                text(f"SELECT order_id, entry FROM {self.db.prefix}_ledger ORDER BY id")
            )
            return [(row[0], row[1]) for row in rows]


@pytest.fixture(params=STORES)
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    if request.param == "memory":
        yield World(MemorySagaStore(), Shop(None), None)
        return
    from mediator.sagas import SqlSagaStore

    db = await open_database(request.param, tmp_path)
    try:
        key = "INTEGER PRIMARY KEY" if db.kind == "sqlite" else "SERIAL PRIMARY KEY"
        await db.table("ledger", f"id {key}, order_id INTEGER NOT NULL, entry TEXT NOT NULL")
        store = SqlSagaStore(db.outbox)
        await store.create_table()
        try:
            yield World(store, Shop(db), db)
        finally:
            await store.drop_table()
    finally:
        await db.close()


async def test_the_order_saga_completes_with_each_steps_context(world: World) -> None:
    result = await world.runner().start(PlaceOrder, Order(order_id=1, total_cents=4200))
    assert result.status is SagaStatus.COMPLETED
    assert result.completed
    assert result.context == Order(1, 4200, reservation="r-1", payment="p-1", shipment="s-1")
    assert world.shop.calls == ["reserve_stock", "charge_payment", "ship"]
    assert (await world.store.load(result.id)) is not None
    assert (await world.runner().counts())["completed"] == 1


async def test_a_failed_payment_is_retried_then_the_stock_is_released(world: World) -> None:
    world.shop.fail["charge_payment"] = 2  # both attempts
    result = await world.runner().start(PlaceOrder, Order(order_id=2, total_cents=990))
    assert result.status is SagaStatus.COMPENSATED
    assert world.shop.calls == [
        "reserve_stock",
        "charge_payment",
        "charge_payment",
        "release_stock",
    ]
    assert result.context.reservation is None
    assert result.error is not None
    assert "step charge_payment: RuntimeError: charge_payment refused order 2" in result.error
    if world.db is not None:  # the failed attempts' writes rolled back with them
        assert await world.ledger() == [(2, "reserve_stock"), (2, "release_stock")]


async def test_a_failed_shipment_compensates_the_completed_steps_last_first(world: World) -> None:
    world.shop.fail["ship"] = 1
    result = await world.runner().start(PlaceOrder, Order(order_id=3, total_cents=100))
    assert result.status is SagaStatus.COMPENSATED
    assert world.shop.calls == [
        "reserve_stock",
        "charge_payment",
        "ship",
        "refund_payment",
        "release_stock",
    ]


async def test_a_shipment_that_times_out_refunds_the_payment_and_releases_the_stock(
    world: World,
) -> None:
    world.shop.ship_timeout = 0.05
    world.shop.hold["ship"] = asyncio.Event()  # the carrier never answers
    result = await world.runner().start(PlaceOrder, Order(order_id=11, total_cents=100))
    assert result.status is SagaStatus.COMPENSATED
    assert result.error is not None
    assert "step ship: timed out after 0.05 s" in result.error
    assert world.shop.calls[-2:] == ["refund_payment", "release_stock"]


async def test_a_compensation_that_keeps_failing_fails_the_saga_until_an_operator_acts(
    world: World,
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    runner = world.runner(sleep=sleep)
    world.shop.fail["ship"] = 1
    world.shop.fail["refund_payment"] = 3  # every attempt of compensation_retry
    result = await runner.start(PlaceOrder, Order(order_id=4, total_cents=100))
    assert result.status is SagaStatus.FAILED
    assert world.shop.calls.count("refund_payment") == 3
    assert len(slept) == 2  # between the three attempts
    assert result.error is not None
    assert "compensation failed: step charge_payment: RuntimeError: refund_payment" in result.error
    assert await runner.recover() == []  # a failed saga waits for an operator

    world.shop.calls.clear()
    retried = await runner.retry(result.id)  # mended: compensate from where it failed
    assert retried.status is SagaStatus.COMPENSATED
    assert world.shop.calls == ["refund_payment", "release_stock"]
    with pytest.raises(SagaError, match="only a saga that is failed can be retried"):
        await runner.retry(result.id)


async def test_an_abandoned_saga_is_never_run_again(world: World) -> None:
    runner = world.runner()
    world.shop.fail["ship"] = 1
    world.shop.fail["refund_payment"] = 3
    failed = await runner.start(PlaceOrder, Order(order_id=5, total_cents=100))
    abandoned = await runner.abandon(failed.id)
    assert abandoned.status is SagaStatus.ABANDONED
    assert await runner.recover() == []
    with pytest.raises(SagaError, match="is abandoned"):
        await runner.retry(failed.id)


async def stop_during(world: World, step: str, order: Order) -> uuid.UUID:
    """Start the saga and stop it (as a crash would) while `step` runs; its id."""
    world.shop.hold[step] = asyncio.Event()
    world.shop.entered[step] = asyncio.Event()
    saga_id = uuid.uuid4()
    run = asyncio.create_task(world.runner().start(PlaceOrder, order, saga_id=saga_id))
    async with asyncio.timeout(10):
        await world.shop.entered[step].wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    del world.shop.hold[step]
    return saga_id


async def test_a_run_stopped_mid_step_resumes_at_that_step_and_runs_no_recorded_step_again(
    world: World,
) -> None:
    saga_id = await stop_during(world, "charge_payment", Order(order_id=6, total_cents=100))
    state = await world.store.load(saga_id)
    assert state is not None
    assert (state.status, state.step, state.phase) == (SagaStatus.RUNNING, 1, "started")

    world.shop.calls.clear()
    [result] = await world.runner().recover()  # a new process, a new runner
    assert (result.id, result.status) == (saga_id, SagaStatus.COMPLETED)
    assert world.shop.calls == ["charge_payment", "ship"]  # reserve_stock was recorded done
    assert result.context.reservation == "r-6"  # the recorded step's context is kept
    if world.db is not None:  # the stopped attempt's write never committed
        assert await world.ledger() == [(6, "reserve_stock"), (6, "charge_payment"), (6, "ship")]


async def test_a_compensation_stopped_midway_resumes_compensating(world: World) -> None:
    world.shop.fail["ship"] = 1
    saga_id = await stop_during(world, "refund_payment", Order(order_id=7, total_cents=100))
    state = await world.store.load(saga_id)
    assert state is not None
    assert (state.status, state.step, state.phase) == (SagaStatus.COMPENSATING, 2, "started")
    world.shop.calls.clear()
    [result] = await world.runner().recover()
    assert result.status is SagaStatus.COMPENSATED
    assert world.shop.calls == ["refund_payment", "release_stock"]


async def test_starting_again_with_the_same_id_resumes_instead_of_starting_twice(
    world: World,
) -> None:
    saga_id = uuid.uuid4()
    first = await world.runner().start(PlaceOrder, Order(8, 100), saga_id=saga_id)
    again = await world.runner().start(PlaceOrder, Order(8, 100), saga_id=saga_id)
    assert (first.status, again.status) == (SagaStatus.COMPLETED, SagaStatus.COMPLETED)
    assert world.shop.calls == ["reserve_stock", "charge_payment", "ship"]


async def test_a_stale_version_is_refused_so_two_runners_never_both_record(world: World) -> None:
    result = await world.runner().start(PlaceOrder, Order(9, 100))
    state = await world.store.load(result.id)
    assert state is not None
    await world.store.save(state)
    with pytest.raises(SagaConflictError, match="another runner changed it"):
        await world.store.save(state)  # the version it was loaded at moved on


async def test_two_runners_resuming_one_saga_run_its_step_once(world: World) -> None:
    saga_id = await stop_during(world, "ship", Order(order_id=10, total_cents=100))
    world.shop.calls.clear()
    results = await asyncio.gather(world.runner().resume(saga_id), world.runner().resume(saga_id))
    assert {r.status for r in results} == {SagaStatus.COMPLETED}
    if world.db is not None:  # the runner that lost the race rolled its write back
        assert (await world.ledger()).count((10, "ship")) == 1


def test_mistakes_are_named() -> None:
    shop = Shop(None)
    with pytest.raises(ValueError, match="two sagas are named 'PlaceOrder'"):
        SagaRunner(MemorySagaStore(), [PlaceOrder(shop), PlaceOrder(shop)])

    class Twice(Saga[Order]):
        def steps(self) -> list[Step[Order]]:
            return [Step(self.go), Step(self.go)]

        async def go(self, order: Order) -> None:
            pass

    with pytest.raises(ValueError, match="two steps of one name"):
        SagaRunner(MemorySagaStore(), [Twice()])


async def test_unknown_sagas_and_contexts_of_another_type_are_refused() -> None:
    runner = SagaRunner(MemorySagaStore(), [PlaceOrder(Shop(None))])
    with pytest.raises(SagaError, match="no saga 'Elsewhere' was given to this SagaRunner"):
        await runner.start("Elsewhere", Order(1, 1))
    with pytest.raises(SagaError, match="runs over Order, not dict"):
        await runner.start(PlaceOrder, {"order_id": 1})
    with pytest.raises(SagaError, match=r"no saga .* is kept"):
        await runner.resume(uuid.uuid4())


class Recovering(SagaRunner):
    """A runner that says when its recovery is over."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recovered = asyncio.Event()

    async def recover(self) -> list[Any]:
        try:
            return await super().recover()
        finally:
            self.recovered.set()


@pytest.mark.parametrize("world", ["memory"], indirect=True)
async def test_a_service_resumes_its_runners_sagas_at_start_and_reports_them(
    world: World,
) -> None:
    from brokers.memory import InMemoryMessageBroker
    from mediator import Service

    saga_id = await stop_during(world, "ship", Order(order_id=12, total_cents=100))
    runner = Recovering(world.store, [PlaceOrder(world.shop)])
    service = Service(InMemoryMessageBroker(), name="orders", sagas=[runner])
    await service.start()
    try:
        async with asyncio.timeout(10):
            await runner.recovered.wait()
        [stats] = service.stats()["sagas"]
    finally:
        await service.stop()
    assert stats["sagas"] == ["PlaceOrder"]
    assert (stats["resumed"], stats["completed"]) == (1, 1)
    state = await world.store.load(saga_id)
    assert state is not None
    assert state.status is SagaStatus.COMPLETED


async def sagas_command(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run ``python -m mediator sagas ARGS``: (status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mediator",
        "sagas",
        *args,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_failed_sagas_are_listed_shown_retried_and_abandoned_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.saga_app import Parcel, SendParcel, build

    env = {"SAGA_APP_DB": f"sqlite+aiosqlite:///{tmp_path / 'sagas.db'}", "SAGA_APP_PREFIX": "p"}
    for name, value in {**env, "SAGA_APP_REFUND_FAILS": "1"}.items():
        monkeypatch.setenv(name, value)
    [runner] = build().sagas
    await runner.store.create_table()  # type: ignore[attr-defined]
    first = await runner.start(SendParcel, Parcel(parcel_id=1))
    second = await runner.start(SendParcel, Parcel(parcel_id=2))
    assert (first.status, second.status) == (SagaStatus.FAILED, SagaStatus.FAILED)
    monkeypatch.delenv("SAGA_APP_REFUND_FAILS")

    status, out, err = await sagas_command("list", "tests.saga_app:app", "--json", env=env)
    assert (status, err) == (0, "")
    document = orjson.loads(out)
    assert document["counts"]["failed"] == 2
    assert [s["id"] for s in document["sagas"]] == [str(first.id), str(second.id)]
    status, out, _ = await sagas_command(
        "list", "tests.saga_app:app", "--status", "failed", env=env
    )
    assert out.splitlines()[0].startswith("running 0, compensating 0, completed 0")
    assert str(first.id) in out
    assert "step ship: RuntimeError: no carrier for parcel 1" in out

    status, out, _ = await sagas_command("show", "tests.saga_app:app", str(first.id), env=env)
    assert status == 0
    assert 'context:     {"parcel_id":1}' in out

    status, out, _ = await sagas_command("retry", "tests.saga_app:app", str(first.id), env=env)
    assert (status, out.split(" (")[0]) == (0, f"saga SendParcel {first.id}: compensated")
    status, out, _ = await sagas_command("abandon", "tests.saga_app:app", str(second.id), env=env)
    assert (status, out) == (0, f"saga SendParcel {second.id}: abandoned ({second.error})\n")

    status, _, err = await sagas_command("retry", "tests.saga_app:app", str(second.id), env=env)
    assert status == 1
    assert "only a saga that is failed can be retried" in err
    status, _, err = await sagas_command("show", "tests.saga_app:app", "not-an-id", env=env)
    assert (status, "is not a saga id" in err) == (2, True)
    status, _, err = await sagas_command("list", "tests.saga_app:app", "--limit", "0", env=env)
    assert (status, "--limit 0" in err) == (2, True)
    await runner.store.outbox.engine.dispose()  # type: ignore[attr-defined]
