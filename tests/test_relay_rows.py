"""The relay's SQL without a database (mediator/outbox/_relay_rows.py): how
relays share rows, and that no relay changes a row another one holds
(docs/outbox.md, "Several relays" and "The lease")."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from mediator.outbox import Outbox
from mediator.outbox._relay_rows import RelayStatements

URLS = {
    "postgresql": "postgresql+asyncpg://relay@localhost/unused",
    "sqlite": "sqlite+aiosqlite:///unused.db",
}


def _statements(dialect: str, batch_size: int = 100) -> tuple[Outbox, RelayStatements]:
    # No connection is opened: the statements are only compiled.
    outbox = Outbox(create_async_engine(URLS[dialect]), prefix="shop")
    return outbox, RelayStatements(outbox, batch_size)


def _sql(outbox: Outbox, statement: object) -> str:
    compiled = statement.compile(dialect=outbox.engine.dialect)  # type: ignore[attr-defined]
    return " ".join(str(compiled).split())


def test_postgresql_relays_skip_the_rows_others_hold_and_claim_in_turn() -> None:
    outbox, statements = _statements("postgresql")
    claim = _sql(outbox, statements.claim)
    assert "FOR UPDATE OF shop_outbox SKIP LOCKED" in claim
    assert "ORDER BY shop_outbox.id" in claim
    assert "pg_advisory_xact_lock" in _sql(outbox, statements.claim_lock)


def test_sqlite_claims_in_one_statement_without_a_lock_of_its_own() -> None:
    outbox, statements = _statements("sqlite")
    assert statements.claim_lock is None
    assert "FOR UPDATE" not in _sql(outbox, statements.claim)


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_a_claim_takes_at_most_a_batch(dialect: str) -> None:
    outbox, statements = _statements(dialect, batch_size=7)
    compiled = statements.claim.compile(dialect=outbox.engine.dialect)
    assert 7 in compiled.params.values()


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
@pytest.mark.parametrize("change", ["renew", "mark_sent", "mark_failed", "release"])
def test_a_relay_changes_only_the_pending_rows_it_still_holds(dialect: str, change: str) -> None:
    outbox, statements = _statements(dialect)
    statement = getattr(statements, change)
    where = _sql(outbox, statement).split(" WHERE ", 1)[1]
    assert "shop_outbox.locked_by = " in where
    assert "shop_outbox.status = " in where
    assert "pending" in statement.compile(dialect=outbox.engine.dialect).params.values()
