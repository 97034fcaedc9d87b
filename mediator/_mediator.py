"""The Mediator: routes each request to its handler and emits the events it raised."""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, aclosing
from typing import Any, TypeVar, overload

from mediator._container import Container, Resolver, as_container, described, misplaced
from mediator._emitter import EventEmitter
from mediator._events import (
    Event,
    discard_own_events,
    run_collecting,
    running,
    take_events,
    take_own_events,
    uses_native_events,
)
from mediator._exceptions import MediatorError, RequestBindingError
from mediator._interceptors import Interceptor, intercept_send
from mediator._middlewares import MiddlewareChain
from mediator._requests import Request, RequestMap, StreamRequest

__all__ = ["Mediator"]

R = TypeVar("R")

Run = Callable[[Any], Coroutine[Any, Any, Any]]


async def _raise(exc: BaseException) -> Any:
    raise exc


_DONE: Any = object()
"""What `_next_or_done` returns once a stream is exhausted."""


async def _next_or_done(items: AsyncIterator[Any]) -> Any:
    try:
        return await anext(items)
    except StopAsyncIteration:
        return _DONE


async def _close(items: AsyncGenerator[Any, None]) -> None:
    await items.aclose()


class Mediator:
    """Sends requests to their handlers.

    ```python
    mediator = Mediator(request_map=requests, event_emitter=emitter)
    user_id = await mediator.send(CreateUser(name="ada"))
    ```

    The arguments are diator's, in diator's order:
    ``Mediator(request_map, container, event_emitter, middleware_chain)``.

    Per `send`: the handler class is built (through `container` in a fresh
    scope when there is one), the request passes the middleware chain, and
    after `handle` returns the handler's `events` are emitted in the order
    they were raised, then cleared. Nothing is emitted when `handle` raises.
    Events belong to the send that raised them, even when a container hands
    one handler instance to concurrent sends (see `RaisesEvents`).

    `unit_of_work`, when given, is entered around each whole send (handler,
    local event handlers and publishing), so the outbox makes a send one
    database transaction: ``Mediator(..., unit_of_work=outbox.unit_of_work)``
    (see `mediator.outbox`). Without it the send path pays nothing for it.
    """

    __slots__ = (
        "_chain",
        "_container",
        "_emitter",
        "_interceptors",
        "_request_map",
        "_routes",
        "_unit_of_work",
    )

    def __init__(
        self,
        request_map: RequestMap,
        container: Container | Resolver | None = None,
        event_emitter: EventEmitter | None = None,
        middleware_chain: MiddlewareChain | None = None,
        *,
        unit_of_work: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
        interceptors: Sequence[Interceptor] = (),
    ) -> None:
        # diator's positional order; a value in the wrong slot is refused here, not at a send.
        self._container = as_container(container, "Mediator")
        if event_emitter is not None and not callable(getattr(event_emitter, "emit_all", None)):
            raise TypeError(
                f"Mediator(event_emitter=...) got {described(event_emitter)}, which has no "
                "emit_all; pass an EventEmitter(event_map=..., message_broker=...)"
                f"{misplaced(event_emitter, 'Mediator')}"
            )
        if middleware_chain is not None and not isinstance(middleware_chain, MiddlewareChain):
            raise TypeError(
                f"Mediator(middleware_chain=...) got {described(middleware_chain)}; pass "
                "MiddlewareChain([...]) with the middlewares in order, outermost first"
                f"{misplaced(middleware_chain, 'Mediator')}"
            )
        self._request_map = request_map
        self._emitter = event_emitter
        self._chain = middleware_chain if middleware_chain is not None else MiddlewareChain()
        self._routes: dict[type[Any], Run] = {}
        if unit_of_work is not None and not callable(unit_of_work):
            raise TypeError(
                f"Mediator(unit_of_work=...) got {described(unit_of_work)}; pass a callable "
                "returning an async context manager, such as outbox.unit_of_work"
            )
        self._unit_of_work = unit_of_work
        """Entered around each whole send (handler, local events, publish): one
        transaction per send with `mediator.outbox`. None costs nothing."""
        self._interceptors = tuple(interceptors)
        """Their `sending` is entered around each whole send, outermost; none costs nothing."""

    @property
    def event_emitter(self) -> EventEmitter | None:
        """The emitter the handlers' events go to."""
        return self._emitter

    @overload
    def send(self, request: Request[R]) -> Coroutine[Any, Any, R]: ...

    @overload
    def send(self, request: object) -> Coroutine[Any, Any, object]: ...

    def send(self, request: object) -> Coroutine[Any, Any, Any]:
        """Handle `request` and return (a coroutine of) its handler's response.

        For a `Request[T]` the response is typed `T`; any other object can be
        sent too (dispatch is by type) and its response is typed `object`.

        Awaiting it raises RequestBindingError when no handler is bound for
        the request's type; whatever the handler, a middleware, a local event
        handler (under fail-fast) or the broker raises reaches the caller.
        """
        run = self._routes.get(type(request))
        if run is None:
            try:
                run = self._route(type(request))
            except RequestBindingError as exc:
                return _raise(exc)
        return run(request)

    def _route(self, request_type: type[Any]) -> Run:
        """Compile the send path of one request type, once."""
        handler_type = self._request_map.get(request_type)
        native = uses_native_events(handler_type)
        middlewares = self._chain.middlewares
        wrap = self._chain.wrap
        emit = self._emitter.emit_all if self._emitter is not None else self._no_emitter
        container = self._container
        run: Run
        if inspect.isasyncgenfunction(handler_type.handle):

            async def run(request: Any) -> Any:
                raise RequestBindingError(
                    f"{handler_type.__qualname__} yields results; consume "
                    f"{request_type.__qualname__} with `async for item in mediator.stream(request)`"
                )

        # The two closures below differ in how the handler's events are kept;
        # they are apart on purpose so the no-container path pays for nothing.
        elif container is None:

            async def run(request: Any) -> Any:
                # Built for this send alone, so the instance's own list is this send's.
                handler = handler_type()
                try:
                    if middlewares:
                        response = await wrap(handler.handle)(request)
                    else:
                        response = await handler.handle(request)
                except BaseException:
                    discard_own_events(handler)
                    raise
                if handler._events if native else getattr(handler, "events", None):
                    events = take_events(handler, native)
                    if events:
                        await emit(events, None)
                return response

        else:
            # Bound once here rather than looked up on every send.
            open_run, close_run = running.set, running.reset

            async def run(request: Any) -> Any:
                async with container.scope() as resolver:
                    handler = await resolver.resolve(handler_type)
                    # A container may hand one instance to concurrent sends, so this
                    # send collects its own events: `run_collecting`, inlined to
                    # spare a coroutine frame per send.
                    raised: list[Event] = []
                    token = open_run((handler, raised))
                    try:
                        if middlewares:
                            response = await wrap(handler.handle)(request)
                        else:
                            response = await handler.handle(request)
                    except BaseException:
                        discard_own_events(handler)
                        raise
                    finally:
                        close_run(token)
                    if raised:
                        await emit(raised, resolver)
                    elif not native or type(handler) is not handler_type:
                        # A handler with its own `events` (diator-style) keeps them itself.
                        events = take_own_events(handler)
                        if events:
                            await emit(events, resolver)
                    return response

        unit_of_work = self._unit_of_work
        if unit_of_work is not None:
            # Compiled in only when set, so a send without one pays nothing.
            handle = run

            async def run(request: Any) -> Any:
                async with unit_of_work():
                    return await handle(request)

        if self._interceptors:
            run = intercept_send(self._interceptors, run)
        self._routes[request_type] = run
        return run

    @overload
    def stream(self, request: StreamRequest[R]) -> AsyncGenerator[R, None]: ...

    @overload
    def stream(self, request: object) -> AsyncGenerator[object, None]: ...

    async def stream(self, request: object) -> AsyncGenerator[Any, None]:
        """Iterate the items a streaming handler yields for `request`.

        Events the handler raised before each item are emitted before the
        item is handed to the caller. Middlewares wrap `send` only.
        """
        handler_type = self._request_map.get(type(request))
        if not inspect.isasyncgenfunction(handler_type.handle):
            raise RequestBindingError(
                f"{handler_type.__qualname__}.handle returns a single response; use "
                f"`await mediator.send(request)` for {type(request).__qualname__}"
            )
        # aclosing: a caller that stops early closes the handler's generator at
        # once, inside the scope, rather than whenever the collector finalizes it.
        if self._container is None:
            async with aclosing(self._stream(handler_type(), request, None)) as items:
                async for item in items:
                    yield item
            return
        async with self._container.scope() as resolver:
            handler = await resolver.resolve(handler_type)
            async with aclosing(self._stream(handler, request, resolver)) as items:
                async for item in items:
                    yield item

    async def _stream(
        self, handler: Any, request: object, resolver: Resolver | None
    ) -> AsyncGenerator[Any, None]:
        # Each step is one run of the handler: its events are collected per
        # stream even when a container shares the instance between streams.
        items: AsyncGenerator[Any, None] = handler.handle(request)
        try:
            while True:
                item, events = await run_collecting(handler, _next_or_done, items)
                if events:
                    await self._emit(events, resolver)
                if item is _DONE:
                    return
                yield item
        finally:
            # Closing early runs the handler's cleanup; what it raises then is dropped.
            await run_collecting(handler, _close, items)

    async def _emit(self, events: list[Event], resolver: Resolver | None) -> None:
        if self._emitter is None:
            await self._no_emitter(events, resolver)
        else:
            await self._emitter.emit_all(events, resolver)

    @staticmethod
    async def _no_emitter(events: Sequence[Event], resolver: Resolver | None) -> None:
        raise MediatorError(
            f"A handler raised {len(events)} event(s) "
            f"({', '.join(type(e).__qualname__ for e in events)}) but the Mediator has no "
            "event emitter; pass Mediator(event_emitter=EventEmitter(event_map=...))"
        )
