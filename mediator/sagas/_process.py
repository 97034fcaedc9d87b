"""Process managers: event-driven sagas. A class with handlers for several
event types, correlated by a key each event carries, whose state is loaded,
changed and saved per event, which can ask for a timeout delivered as an
event later, across restarts (docs/sagas.md, "Process managers")."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar, Generic, TypeVar

import attrs

from mediator._emitter import EventEmitter
from mediator._event_map import EventMap
from mediator._events import Event
from mediator._limits import quote
from mediator._policies import Backoff, ErrorPolicy, Retry
from mediator._requests import Request
from mediator.sagas._model import (
    SagaConflictError,
    SagaError,
    decode_context,
    encode_context,
    type_argument,
)
from mediator.sagas._process_stores import Instance, ProcessStore, Timeout, new_counts

__all__ = [
    "CONFLICT_RETRY",
    "PROCESS_HANDLER",
    "Process",
    "ProcessManager",
    "TimeoutDispatcher",
    "handles",
]

logger = logging.getLogger("mediator.sagas")

S = TypeVar("S")
E = TypeVar("E", bound=Event)

Handler = Callable[[Any, "Process[Any]", Any], Awaitable[None]]

_HANDLES = "__mediator_handles__"
PROCESS_HANDLER = "__mediator_process_handler__"
"""The attribute of a handler `ProcessManager.bind` binds: (the manager, what
its method `handles`)."""

CONFLICT_RETRY = Retry(attempts=5, backoff=Backoff(initial=0.01, maximum=0.5))
"""A process manager's handlers' policy unless `bind` is given one: a
delivery that met another's change of the same instance is handled again
at once, on the fresh state."""


@attrs.frozen(kw_only=True)
class _Handles:
    event: type[Event]
    key: Callable[[Any], object]
    starts: bool
    key_field: str | None = None
    """The event's field that is the key, when `handles` was given one."""


def handles(
    event: type[E], *, key: str | Callable[[E], object], starts: bool = False
) -> Callable[[Handler], Handler]:
    """Mark a `ProcessManager` method as the handler of `event`.

    `key` names the event's field that correlates it with an instance (or is
    a function of the event); `starts` lets the event start an instance for
    a key that has none (other events for such a key are ignored, logged).
    """
    key_of: Callable[[Any], object] = (lambda e: getattr(e, key)) if isinstance(key, str) else key

    def mark(method: Handler) -> Handler:
        field = key if isinstance(key, str) else None
        setattr(method, _HANDLES, _Handles(event=event, key=key_of, starts=starts, key_field=field))
        return method

    return mark


class Process(Generic[S]):
    """What a handler of a `ProcessManager` works with: the instance's key
    and state, and what it may do besides changing the state."""

    def __init__(self, key: str, state: S | None, mediator: Any) -> None:
        self.key = key
        self.state = state
        """The instance's state: None before the event that starts it; set
        it to the new state."""
        self._mediator = mediator
        self.raised: list[Event] = []
        self.timeouts: list[tuple[dt.timedelta, Event]] = []
        self.completed = False

    async def send(self, request: Request[Any]) -> Any:
        """Send a command through the mediator the process manager was bound
        with (in the delivery's unit of work, with the outbox)."""
        if self._mediator is None:
            raise SagaError(
                f"process {self.key!r}: no mediator to send {type(request).__name__} through; "
                "bind the process manager with bind(event_map, store, mediator=...)"
            )
        return await self._mediator.send(request)

    def raise_event(self, event: Event) -> None:
        """Emit `event` after the handler, as a handler's follow-up event."""
        self.raised.append(event)

    def request_timeout(self, after: dt.timedelta | float, event: Event) -> None:
        """Deliver `event` to this instance `after` (seconds, or a timedelta)
        from now, unless the instance completed by then. Kept with the
        instance's state, so it fires after a restart."""
        delay = after if isinstance(after, dt.timedelta) else dt.timedelta(seconds=after)
        self.timeouts.append((delay, event))

    def complete(self) -> None:
        """End the instance: later events and timeouts for its key are ignored."""
        self.completed = True


class ProcessManager(Generic[S]):
    """An event-driven saga: subclass it with the state type, and mark its
    handlers with `handles`.

    ```python
    import attrs

    from mediator import NotificationEvent
    from mediator.sagas import Process, ProcessManager, handles


    @attrs.frozen(kw_only=True)
    class OrderPlaced(NotificationEvent):
        order_id: int


    @attrs.frozen(kw_only=True)
    class PaymentOverdue(NotificationEvent):
        order_id: int


    @attrs.define
    class Checkout:
        order_id: int
        overdue: bool = False


    class CheckoutProcess(ProcessManager[Checkout]):
        @handles(OrderPlaced, key="order_id", starts=True)
        async def placed(self, process: Process[Checkout], event: OrderPlaced) -> None:
            process.state = Checkout(order_id=event.order_id)
            process.request_timeout(15 * 60, PaymentOverdue(order_id=event.order_id))

        @handles(PaymentOverdue, key="order_id")
        async def overdue(self, process: Process[Checkout], event: PaymentOverdue) -> None:
            process.state = attrs.evolve(process.state, overdue=True)
            process.complete()
    ```
    """

    name: ClassVar[str] = ""
    state_type: ClassVar[type[Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = cls.__name__
        argument = type_argument(cls, ProcessManager)
        if argument is not None:
            cls.state_type = argument

    def handlers(self) -> list[tuple[_Handles, Callable[..., Awaitable[None]]]]:
        """The marked handlers, bound to this instance."""
        found = []
        for attribute in dir(type(self)):
            marked = getattr(getattr(type(self), attribute, None), _HANDLES, None)
            if isinstance(marked, _Handles):
                found.append((marked, getattr(self, attribute)))
        return found

    def bind(
        self,
        event_map: EventMap,
        store: ProcessStore,
        *,
        mediator: Any = None,
        policy: ErrorPolicy | None = None,
    ) -> None:
        """Bind each handler to its event in `event_map`: per event, load the
        instance of its key from `store`, run the handler, and save the
        instance and the timeouts it asked for, in one transaction.

        A change recorded for the same key meanwhile raises
        `SagaConflictError`: under `policy` (by default `CONFLICT_RETRY`,
        five quick attempts) the event is handled again on the fresh state,
        so no update is lost. `mediator` is what `Process.send` sends through.
        """
        handlers = self.handlers()
        if not handlers:
            raise SagaError(
                f"{type(self).__name__} marks no handler: decorate its methods with "
                "@handles(EventType, key=...)"
            )
        for marked, method in handlers:
            event_map.bind(
                marked.event,
                self._handler(marked, method, store, mediator),
                policy=CONFLICT_RETRY if policy is None else policy,
            )

    def _handler(
        self,
        marked: _Handles,
        method: Callable[..., Awaitable[None]],
        store: ProcessStore,
        mediator: Any,
    ) -> Callable[[Any], Awaitable[list[Event]]]:
        async def handle(event: Any) -> list[Event]:
            return await self.handle(event, marked, method, store, mediator)

        handle.__name__ = handle.__qualname__ = f"{self.name}.{method.__name__}"
        # What the routing diagram reads: the events and commands the method builds.
        handle.__wrapped__ = method  # type: ignore[attr-defined]
        # What the AsyncAPI document reads: which process manager, which event, which key.
        setattr(handle, PROCESS_HANDLER, (self, marked))
        return handle

    async def handle(
        self,
        event: Any,
        marked: _Handles,
        method: Callable[..., Awaitable[None]],
        store: ProcessStore,
        mediator: Any,
    ) -> list[Event]:
        """Handle one event for its instance; the events the handler raised."""
        key = str(marked.key(event))
        async with store.transaction():
            instance = await store.load(self.name, key)
            if instance is None and not marked.starts:
                logger.info(
                    "%s: no instance for key %s; %s ignored (it does not start one)",
                    self.name,
                    quote(key, 200),
                    type(event).__name__,
                )
                return []
            if instance is not None and instance.finished:
                logger.debug("%s %s: completed; %s ignored", self.name, key, type(event).__name__)
                return []
            state = None if instance is None else decode_context(self.state_type, instance.state)
            process: Process[Any] = Process(key, state, mediator)
            await method(process, event)
            if process.state is None:
                if instance is None:
                    return process.raised  # nothing started
                raise SagaError(f"{self.name} {key!r}: a handler set the state to None")
            at = dt.datetime.now(dt.UTC)
            await store.save(
                Instance(
                    process=self.name,
                    key=key,
                    state=encode_context(process.state),
                    version=0 if instance is None else instance.version,
                    finished=process.completed,
                    created_at=at if instance is None else instance.created_at,
                    updated_at=at,
                ),
                new=instance is None,
            )
            for delay, due in process.timeouts:
                await store.add_timeout(
                    Timeout(
                        id=uuid.uuid4(),
                        process=self.name,
                        key=key,
                        due_at=at + delay,
                        event=type(due).__name__,
                        payload=encode_context(due),
                    )
                )
            return process.raised


class TimeoutDispatcher:
    """Delivers due timeouts to their process managers: each taken, handled
    and removed in one transaction, so a crash puts it back.

    ```python
    dispatcher = TimeoutDispatcher(store, [CheckoutProcess()], emitter=emitter)
    service = Service(broker, event_map=events, process_managers=[dispatcher])
    ```

    The events a handler raises on a timeout go to `emitter` (in the same
    transaction, with the outbox). `interval` is how often it looks; `clock`
    is for tests. Every `count_interval` seconds `run()` also counts its
    managers' instances and pending timeouts (`count`), which `stats()`
    reports: a `Service(process_managers=[dispatcher])` runs it and shows them.
    """

    def __init__(
        self,
        store: ProcessStore,
        managers: Iterable[ProcessManager[Any]],
        *,
        emitter: EventEmitter | None = None,
        interval: float = 1.0,
        batch: int = 100,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        mediator: Any = None,
        count_interval: float = 30.0,
    ) -> None:
        self.store = store
        self.interval = interval
        self.count_interval = count_interval
        self.batch = batch
        self._clock = clock
        self._emitter = emitter
        self._mediator = mediator
        managers = list(managers)
        self._routes: dict[tuple[str, str], tuple[ProcessManager[Any], _Handles, Any]] = {}
        for manager in managers:
            for marked, method in manager.handlers():
                self._routes[(manager.name, marked.event.__name__)] = (manager, marked, method)
        self.names = tuple(sorted({manager.name for manager in managers}))
        """The names of its process managers."""
        self.delivered = 0
        """Timeouts delivered since it was made."""
        self.counted: dict[str, dict[str, int]] | None = None
        """The last `count()`: per process manager, its active and completed
        instances and pending timeouts (None before the first)."""
        self.counted_at: dt.datetime | None = None
        self._stopping = asyncio.Event()

    async def count(self) -> dict[str, dict[str, int]]:
        """Count its process managers' instances by state, and their pending
        timeouts, in the store; kept for `stats()`."""
        counts = await self.store.counts()
        self.counted = {name: counts.get(name, new_counts()) for name in self.names}
        self.counted_at = dt.datetime.now(dt.UTC)
        return self.counted

    def stats(self) -> dict[str, Any]:
        """Its process managers, the timeouts it delivered, and the instances
        and pending timeouts of the last `count()`, for `Service.stats()`."""
        counted = self.counted
        totals: dict[str, int | None] = dict.fromkeys(("active", "completed", "timeouts"))
        if counted is not None:
            totals = {name: sum(c[name] for c in counted.values()) for name in totals}
        return {
            "process_managers": list(self.names),
            "timeouts_delivered": self.delivered,
            "active": totals["active"],
            "completed": totals["completed"],
            "timeouts_pending": totals["timeouts"],
            "by_process": counted,
            "counted_at": None if self.counted_at is None else self.counted_at.isoformat(),
        }

    async def run_once(self) -> int:
        """Deliver the timeouts due now; how many."""
        delivered = 0
        while True:
            async with self.store.transaction():
                due = await self.store.take_due(self._clock(), self.batch)
                for timeout in due:
                    await self._deliver(timeout)
            delivered += len(due)
            if len(due) < self.batch:
                break
        self.delivered += delivered
        return delivered

    async def _deliver(self, timeout: Timeout) -> None:
        route = self._routes.get((timeout.process, timeout.event))
        if route is None:
            logger.error(
                "timeout %s for %s %s: no handler of %s; dropped",
                timeout.id,
                timeout.process,
                quote(timeout.key, 200),
                timeout.event,
            )
            return
        manager, marked, method = route
        event = decode_context(marked.event, timeout.payload)
        raised = await manager.handle(event, marked, method, self.store, self._mediator)
        if raised:
            if self._emitter is None:
                logger.warning(
                    "%s raised %d event(s) on a timeout and the TimeoutDispatcher has no "
                    "emitter; dropped: give it TimeoutDispatcher(..., emitter=...)",
                    manager.name,
                    len(raised),
                )
            else:
                await self._emitter.emit_all(raised)

    async def run(self) -> None:
        """Deliver due timeouts every `interval` seconds until `stop()` (or
        a cancellation, which rolls back the round under way: its timeouts
        are delivered again later)."""
        self._stopping.clear()
        counted_at = None
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except SagaConflictError as exc:
                logger.info("timeouts: %s; trying again", exc)
            if counted_at is None or time.monotonic() - counted_at >= self.count_interval:
                counted_at = time.monotonic()
                try:
                    await self.count()
                except Exception as exc:  # the stats go stale; the timeouts go on
                    logger.warning("counting the process instances of %s: %r", self.names, exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._stopping.wait()

    def stop(self) -> None:
        """Let `run()` return once the round under way is over."""
        self._stopping.set()
