"""A service with a saga runner over SQLite, for ``mediator sagas`` tests:
``tests.saga_app:app``. Its database is ``$SAGA_APP_DB`` with table prefix
``$SAGA_APP_PREFIX``; while ``$SAGA_APP_REFUND_FAILS`` is set, refunds fail,
so a saga whose shipment fails ends failed."""

from __future__ import annotations

import os

import attrs

from brokers.memory import InMemoryMessageBroker
from mediator import Backoff, Retry, Service
from mediator.outbox import Outbox, sqlite_engine
from mediator.sagas import Saga, SagaRunner, SqlSagaStore, Step


@attrs.define
class Parcel:
    parcel_id: int


class SendParcel(Saga[Parcel]):
    compensation_retry = Retry(attempts=2, backoff=Backoff(initial=0, jitter=0))

    def steps(self) -> list[Step[Parcel]]:
        return [Step(self.charge, compensate=self.refund), Step(self.ship)]

    async def charge(self, parcel: Parcel) -> None:
        pass

    async def refund(self, parcel: Parcel) -> None:
        if os.environ.get("SAGA_APP_REFUND_FAILS"):
            raise RuntimeError(f"the bank refuses the refund of parcel {parcel.parcel_id}")

    async def ship(self, parcel: Parcel) -> None:
        raise RuntimeError(f"no carrier for parcel {parcel.parcel_id}")


def build() -> Service:
    outbox = Outbox(sqlite_engine(os.environ["SAGA_APP_DB"]), prefix=os.environ["SAGA_APP_PREFIX"])
    runner = SagaRunner(SqlSagaStore(outbox), [SendParcel()])
    return Service(InMemoryMessageBroker(), name="parcels", sagas=[runner])


app = build
