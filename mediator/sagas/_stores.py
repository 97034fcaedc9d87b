"""Where sagas' states are kept: the store protocol, and the in-memory store
(the SQL one, beside the outbox, is in `mediator.sagas._sql`)."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol

import attrs

from mediator.sagas._model import SagaConflictError, SagaState, SagaStatus

__all__ = ["MemorySagaStore", "SagaStore", "conflict", "now", "utc"]


class SagaStore(Protocol):
    """Keeps sagas' states, with an optimistic lock on `SagaState.version`."""

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """One transaction: a step's action runs in it with the saving of its
        outcome, so that both happen or neither does."""
        ...

    async def create(self, state: SagaState) -> None:
        """Keep a new saga (`SagaConflictError` when its id is taken)."""
        ...

    async def save(self, state: SagaState) -> SagaState:
        """Record `state` over the kept one of the same version; the kept
        state, its version one more. `SagaConflictError` when the kept
        version is another: someone else changed it since it was loaded."""
        ...

    async def load(self, saga_id: uuid.UUID) -> SagaState | None:
        """The kept state of `saga_id`, or None."""
        ...

    async def states(
        self, statuses: frozenset[SagaStatus] | None = None, *, limit: int | None = None
    ) -> list[SagaState]:
        """Kept states (of `statuses`, or all), oldest first."""
        ...

    async def counts(self) -> dict[str, int]:
        """How many sagas are in each status."""
        ...


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def utc(value: dt.datetime) -> dt.datetime:
    """A time read back from a database, in UTC (SQLite hands it back naive)."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


class MemorySagaStore:
    """Sagas kept in this process: for tests and the embedded default. What
    a step writes elsewhere does not commit with its state."""

    def __init__(self) -> None:
        self._states: dict[uuid.UUID, SagaState] = {}

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """Nothing to make atomic here."""
        yield

    async def create(self, state: SagaState) -> None:
        if state.id in self._states:
            raise SagaConflictError(f"saga {state.id} exists already")
        self._states[state.id] = attrs.evolve(state)

    async def save(self, state: SagaState) -> SagaState:
        kept = self._states.get(state.id)
        if kept is None or kept.version != state.version:
            raise SagaConflictError(conflict(state, None if kept is None else kept.version))
        saved = attrs.evolve(state, version=state.version + 1, updated_at=now())
        self._states[state.id] = saved
        return attrs.evolve(saved)

    async def load(self, saga_id: uuid.UUID) -> SagaState | None:
        kept = self._states.get(saga_id)
        return None if kept is None else attrs.evolve(kept)

    async def states(
        self, statuses: frozenset[SagaStatus] | None = None, *, limit: int | None = None
    ) -> list[SagaState]:
        found = sorted(
            (s for s in self._states.values() if statuses is None or s.status in statuses),
            key=lambda s: s.created_at,
        )
        return [attrs.evolve(s) for s in found[:limit]]

    async def counts(self) -> dict[str, int]:
        counts = dict.fromkeys((s.value for s in SagaStatus), 0)
        for state in self._states.values():
            counts[state.status.value] += 1
        return counts


def conflict(state: SagaState, kept: int | None) -> str:
    if kept is None:
        return f"saga {state.id} ({state.saga}) is not kept: create it first"
    return (
        f"saga {state.id} ({state.saga}) is at version {kept}, not {state.version}: another "
        "runner changed it since it was loaded, and carries on with it"
    )
