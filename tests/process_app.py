"""A service with a saga runner and a process manager over SQLite, for
``mediator sagas`` tests of process instances: ``tests.process_app:app``.
Its database is ``$SAGA_APP_DB`` with table prefix ``$SAGA_APP_PREFIX``."""

from __future__ import annotations

import datetime as dt
import os

import attrs

from brokers.memory import InMemoryMessageBroker
from mediator import EventMap, NotificationEvent, Service
from mediator.outbox import Outbox, sqlite_engine
from mediator.sagas import (
    Process,
    ProcessManager,
    SagaRunner,
    SqlProcessStore,
    SqlSagaStore,
    TimeoutDispatcher,
    handles,
)
from tests.saga_app import SendParcel


@attrs.frozen(kw_only=True)
class ParcelSent(NotificationEvent):
    parcel_id: int


@attrs.frozen(kw_only=True)
class ParcelDelivered(NotificationEvent):
    parcel_id: int


@attrs.frozen(kw_only=True)
class ParcelLate(NotificationEvent):
    parcel_id: int


@attrs.define
class Tracking:
    parcel_id: int
    delivered: bool = False


class ParcelTracking(ProcessManager[Tracking]):
    @handles(ParcelSent, key="parcel_id", starts=True)
    async def sent(self, process: Process[Tracking], event: ParcelSent) -> None:
        process.state = Tracking(parcel_id=event.parcel_id)
        process.request_timeout(dt.timedelta(days=2), ParcelLate(parcel_id=event.parcel_id))

    @handles(ParcelDelivered, key="parcel_id")
    async def delivered(self, process: Process[Tracking], event: ParcelDelivered) -> None:
        process.state = Tracking(parcel_id=event.parcel_id, delivered=True)
        process.complete()

    @handles(ParcelLate, key="parcel_id")
    async def late(self, process: Process[Tracking], event: ParcelLate) -> None:
        process.complete()


def build() -> Service:
    outbox = Outbox(sqlite_engine(os.environ["SAGA_APP_DB"]), prefix=os.environ["SAGA_APP_PREFIX"])
    runner = SagaRunner(SqlSagaStore(outbox), [SendParcel()])
    store = SqlProcessStore(outbox)
    events = EventMap()
    tracking = ParcelTracking()
    tracking.bind(events, store)
    return Service(
        InMemoryMessageBroker(),
        name="parcels",
        event_map=events,
        sagas=[runner],
        process_managers=[TimeoutDispatcher(store, [tracking])],
    )


app = build
