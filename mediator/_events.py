"""Events: facts that handlers raise, and the handlers that react to them."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import uuid
from collections.abc import Awaitable, Callable, Iterable, MutableSequence, Sequence
from contextvars import ContextVar
from typing import Any, ClassVar, Generic, TypeVar, cast

import attrs

__all__ = [
    "DomainEvent",
    "ECSTEvent",
    "Event",
    "EventFunction",
    "EventHandler",
    "EventType",
    "NotificationEvent",
    "RaisesEvents",
    "discard_own_events",
    "event_name",
    "message_type_of",
    "partition_key_of",
    "run_collecting",
    "running",
    "take_events",
    "take_own_events",
    "uses_native_events",
]

_UTC = _dt.UTC


def _now() -> _dt.datetime:
    return _dt.datetime.now(_UTC)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _DataclassFields:
    """The fields a ``@dataclass`` subclass of an event kind inherits, as
    diator's dataclass `Event` declared them."""

    event_id: uuid.UUID = dataclasses.field(default_factory=uuid.uuid4)
    event_timestamp: _dt.datetime = dataclasses.field(default_factory=_now)


_STORED_FIELDS = "_dataclass_fields_"
_STORED_PARAMS = "_dataclass_params_"


class EventType(type):
    """The metaclass of the event kinds: what lets diator's form,
    ``@dataclasses.dataclass(frozen=True, kw_only=True)`` on a subclass of
    `NotificationEvent`, inherit `event_id` and `event_timestamp`.

    The ``@dataclass`` decorator takes inherited fields from the bases'
    ``__dataclass_fields__``. The four kinds answer it with their two fields
    (so the subclass's ``__init__`` takes and defaults them); a class the
    decorator made answers with what the decorator stored; an attrs subclass
    has none, so msgspec and `dataclasses.is_dataclass` see it as what it is.
    """

    @property
    def __dataclass_fields__(cls) -> dict[str, dataclasses.Field[Any]]:
        own = cls.__dict__
        if _STORED_FIELDS in own:
            return own[_STORED_FIELDS]  # type: ignore[no-any-return]
        if "_event_kind_" in own:
            return _DataclassFields.__dataclass_fields__
        raise AttributeError("__dataclass_fields__")

    @__dataclass_fields__.setter
    def __dataclass_fields__(cls, fields: dict[str, dataclasses.Field[Any]]) -> None:
        # Set by the @dataclass decorator once it has read the bases' fields:
        # an attrs class among them had fields the decorator could not see.
        for base in cls.__mro__[1:]:
            own = base.__dict__
            if "_event_kind_" in own:
                break
            if "__attrs_attrs__" in own and _STORED_FIELDS not in own:
                raise TypeError(
                    f"{cls.__qualname__} is a @dataclass subclassing {base.__qualname__}, an "
                    "attrs class, whose fields a dataclass does not inherit; declare both the "
                    "same way (both @dataclass, or both @attrs.frozen)"
                )
        type.__setattr__(cls, _STORED_FIELDS, fields)

    @property
    def __dataclass_params__(cls) -> Any:
        own = cls.__dict__
        if _STORED_PARAMS in own:
            return own[_STORED_PARAMS]
        if "_event_kind_" in own:
            return _DataclassFields.__dataclass_params__  # type: ignore[attr-defined]
        raise AttributeError("__dataclass_params__")

    @__dataclass_params__.setter
    def __dataclass_params__(cls, params: Any) -> None:
        type.__setattr__(cls, _STORED_PARAMS, params)


# Not slotted: a pydantic model (mediator.pydantic) subclasses the kinds, and
# its instances keep their fields in __dict__.
@attrs.frozen(kw_only=True, slots=False)
class Event(metaclass=EventType):
    """Base of every event.

    `event_id` is a fresh UUID and `event_timestamp` the current UTC time
    unless given; a timestamp given is kept as it is, naive or aware. A
    subclass is an attrs class (the default), a ``@dataclass`` as diator
    declares one, or a pydantic model (the kinds in `mediator.pydantic`).
    The event's name on the wire is its class name, or the `name=` class
    keyword:

    ```python
    @attrs.frozen(kw_only=True)
    class UserJoined(NotificationEvent, name="user.joined"):
        user_id: int
    ```

    The `partition_key=` class keyword names the field whose value orders
    the class's events (an aggregate id): a transport that partitions (Kafka)
    sends events with the same value to the same partition, in order.
    Subclasses inherit it; the default is none.

    ```python
    @attrs.frozen(kw_only=True)
    class OrderPlaced(NotificationEvent, partition_key="order_id"):
        order_id: int
    ```
    """

    __event_name__: ClassVar[str] = "Event"
    __partition_key__: ClassVar[str | None] = None

    _event_kind_: ClassVar[bool] = True

    event_id: uuid.UUID = attrs.field(factory=uuid.uuid4)
    event_timestamp: _dt.datetime = attrs.field(factory=_now)

    def __init_subclass__(
        cls, *, name: str | None = None, partition_key: str | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if partition_key is not None:
            # attrs' rebuild of a slotted class passes no keywords and copies
            # the class dict, so the key set on the first pass stays.
            cls.__partition_key__ = partition_key
        if name is not None:
            cls.__event_name__ = name
        elif "__event_name__" not in cls.__dict__:
            # attrs rebuilds slotted classes; the rebuilt class keeps the name
            # set on the first pass because it copies the class dict.
            cls.__event_name__ = cls.__name__


@attrs.frozen(kw_only=True, slots=False)
class DomainEvent(Event):
    """An event handled inside the process by the handlers bound in an EventMap."""

    _event_kind_: ClassVar[bool] = True


@attrs.frozen(kw_only=True, slots=False)
class NotificationEvent(Event):
    """An event published to the message broker for other services to react to."""

    _event_kind_: ClassVar[bool] = True


@attrs.frozen(kw_only=True, slots=False)
class ECSTEvent(Event):
    """Event-carried state transfer: published to the broker with the new state."""

    _event_kind_: ClassVar[bool] = True


def event_name(event_type: type[Event]) -> str:
    """The name an event class has on the wire and in name patterns."""
    return event_type.__event_name__


_MESSAGE_TYPES: dict[type[Any], str | None] = {}


def message_type_of(event_type: type[Event]) -> str | None:
    """``"notification_event"``, ``"ecst_event"``, or ``None`` for local-only events."""
    try:
        return _MESSAGE_TYPES[event_type]
    except KeyError:
        pass
    kind: str | None = None
    if issubclass(event_type, NotificationEvent):
        kind = "notification_event"
    elif issubclass(event_type, ECSTEvent):
        kind = "ecst_event"
    _MESSAGE_TYPES[event_type] = kind
    return kind


def partition_key_of(event: Event) -> str | None:
    """The partition key of `event`: ``str()`` of the field its class names
    with ``partition_key=``, or None (no key, or the field is None)."""
    field = type(event).__partition_key__
    if field is None:
        return None
    try:
        value = getattr(event, field)
    except AttributeError:
        raise TypeError(
            f"{type(event).__qualname__} names partition_key={field!r}, which is not one of its "
            "fields; name a field of the event (an aggregate id) or drop the keyword"
        ) from None
    return None if value is None else str(value)


E_contra = TypeVar("E_contra", bound=Event, contravariant=True)
A = TypeVar("A")
R = TypeVar("R")


running: ContextVar[tuple[object, list[Event]] | None] = ContextVar(
    "mediator_handler_run", default=None
)
"""The handler run in progress in this context: (the handler instance, the list
of events this run raised). Set around `handle` by `run_collecting`, and by
`Mediator.send` with a container, which inlines it."""


class RaisesEvents:
    """Gives a handler the diator-style `events` list the mediator collects.

    Append events to `self.events` inside `handle`. What is guaranteed:

    - Events belong to the run that raised them (one `send`, one event
      dispatched to this handler, one `stream`): an instance shared by
      concurrent runs, such as a singleton from a container, never emits
      another run's events, and a failed run's events are dropped without
      touching the others'.
    - After a run nothing stays on the instance, so a reused handler never
      emits an event twice.

    How: a handler the library builds itself (no container) serves one run,
    so the instance's own list is that run's. A handler a container resolved
    may be shared, so the run gives it a list of its own, seen through
    `self.events` wherever the run's code executes in its context (tasks it
    starts copy the context). Outside any run, for a handler built by hand,
    `self.events` is the instance's own list.
    """

    # A class-level empty tuple until the first event: the mediator's check for
    # "did this handler raise anything" is one attribute read, no allocation.
    # Not annotated: rodi evaluates base classes' annotations in the handler's module.
    _events = cast(Sequence[Event], ())

    @property
    def events(self) -> list[Event]:
        """Events raised while handling; taken and emitted after `handle` returns."""
        run = running.get()
        if run is not None and run[0] is self:
            return run[1]
        events = self._events
        if not isinstance(events, list):
            events = self._events = []
        return events


_NATIVE_EVENTS = RaisesEvents.__dict__["events"]


def uses_native_events(handler_type: type[Any]) -> bool:
    """Whether `handler_type` keeps the library's `events` (rather than its own,
    diator-style), so a run can collect them per run and `take_events` may read
    a per-send instance's list without the property call."""
    return getattr(handler_type, "events", None) is _NATIVE_EVENTS


def take_events(handler: Any, native: bool) -> list[Event] | None:
    """Take and clear the events held by `handler` itself; None when there are none.

    `native` is `uses_native_events(type(handler))`, computed once per class.
    """
    events: Sequence[Event] | None = handler._events if native else getattr(handler, "events", None)
    if not events:
        return None
    taken = list(events)
    if isinstance(events, list):
        events.clear()
    elif isinstance(events, MutableSequence):
        del events[:]
    return taken


def take_own_events(handler: Any) -> list[Event] | None:
    """Take what a handler with its own `events` (diator-style) kept on the
    instance; None for the library's handlers, whose runs collect their events."""
    if getattr(type(handler), "events", None) is _NATIVE_EVENTS:
        return None
    return take_events(handler, False)


def discard_own_events(handler: Any) -> None:
    """After a failed run: clear what a diator-style handler kept on the instance,
    so a reused one never emits it later (a library handler's run list is just dropped)."""
    take_own_events(handler)


async def run_collecting(
    handler: Any, call: Callable[[A], Awaitable[R]], argument: A
) -> tuple[R, list[Event] | None]:
    """Await ``call(argument)`` as one run of `handler`, an instance that may be
    shared by concurrent runs (a container resolved it).

    Returns the result and the events this run raised (None when none). While
    the run is in progress in this context, `handler.events` is a list of the
    run's own; when `call` raises, the run's events are dropped.
    """
    raised: list[Event] = []
    token = running.set((handler, raised))
    try:
        result = await call(argument)
    except BaseException:
        discard_own_events(handler)
        raise
    finally:
        running.reset(token)
    return result, raised or take_own_events(handler)


class EventHandler(RaisesEvents, Generic[E_contra]):
    """Base class for event handlers.

    Subclasses implement `handle`; events appended to `self.events` inside it
    are processed after it returns (breadth-first follow-ups). Handlers built
    by hand may instead define their own `events` property, as in diator.
    """

    async def handle(self, event: E_contra) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement `async def handle(event)`")


EventFunction = Callable[[Any], Awaitable[Iterable[Event] | None]]
"""A plain async function handler: takes the event, may return follow-up events."""
