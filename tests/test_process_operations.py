"""Operating process managers (issue 23; docs/sagas.md, "Operations"): a
store counts its instances by state with their pending timeouts; a Service
given a process manager's `TimeoutDispatcher` runs it and reports them in
`stats()` and on the status page; ``mediator sagas`` lists, filters and
shows process instances beside sagas; the AsyncAPI document says which
events a process manager consumes and which commands it sends."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest

from brokers.memory import InMemoryMessageBroker
from mediator import EventMap, Request, Service
from mediator.sagas import (
    MemoryProcessStore,
    MemorySagaStore,
    Process,
    ProcessManager,
    ProcessStore,
    SagaRunner,
    TimeoutDispatcher,
    handles,
)
from tests.outbox_support import Database, open_database
from tests.process_app import ParcelDelivered, ParcelLate, ParcelSent, ParcelTracking
from tests.test_sagas import sagas_command


async def deliver(events: EventMap, event: Any) -> None:
    """Hand `event` to the handlers `events` binds to it, as a consumer does."""
    for binding in events.handlers_for(type(event)):
        handler: Any = binding.handler
        await handler(event)


async def track(store: ProcessStore) -> EventMap:
    """Parcels 1, 2 and 3 sent (a timeout each), parcel 2 delivered."""
    events = EventMap()
    ParcelTracking().bind(events, store)
    for parcel_id in (1, 2, 3):
        await deliver(events, ParcelSent(parcel_id=parcel_id))
    await deliver(events, ParcelDelivered(parcel_id=2))
    return events


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ProcessStore]:
    if request.param == "memory":
        yield MemoryProcessStore()
        return
    from mediator.sagas import SqlProcessStore

    db: Database = await open_database(request.param, tmp_path)
    try:
        sql = SqlProcessStore(db.outbox)
        await sql.create_tables()
        try:
            yield sql
        finally:
            await sql.drop_tables()
    finally:
        await db.close()


async def test_a_store_counts_its_instances_by_state_with_their_pending_timeouts(
    store: ProcessStore,
) -> None:
    await track(store)
    assert await store.counts() == {"ParcelTracking": {"active": 2, "completed": 1, "timeouts": 3}}
    active = await store.instances(finished=False)
    assert [(i.key, i.status) for i in active] == [("1", "active"), ("3", "active")]
    assert [i.key for i in await store.instances(finished=True)] == ["2"]
    assert [i.key for i in await store.instances("ParcelTracking", limit=1)] == ["1"]
    assert await store.instances("Other") == []
    [late] = await store.timeouts_for("ParcelTracking", "3")
    assert (late.event, orjson.loads(late.payload)["parcel_id"]) == ("ParcelLate", 3)
    assert await store.timeouts_for("ParcelTracking", "9") == []
    [delivered] = await store.instances(finished=True)
    summary = delivered.summary()
    assert (summary["id"], summary["status"], summary["version"]) == (
        "ParcelTracking/2",
        "completed",
        2,
    )


class Counting(TimeoutDispatcher):
    """A dispatcher that says when it has counted its instances."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counted_once = asyncio.Event()

    async def count(self) -> dict[str, dict[str, int]]:
        try:
            return await super().count()
        finally:
            self.counted_once.set()


async def test_a_service_runs_its_process_managers_timeouts_and_reports_their_instances() -> None:
    store = MemoryProcessStore()
    events = await track(store)
    due = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    # Parcel 1's and 3's timeouts fire on the service's first round; 2's is ignored.
    dispatcher = Counting(store, [ParcelTracking()], clock=lambda: due)
    service = Service(InMemoryMessageBroker(), event_map=events, process_managers=[dispatcher])
    assert "process_managers" in service.stats()  # before start: not counted yet
    assert service.stats()["process_managers"][0]["counted_at"] is None
    service.background(dispatcher.run)  # as the docs had it before: still one dispatcher
    await service.start()
    try:
        tasks = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("mediator:")]
        assert tasks == ["mediator:TimeoutDispatcher.run"]
        async with asyncio.timeout(10):
            await dispatcher.counted_once.wait()
        [stats] = service.stats()["process_managers"]
    finally:
        await service.stop()
    assert stats["process_managers"] == ["ParcelTracking"]
    assert stats["timeouts_delivered"] == 3
    assert (stats["active"], stats["completed"], stats["timeouts_pending"]) == (0, 3, 0)
    assert stats["by_process"] == {"ParcelTracking": {"active": 0, "completed": 3, "timeouts": 0}}
    assert stats["counted_at"] is not None
    assert [i.finished for i in await store.instances()] == [True, True, True]


async def test_the_status_page_shows_process_instances_beside_sagas() -> None:
    from mediator._operations.status_page import DeadLetterView, render_page

    store = MemoryProcessStore()
    await track(store)
    dispatcher = TimeoutDispatcher(store, [ParcelTracking()])
    runner = SagaRunner(MemorySagaStore(), [])
    service = Service(
        InMemoryMessageBroker(), name="parcels", sagas=[runner], process_managers=[dispatcher]
    )
    await dispatcher.count()
    page = render_page(stats=service.stats(), dead_letters=DeadLetterView(note="-"), csrf="t")
    section = page.split('<section id="stats-process_managers"><h2>Process managers</h2>')[1]
    section = section.split("</section>")[0]
    assert "ParcelTracking" in section
    assert "<th>active</th><td>2</td>" in section
    assert "<th>timeouts_pending</th><td>3</td>" in section
    assert '<section id="stats-sagas"><h2>Sagas</h2>' in page


async def test_process_instances_are_listed_by_kind_and_state_and_shown_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.process_app import build
    from tests.saga_app import Parcel, SendParcel

    env = {"SAGA_APP_DB": f"sqlite+aiosqlite:///{tmp_path / 'parcels.db'}", "SAGA_APP_PREFIX": "p"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    service = build()
    [runner] = service.sagas
    [dispatcher] = service.process_managers
    await runner.store.create_table()  # type: ignore[attr-defined]
    await dispatcher.store.create_tables()  # type: ignore[attr-defined]
    saga = await runner.start(SendParcel, Parcel(parcel_id=1))
    for parcel_id in (1, 2, 3):
        await deliver(service.event_map, ParcelSent(parcel_id=parcel_id))
    await deliver(service.event_map, ParcelDelivered(parcel_id=2))
    app = "tests.process_app:app"
    try:
        status, out, err = await sagas_command("list", app, "--json", env=env)
        assert (status, err) == (0, "")
        document = orjson.loads(out)
        assert [s["id"] for s in document["sagas"]] == [str(saga.id)]
        assert document["process_counts"] == {
            "ParcelTracking": {"active": 2, "completed": 1, "timeouts": 3}
        }
        assert [p["id"] for p in document["processes"]] == [f"ParcelTracking/{n}" for n in "123"]

        status, out, _ = await sagas_command("list", app, "--kind", "process", env=env)
        assert status == 0
        assert out.splitlines()[0] == "ParcelTracking: active 2, completed 1, timeouts pending 3"
        assert str(saga.id) not in out
        assert "ParcelTracking/3" in out

        status, out, _ = await sagas_command(
            "list", app, "--kind", "process", "--status", "completed", "--json", env=env
        )
        assert [p["id"] for p in orjson.loads(out)["processes"]] == ["ParcelTracking/2"]
        status, out, _ = await sagas_command("list", app, "--status", "active", "--json", env=env)
        document = orjson.loads(out)
        assert (document["sagas"], len(document["processes"])) == ([], 2)
        status, out, _ = await sagas_command("list", app, "--kind", "saga", "--json", env=env)
        document = orjson.loads(out)
        assert (len(document["sagas"]), document["processes"]) == (1, [])
        status, out, _ = await sagas_command("list", app, "--saga", "SendParcel", "--json", env=env)
        assert orjson.loads(out)["processes"] == []

        status, out, _ = await sagas_command("show", app, "ParcelTracking/3", env=env)
        assert status == 0
        assert "status:      active" in out
        assert 'state:       {"parcel_id":3,"delivered":false}' in out
        assert "ParcelLate due " in out
        status, out, _ = await sagas_command("show", app, "ParcelTracking/2", "--json", env=env)
        shown = orjson.loads(out)
        assert (shown["status"], shown["state"]["delivered"]) == ("completed", True)
        assert [t["event"] for t in shown["timeouts"]] == ["ParcelLate"]

        status, _, err = await sagas_command("show", app, "ParcelTracking/9", env=env)
        assert (status, "no process instance ParcelTracking/9" in err) == (1, True)
        status, _, err = await sagas_command("retry", app, "ParcelTracking/1", env=env)
        assert (status, "process instance" in err and "retried" in err) == (2, True)
        status, _, err = await sagas_command("show", app, "no-slash", env=env)
        assert (status, "NAME/KEY" in err) == (2, True)
    finally:
        await runner.store.outbox.engine.dispose()  # type: ignore[attr-defined]


@attrs.frozen(kw_only=True)
class ShipParcel(Request[None]):
    parcel_id: int


class Dispatch(ProcessManager[Any]):
    """Ships a parcel once it is paid for."""

    @handles(ParcelSent, key="parcel_id", starts=True)
    async def sent(self, process: Process[Any], event: ParcelSent) -> None:
        process.state = {"parcel_id": event.parcel_id}
        await process.send(ShipParcel(parcel_id=event.parcel_id))
        process.request_timeout(dt.timedelta(days=1), ParcelLate(parcel_id=event.parcel_id))

    @handles(ParcelLate, key=lambda event: event.parcel_id)
    async def late(self, process: Process[Any], event: ParcelLate) -> None:
        process.raise_event(ParcelDelivered(parcel_id=event.parcel_id))
        process.complete()


def test_the_asyncapi_document_shows_what_a_process_manager_consumes_and_sends() -> None:
    from mediator._operations.asyncapi import asyncapi_document

    events = EventMap()
    Dispatch().bind(events, MemoryProcessStore())
    service = Service(InMemoryMessageBroker(channel_prefix="shop"), event_map=events)
    service.subscribe("shop:notification_event:Parcel*", group="dispatch")
    document = asyncapi_document(service)
    operations = document["operations"]

    received = operations["receiveParcelSent_dispatch"]
    assert received["action"] == "receive"
    assert received["x-process-managers"] == ["Dispatch"]
    assert "Process manager `Dispatch`" in received["description"]
    assert "sends ShipParcel" in received["description"]
    assert operations["receiveParcelLate_dispatch"]["x-process-managers"] == ["Dispatch"]

    described = document["x-process-managers"]["Dispatch"]
    assert described["summary"] == "Ships a parcel once it is paid for."
    assert described["sends"] == ["ShipParcel"]
    late, sent = described["consumes"]
    assert sent == {
        "event": "ParcelSent",
        "message": {"$ref": "#/components/messages/ParcelSent"},
        "handler": "sent",
        "key": "parcel_id",
        "starts": True,
        "operations": [{"$ref": "#/operations/receiveParcelSent_dispatch"}],
        "sends": ["ShipParcel"],
        "raises": [],
        "timeouts": ["ParcelLate"],
    }
    assert (late["event"], late["key"], late["starts"], late["raises"]) == (
        "ParcelLate",
        None,
        False,
        ["ParcelDelivered"],
    )
    # A timeout comes back to the process manager through its store, not a channel.
    assert "sendParcelLate" not in operations
    assert "sendParcelDelivered" in operations


def test_a_service_without_process_managers_has_no_such_part() -> None:
    from mediator._operations.asyncapi import asyncapi_document

    service = Service(InMemoryMessageBroker(channel_prefix="shop"))
    assert "x-process-managers" not in asyncapi_document(service)
    assert "process_managers" not in service.stats()
