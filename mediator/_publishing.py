"""Decorators that publish an event around an async function: its result
(`publish_result`) or its arguments (`publish_arguments`).

The event is built from the values with `mediator._models.build`, checked as
a decode checks it, and handed to the emitter's `emit` at once: a
DomainEvent goes to the local handlers bound in the emitter's EventMap, a
NotificationEvent or ECSTEvent to its broker, through the emitter's
interceptors and outgoing hooks like any other event.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Literal, ParamSpec, Protocol, TypeAlias, TypeVar, get_args

import attrs

from mediator._container import described
from mediator._events import Event
from mediator._models import ModelBuildError, build, form_of

__all__ = ["EventSink", "Timing", "publish_arguments", "publish_result"]

P = ParamSpec("P")
R = TypeVar("R")

Timing = Literal["before", "after", "both"]
"""When `publish_arguments` publishes, relative to the body of the function."""

_TIMINGS: tuple[str, ...] = get_args(Timing)


class EventSink(Protocol):
    """What the decorators publish through: an object with an async `emit`,
    such as `mediator.EventEmitter`."""

    async def emit(self, event: Event) -> None: ...


AsyncFunction: TypeAlias = Callable[P, Coroutine[Any, Any, R]]
"""An async function taking `P` and returning `R`."""


def publish_result(
    emitter: EventSink,
    event_type: type[Event],
    *,
    condition: Callable[[Any], object] | None = None,
) -> Callable[[AsyncFunction[P, R]], AsyncFunction[P, R]]:
    """Publish an `event_type` built from what the decorated async function
    returns, then return that value unchanged.

    The result becomes the event this way: an instance of `event_type` is
    emitted as it is; a Mapping gives the event's fields (keys the class
    does not declare are ignored, required fields it lacks are an error);
    any other value is the field ``result``. With `condition`, the event is
    built and published only when ``condition(result)`` is true.
    """
    decorator = "@publish_result"
    _check_emitter(decorator, emitter)
    _check_event_type(decorator, event_type)
    if condition is not None and not callable(condition):
        raise TypeError(
            f"{decorator}(condition=...) got {described(condition)}; pass a function that "
            "takes the result and returns whether to publish, or None"
        )

    def decorate(func: AsyncFunction[P, R]) -> AsyncFunction[P, R]:
        _check_function(decorator, func)
        where = f"{decorator} on {_qualname(func)}"

        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            result = await func(*args, **kwargs)
            if condition is None or condition(result):
                if isinstance(result, event_type):
                    event: Event = result
                elif isinstance(result, Mapping):
                    event = _build(where, event_type, result)
                else:
                    event = _build(where, event_type, {"result": result})
                await _emit(where, emitter, event)
            return result

        return wrapper

    return decorate


def publish_arguments(
    emitter: EventSink,
    event_type: type[Event],
    *,
    timing: Timing = "before",
) -> Callable[[AsyncFunction[P, R]], AsyncFunction[P, R]]:
    """Publish an `event_type` built from the arguments the decorated async
    function is called with.

    The payload is the bound arguments, defaults applied, without a first
    parameter named ``self`` or ``cls``; the items of a ``**kwargs``
    parameter count as arguments of their own. Arguments the event class
    does not declare are left out. `timing` says when:

    - ``"before"``: before the body runs; if publishing fails, the body
      does not run.
    - ``"after"``: after the body returns, with ``result`` (the return
      value) added; nothing is published if the body raises.
    - ``"both"``: before (the arguments alone, so the class must give
      ``result`` a default) and after (the arguments and ``result``).
    """
    decorator = "@publish_arguments"
    _check_emitter(decorator, emitter)
    _check_event_type(decorator, event_type)
    if timing not in _TIMINGS:
        allowed = ", ".join(repr(t) for t in _TIMINGS)
        raise ValueError(f"{decorator}(timing=...) must be one of {allowed}; got {timing!r}")
    declared = _declared_fields(event_type)
    before = timing in ("before", "both")
    after = timing in ("after", "both")
    if timing == "both" and "result" in declared and not _has_default(event_type, "result"):
        raise TypeError(
            f"{decorator}(timing='both') publishes {_qualname(event_type)} before the call, "
            "when there is no result yet: give its result field a default (such as None)"
        )

    def decorate(func: AsyncFunction[P, R]) -> AsyncFunction[P, R]:
        _check_function(decorator, func)
        where = f"{decorator} on {_qualname(func)}"
        signature = inspect.signature(func)
        parameters = list(signature.parameters.values())
        skip_first = bool(parameters) and (
            parameters[0].name in ("self", "cls")
            and parameters[0].kind
            in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        )
        var_keyword = next(
            (p.name for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD), None
        )

        def arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            values = dict(bound.arguments)
            if skip_first:
                del values[parameters[0].name]
            if var_keyword is not None:
                values.update(values.pop(var_keyword))
            return values

        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            # Bound before the call: the body may change a mutable argument.
            values = arguments(args, kwargs)
            if before:
                await _emit(where, emitter, _build(where, event_type, _only(declared, values)))
            result = await func(*args, **kwargs)
            if after:
                values["result"] = result
                await _emit(where, emitter, _build(where, event_type, _only(declared, values)))
            return result

        return wrapper

    return decorate


def _check_emitter(decorator: str, emitter: object) -> None:
    if not callable(getattr(emitter, "emit", None)):
        raise TypeError(
            f"{decorator} needs an emitter to publish through, an object with an "
            f"async emit(event) such as mediator.EventEmitter(message_broker=...); "
            f"got {described(emitter)}"
        )


def _check_event_type(decorator: str, event_type: object) -> None:
    if not (isinstance(event_type, type) and issubclass(event_type, Event)):
        raise TypeError(
            f"{decorator} needs an event class (a subclass of mediator.Event, such as a "
            f"NotificationEvent or DomainEvent) as its second argument; got {described(event_type)}"
        )


def _check_function(decorator: str, func: object) -> None:
    if isinstance(func, staticmethod | classmethod):
        raise TypeError(
            f"{decorator} decorates the async function itself: put it below "
            f"@{type(func).__name__}, not above it"
        )
    if not inspect.iscoroutinefunction(func):
        raise TypeError(
            f"{decorator} decorates async functions; {_qualname(func)} is not one: "
            "declare it with async def"
        )


def _qualname(obj: object) -> str:
    """The qualified name of a function or class, without the part naming
    the function it was defined in (``<locals>``)."""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    return str(name).rpartition("<locals>.")[2]


def _declared_fields(event_type: type[Any]) -> frozenset[str]:
    """The keys `build` reads for `event_type`: its field names (and, for a
    pydantic model, their string aliases)."""
    form = form_of(event_type)
    if form == "pydantic":
        names: set[str] = set()
        for name, field in event_type.model_fields.items():
            names.add(name)
            for alias in (field.alias, field.validation_alias):
                if isinstance(alias, str):
                    names.add(alias)
        return frozenset(names)
    if form == "dataclass":
        return frozenset(field.name for field in dataclasses.fields(event_type))
    if form == "attrs":
        return frozenset(field.name for field in attrs.fields(event_type))
    return frozenset()


def _has_default(event_type: type[Any], name: str) -> bool:
    form = form_of(event_type)
    if form == "pydantic":
        field = event_type.model_fields.get(name)
        return field is None or not field.is_required()
    if form == "dataclass":
        for dc_field in dataclasses.fields(event_type):
            if dc_field.name == name:
                return (
                    dc_field.default is not dataclasses.MISSING
                    or dc_field.default_factory is not dataclasses.MISSING
                )
        return True
    if form == "attrs":
        for attrs_field in attrs.fields(event_type):
            if attrs_field.name == name:
                return attrs_field.default is not attrs.NOTHING
    return True


def _only(declared: frozenset[str], values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if key in declared}


def _build(where: str, event_type: type[Event], values: Mapping[str, Any]) -> Event:
    try:
        event: Event = build(event_type, values)
    except ModelBuildError as exc:
        raise ModelBuildError(f"{where} could not build {_qualname(event_type)}: {exc}") from None
    return event


async def _emit(where: str, emitter: EventSink, event: Event) -> None:
    pending = emitter.emit(event)
    if not inspect.isawaitable(pending):
        raise TypeError(
            f"{where}: the emitter's emit(event) returned {described(pending)}, not an "
            "awaitable; pass an emitter with an async emit, such as mediator.EventEmitter"
        )
    await pending
