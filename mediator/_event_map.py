"""The EventMap: which handlers receive which events."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar, overload

import attrs

from mediator._container import Resolver
from mediator._events import (
    Event,
    discard_own_events,
    event_name,
    message_type_of,
    run_collecting,
    take_events,
    uses_native_events,
)
from mediator._exceptions import EventBindingError
from mediator._patterns import GlobPattern
from mediator._policies import ErrorPolicy

__all__ = ["EventBinding", "EventMap", "follow_ups_of"]

H = TypeVar("H")

HandlerCall = Callable[[Event, Resolver | None], Awaitable[list[Event] | None]]
"""Runs one handler on one event; returns its follow-up events, if any."""


def _is_async(function: object) -> bool:
    """Whether calling `function` gives an awaitable: an ``async def``, or an
    object whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004 - async callable objects
    )


def _awaiting(
    function: Callable[[Any], object], to_thread: bool
) -> Callable[[Any], Awaitable[object]]:
    """A sync `function` as a coroutine function: called in the event loop,
    or with `to_thread` in the default executor's worker thread. The thread
    runs in a copy of the caller's context, so a handler's `self.events`
    reaches the run that called it."""
    if to_thread:

        async def in_thread(argument: Any) -> object:
            return await asyncio.to_thread(function, argument)

        return in_thread

    async def directly(argument: Any) -> object:
        return function(argument)

    return directly


def _class_call(handler_type: type[Any], to_thread: bool) -> HandlerCall:
    native = uses_native_events(handler_type)
    sync = not _is_async(handler_type.handle)

    def handle_of(handler: Any) -> Callable[[Any], Awaitable[object]]:
        if sync:
            return _awaiting(handler.handle, to_thread)
        return handler.handle  # type: ignore[no-any-return]

    async def call(event: Event, resolver: Resolver | None) -> list[Event] | None:
        if resolver is not None:
            # A container may hand one instance to concurrent dispatches: collect per run.
            handler = await resolver.resolve(handler_type)
            _, follow_ups = await run_collecting(handler, handle_of(handler), event)
            return follow_ups
        # Built for this event alone, so the instance's own list is this run's.
        handler = handler_type()
        try:
            await handle_of(handler)(event)
        except BaseException:
            discard_own_events(handler)
            raise
        if native and not handler._events:
            return None
        return take_events(handler, native)

    return call


def follow_ups_of(returned: object, function: object) -> list[Event] | None:
    """What a function handler returned, as its follow-up events: None, one
    event, or an iterable of events. Anything else raises TypeError naming the
    handler, which the binding's error policy then handles like any failure."""
    if returned is None:
        return None
    if isinstance(returned, Event):
        return [returned]
    if isinstance(returned, Iterable) and not isinstance(returned, str | bytes | Mapping):
        follow_ups = list(returned)
        for item in follow_ups:
            if not isinstance(item, Event):
                break
        else:
            return follow_ups or None
        what = f"an iterable holding {type(item).__qualname__}"
    else:
        what = type(returned).__qualname__
    name = getattr(function, "__qualname__", repr(function))
    raise TypeError(
        f"event handler {name} returned {what}; return an event, a list of events or None"
    )


def _function_call(function: Callable[[Any], Any], to_thread: bool) -> HandlerCall:
    run = function if _is_async(function) else _awaiting(function, to_thread)

    async def call(event: Event, resolver: Resolver | None) -> list[Event] | None:
        return follow_ups_of(await run(event), function)

    return call


@attrs.frozen(eq=False)
class EventBinding:
    """One `EventMap.bind` call: what it matches, who handles it, and its policy."""

    target: type[Event] | GlobPattern
    handler: type[Any] | Callable[..., Any]
    policy: ErrorPolicy | None
    """None: the dispatcher's default (the map's, else fail-fast locally and
    retry-then-dead-letter in a consumer)."""
    call: HandlerCall = attrs.field(repr=False)
    function: Callable[[Any], Awaitable[object]] | None = attrs.field(default=None, repr=False)
    """The handler when it is an async function (or async callable object):
    what `call` awaits, for a caller that calls it directly."""
    to_thread: bool = False
    """Whether a sync handler runs in a worker thread (else in the event loop)."""

    @property
    def handler_name(self) -> str:
        """The handler's qualified name, for logs."""
        return getattr(self.handler, "__qualname__", repr(self.handler))

    def matches(self, event_type: type[Event]) -> bool:
        """Whether this binding receives events of `event_type`."""
        if isinstance(self.target, GlobPattern):
            return self.target.matches(event_name(event_type))
        return issubclass(event_type, self.target)


class EventMap:
    """Binds event types (or glob patterns over event names) to handlers.

    ```python
    events = EventMap()
    events.bind(UserJoined, SendWelcomeMail)          # a handler class
    events.bind(Event, AuditTrail)                    # every event: subclasses match
    events.bind("Order*", audit_orders, policy=LogAndContinue())

    @events.bind(UserJoined)                          # a plain async function
    async def count_joins(event: UserJoined) -> None: ...
    ```

    Several handlers can be bound to one event; they run in the order they
    were bound. A binding without `policy` gets `default_policy` if the map
    has one, else the dispatcher's own default: `FailFast` in the emitter,
    `Retry(then=DeadLetter())` in an `EventConsumer`. Binding a
    NotificationEvent or ECSTEvent class also registers it for decoding, so
    consumers can build it from a message.
    """

    def __init__(self, *, default_policy: ErrorPolicy | None = None) -> None:
        self.default_policy = default_policy
        self._bindings: list[EventBinding] = []
        self._by_type: dict[type[Event], tuple[EventBinding, ...]] = {}
        self._by_name: dict[str, type[Event]] = {}

    @overload
    def bind(
        self,
        target: type[Event] | str,
        handler: None = None,
        *,
        policy: ErrorPolicy | None = None,
        to_thread: bool = False,
    ) -> Callable[[H], H]: ...

    @overload
    def bind(
        self,
        target: type[Event] | str,
        handler: type[Any] | Callable[..., Any],
        *,
        policy: ErrorPolicy | None = None,
        to_thread: bool = False,
    ) -> None: ...

    def bind(
        self,
        target: type[Event] | str,
        handler: type[Any] | Callable[..., Any] | None = None,
        *,
        policy: ErrorPolicy | None = None,
        to_thread: bool = False,
    ) -> Callable[[H], H] | None:
        """Bind `handler` to events of `target` (a class, matching subclasses
        too, or a glob over event names). Without `handler`, returns a decorator.

        `handler` is a class with a ``handle(event)`` method (built per
        event, through the container if there is one) or a function taking
        the event, which may return follow-up events. Either may be sync: it
        is then called in the event loop, which it blocks while it runs, or
        with ``to_thread=True`` in a worker thread (``asyncio.to_thread``).
        """
        if handler is None:

            def decorator(handler: H) -> H:
                self.bind(target, handler, policy=policy, to_thread=to_thread)  # type: ignore[call-overload]
                return handler

            return decorator

        resolved_target = self._target(target)
        binding = EventBinding(
            target=resolved_target,
            handler=handler,
            policy=policy,
            call=self._call(target, handler, to_thread),
            function=None if isinstance(handler, type) or not _is_async(handler) else handler,
            to_thread=to_thread,
        )
        if isinstance(resolved_target, type):
            self.register(resolved_target)
        self._bindings.append(binding)
        self._by_type.clear()
        return None

    def register(self, *event_types: type[Event]) -> None:
        """Make broker-bound event classes decodable without binding a handler."""
        for event_type in event_types:
            if message_type_of(event_type) is None:
                continue
            name = event_name(event_type)
            existing = self._by_name.get(name)
            if existing is not None and existing is not event_type:
                raise EventBindingError(
                    f"Two event classes are named {name!r}: {existing.__qualname__} and "
                    f"{event_type.__qualname__}; give one another name with "
                    f"`class {event_type.__name__}(..., name='...')`"
                )
            self._by_name[name] = event_type

    def handlers_for(self, event_type: type[Event]) -> tuple[EventBinding, ...]:
        """The bindings that receive `event_type`, in bind order."""
        bindings = self._by_type.get(event_type)
        if bindings is None:
            bindings = tuple(b for b in self._bindings if b.matches(event_type))
            self._by_type[event_type] = bindings
        return bindings

    def event_class(self, name: str) -> type[Event] | None:
        """The registered broker-bound event class named `name`, or None.

        Subclasses of a bound class are found too, so a handler bound to a base
        class receives every subclass the application defines.
        """
        found = self._by_name.get(name)
        if found is None:
            found = self._find_subclass(name)
        return found

    def event_classes(self) -> dict[str, type[Event]]:
        """Every registered broker-bound event class, by name."""
        return dict(self._by_name)

    @property
    def bindings(self) -> tuple[EventBinding, ...]:
        """All bindings in the order they were made."""
        return tuple(self._bindings)

    def _find_subclass(self, name: str) -> type[Event] | None:
        roots = [b.target for b in self._bindings if isinstance(b.target, type)]
        seen: set[type[Any]] = set()
        while roots:
            cls = roots.pop()
            if cls in seen:
                continue
            seen.add(cls)
            if message_type_of(cls) is not None and event_name(cls) == name:
                self.register(cls)
                return cls
            roots.extend(cls.__subclasses__())
        return None

    @staticmethod
    def _target(target: type[Event] | str) -> type[Event] | GlobPattern:
        if isinstance(target, str):
            return GlobPattern(target)
        if isinstance(target, type) and issubclass(target, Event):
            return target
        raise EventBindingError(
            f"EventMap.bind expects an Event subclass or a glob over event names, got {target!r}"
        )

    @staticmethod
    def _call(target: object, handler: object, to_thread: bool) -> HandlerCall:
        if isinstance(handler, type):
            handle = getattr(handler, "handle", None)
            if not callable(handle):
                raise EventBindingError(
                    f"EventMap.bind({target!r}, {handler.__qualname__}): a handler class needs "
                    "a `handle(self, event)` method, async or not"
                )
            if to_thread and _is_async(handle):
                raise EventBindingError(
                    f"EventMap.bind({target!r}, {handler.__qualname__}, to_thread=True): its "
                    "handle is async and runs in the event loop; to_thread is for a sync handle"
                )
            return _class_call(handler, to_thread)
        if callable(handler):
            if to_thread and _is_async(handler):
                raise EventBindingError(
                    f"EventMap.bind({target!r}, {handler!r}, to_thread=True): the function is "
                    "async and runs in the event loop; to_thread is for a sync function"
                )
            return _function_call(handler, to_thread)
        raise EventBindingError(
            f"EventMap.bind({target!r}, {handler!r}): a handler is a class with a `handle` "
            "method or a function taking the event"
        )
