"""The transactional outbox and the idempotent inbox, on SQLAlchemy 2 (async).

Needs the ``outbox`` extra: ``pip install 'mediator-toolkit[outbox]'``.

```python
from mediator.outbox import Inbox, Outbox, OutboxRelay, current_session, sqlite_engine

outbox = Outbox(sqlite_engine("sqlite+aiosqlite:///app.db"))
await outbox.create_tables()
mediator = Mediator(
    request_map=requests,
    event_emitter=EventEmitter(event_map=events, message_broker=outbox),
    unit_of_work=outbox.unit_of_work,    # each send: one transaction
)
async with OutboxRelay(outbox, broker):  # publishes what committed
    await mediator.send(PlaceOrder(total_cents=4200))
```

- `Outbox`: the emitter's broker. A send's broker-bound events become rows
  of the outbox table, written in the send's transaction; handlers write
  through `current_session()`. Commit after the handler and the local event
  handlers succeeded, rollback otherwise: rows and events together or not
  at all, and nothing reaches a broker before the commit.
- `OutboxRelay`: publishes committed rows through any broker, in batches,
  with retries, dead rows, cleanup, and (on PostgreSQL) several relays
  sharing the work.
- `Inbox`: ``EventConsumer(inbox=Inbox(outbox, consumer="billing"))``
  handles each message id once, in the transaction of the handlers' writes.

PostgreSQL (asyncpg) and SQLite (aiosqlite) are supported. The docs page
"Outbox and inbox" holds the guarantees, the failure table and the SQL.
"""

try:
    import sqlalchemy as _sqlalchemy  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "mediator.outbox needs SQLAlchemy 2 with asyncio support and a driver: "
        "pip install 'mediator-toolkit[outbox]'"
    ) from exc

from mediator.outbox._inbox import DEFAULT_INBOX_WINDOW as DEFAULT_INBOX_WINDOW
from mediator.outbox._inbox import Inbox as Inbox
from mediator.outbox._inbox import InboxEntry as InboxEntry
from mediator.outbox._outbox import PUBLISH_FAILED as PUBLISH_FAILED
from mediator.outbox._outbox import Outbox as Outbox
from mediator.outbox._relay import OutboxRelay as OutboxRelay
from mediator.outbox._relay_stats import RelayRound as RelayRound
from mediator.outbox._relay_stats import RelayStats as RelayStats
from mediator.outbox._sqlite import sqlite_engine as sqlite_engine
from mediator.outbox._tables import DEAD as DEAD
from mediator.outbox._tables import PENDING as PENDING
from mediator.outbox._tables import SENT as SENT
from mediator.outbox._tables import OutboxTables as OutboxTables
from mediator.outbox._unit_of_work import OutboxError as OutboxError
from mediator.outbox._unit_of_work import UnitOfWork as UnitOfWork
from mediator.outbox._unit_of_work import current_session as current_session

__all__ = [
    "DEAD",
    "DEFAULT_INBOX_WINDOW",
    "PENDING",
    "PUBLISH_FAILED",
    "SENT",
    "Inbox",
    "InboxEntry",
    "Outbox",
    "OutboxError",
    "OutboxRelay",
    "OutboxTables",
    "RelayRound",
    "RelayStats",
    "UnitOfWork",
    "current_session",
    "sqlite_engine",
]
