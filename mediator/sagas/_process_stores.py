"""Where process managers' instances and their timeouts are kept: the store
protocol and the in-memory store (the SQL one is `mediator.sagas._process_sql`)."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol

import attrs

from mediator.sagas._model import SagaConflictError

__all__ = [
    "Instance",
    "MemoryProcessStore",
    "ProcessStore",
    "Timeout",
    "conflict_message",
    "new_counts",
]


@attrs.define(kw_only=True)
class Instance:
    """One process manager's state for one key, as a store keeps it."""

    process: str
    """The process manager's `name`."""
    key: str
    """The correlation key its events carry (an order id)."""
    state: bytes
    """The state as JSON."""
    version: int
    """Grows by one with every change a store records: the optimistic lock."""
    finished: bool = False
    """Whether the process ended (`Process.complete`): later events are ignored."""
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def status(self) -> str:
        """``completed`` once the process ended, ``active`` before."""
        return "completed" if self.finished else "active"

    @property
    def id(self) -> str:
        """``{process}/{key}``: how `mediator sagas` names the instance."""
        return f"{self.process}/{self.key}"

    def summary(self) -> dict[str, Any]:
        """The instance as a JSON-ready dict (without its state), for the CLI."""
        return {
            "id": self.id,
            "process": self.process,
            "key": self.key,
            "status": self.status,
            "version": self.version,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@attrs.frozen(kw_only=True)
class Timeout:
    """An event due to a process manager's instance at `due_at`."""

    id: uuid.UUID
    process: str
    key: str
    due_at: dt.datetime
    event: str
    """The event's name in the process manager (its class name)."""
    payload: bytes
    """The event's fields as JSON."""


class ProcessStore(Protocol):
    """Keeps process instances (optimistic lock on `Instance.version`) and
    their timeouts."""

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """One transaction: an event's handling runs in it with the saving of
        the instance and of the timeouts it asked for."""
        ...

    async def load(self, process: str, key: str) -> Instance | None:
        """The instance of `process` for `key`, or None."""
        ...

    async def save(self, instance: Instance, *, new: bool) -> Instance:
        """Record `instance` (`new`: insert it), its version one more;
        `SagaConflictError` when another change was recorded since it was
        loaded (or, `new`, when one exists)."""
        ...

    async def add_timeout(self, timeout: Timeout) -> None:
        """Keep `timeout` until it is taken."""
        ...

    async def take_due(self, now: dt.datetime, limit: int) -> list[Timeout]:
        """Remove and return up to `limit` timeouts due by `now`, oldest first,
        in the open transaction (a rollback puts them back)."""
        ...

    async def instances(
        self,
        process: str | None = None,
        *,
        finished: bool | None = None,
        limit: int | None = None,
    ) -> list[Instance]:
        """The kept instances (of `process`, or all; only the completed ones
        or only the active ones with `finished`), oldest first, at most `limit`."""
        ...

    async def timeouts_for(self, process: str, key: str) -> list[Timeout]:
        """The timeouts of one instance not taken yet, oldest due first."""
        ...

    async def counts(self) -> dict[str, dict[str, int]]:
        """Per process manager's name: its ``active`` and ``completed``
        instances, and its ``timeouts`` not taken yet."""
        ...


class MemoryProcessStore:
    """Process instances kept in this process, for tests."""

    def __init__(self) -> None:
        self._instances: dict[tuple[str, str], Instance] = {}
        self._timeouts: dict[uuid.UUID, Timeout] = {}
        self.conflicts = 0
        """Saves refused by the version check since the store was made."""

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """Nothing to make atomic here."""
        yield

    async def load(self, process: str, key: str) -> Instance | None:
        kept = self._instances.get((process, key))
        return None if kept is None else attrs.evolve(kept)

    async def save(self, instance: Instance, *, new: bool) -> Instance:
        name = (instance.process, instance.key)
        kept = self._instances.get(name)
        if (kept is None) != new or (kept is not None and kept.version != instance.version):
            self.conflicts += 1
            raise SagaConflictError(conflict_message(instance, kept))
        saved = attrs.evolve(
            instance, version=instance.version + 1, updated_at=dt.datetime.now(dt.UTC)
        )
        self._instances[name] = saved
        return attrs.evolve(saved)

    async def add_timeout(self, timeout: Timeout) -> None:
        self._timeouts[timeout.id] = timeout

    async def take_due(self, now: dt.datetime, limit: int) -> list[Timeout]:
        due = sorted(
            (t for t in self._timeouts.values() if t.due_at <= now), key=lambda t: t.due_at
        )[:limit]
        for timeout in due:
            del self._timeouts[timeout.id]
        return due

    async def instances(
        self,
        process: str | None = None,
        *,
        finished: bool | None = None,
        limit: int | None = None,
    ) -> list[Instance]:
        found = sorted(
            (
                i
                for i in self._instances.values()
                if (process is None or i.process == process)
                and (finished is None or i.finished is finished)
            ),
            key=lambda i: i.created_at,
        )
        return [attrs.evolve(i) for i in found[:limit]]

    async def timeouts_for(self, process: str, key: str) -> list[Timeout]:
        return [t for t in self.timeouts if (t.process, t.key) == (process, key)]

    async def counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for instance in self._instances.values():
            counted = counts.setdefault(instance.process, new_counts())
            counted[instance.status] += 1
        for timeout in self._timeouts.values():
            counts.setdefault(timeout.process, new_counts())["timeouts"] += 1
        return dict(sorted(counts.items()))

    @property
    def timeouts(self) -> list[Timeout]:
        """The timeouts not taken yet, oldest due first."""
        return sorted(self._timeouts.values(), key=lambda t: t.due_at)


def new_counts() -> dict[str, int]:
    """One process manager's counts before any is counted."""
    return {"active": 0, "completed": 0, "timeouts": 0}


def conflict_message(instance: Instance, kept: Instance | None) -> str:
    name = f"process {instance.process} {instance.key!r}"
    if kept is None:
        return f"{name} is not kept: it was never started, or its start is not recorded"
    return (
        f"{name} is at version {kept.version}, not {instance.version}: another delivery "
        "changed it since this one loaded it; handle the event again"
    )
