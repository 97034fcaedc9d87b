"""The Mediator: routes each request to its handler and emits the events it raised."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, MutableSequence, Sequence
from typing import Any, TypeVar, overload

from mediator._container import Container, Resolver
from mediator._emitter import EventEmitter
from mediator._events import Event, RaisesEvents
from mediator._exceptions import MediatorError, RequestBindingError
from mediator._middlewares import MiddlewareChain
from mediator._requests import Request, RequestMap, StreamRequest

__all__ = ["Mediator"]

R = TypeVar("R")

_NATIVE_EVENTS = RaisesEvents.__dict__["events"]


class _Route:
    """What the mediator learned once about a request type's handler."""

    __slots__ = ("handler_type", "native_events", "streaming")

    def __init__(self, handler_type: type[Any]) -> None:
        self.handler_type = handler_type
        # Handlers using the built-in `events` list skip the property call.
        self.native_events = getattr(handler_type, "events", None) is _NATIVE_EVENTS
        self.streaming = inspect.isasyncgenfunction(handler_type.handle)


def _take_events(handler: Any, native: bool) -> list[Event] | None:
    events: Sequence[Event] | None = (
        handler.__dict__.get("_events") if native else getattr(handler, "events", None)
    )
    if not events:
        return None
    taken = list(events)
    if isinstance(events, MutableSequence):
        events.clear()
    return taken


class Mediator:
    """Sends requests to their handlers.

    ```python
    mediator = Mediator(request_map=requests, event_emitter=emitter)
    user_id = await mediator.send(CreateUser(name="ada"))
    ```

    Per `send`: the handler class is built (through `container` in a fresh
    scope when there is one), the request passes the middleware chain, and
    after `handle` returns the handler's `events` are emitted in the order
    they were raised, then cleared. Nothing is emitted when `handle` raises.
    """

    __slots__ = ("_chain", "_container", "_emitter", "_request_map", "_routes")

    def __init__(
        self,
        request_map: RequestMap,
        event_emitter: EventEmitter | None = None,
        container: Container | None = None,
        middleware_chain: MiddlewareChain | None = None,
    ) -> None:
        self._request_map = request_map
        self._emitter = event_emitter
        self._container = container
        self._chain = middleware_chain if middleware_chain else None
        self._routes: dict[type[Any], _Route] = {}

    @property
    def event_emitter(self) -> EventEmitter | None:
        """The emitter the handlers' events go to."""
        return self._emitter

    def _route(self, request_type: type[Any]) -> _Route:
        route = _Route(self._request_map.get(request_type))
        self._routes[request_type] = route
        return route

    @overload
    async def send(self, request: Request[R]) -> R: ...

    @overload
    async def send(self, request: object) -> Any: ...

    async def send(self, request: object) -> Any:
        """Handle `request` and return its handler's response.

        Raises RequestBindingError when no handler is bound for its type;
        whatever the handler, a middleware, a local event handler (under
        fail-fast) or the broker raises reaches the caller.
        """
        route = self._routes.get(type(request)) or self._route(type(request))
        if route.streaming:
            raise RequestBindingError(
                f"{route.handler_type.__qualname__} yields results; consume "
                f"{type(request).__qualname__} with `async for item in mediator.stream(request)`"
            )
        container = self._container
        if container is None:
            handler = route.handler_type()
            if self._chain is None:
                response = await handler.handle(request)
            else:
                response = await self._chain.wrap(handler.handle)(request)
            events = _take_events(handler, route.native_events)
            if events:
                await self._emit(events, None, handler)
            return response
        async with container.scope() as resolver:
            handler = await resolver.resolve(route.handler_type)
            if self._chain is None:
                response = await handler.handle(request)
            else:
                response = await self._chain.wrap(handler.handle)(request)
            events = _take_events(handler, route.native_events)
            if events:
                await self._emit(events, resolver, handler)
            return response

    @overload
    def stream(self, request: StreamRequest[R]) -> AsyncIterator[R]: ...

    @overload
    def stream(self, request: object) -> AsyncIterator[Any]: ...

    async def stream(self, request: object) -> AsyncIterator[Any]:
        """Iterate the items a streaming handler yields for `request`.

        Events the handler raised before each item are emitted before the
        item is handed to the caller. Middlewares wrap `send` only.
        """
        route = self._routes.get(type(request)) or self._route(type(request))
        if not route.streaming:
            raise RequestBindingError(
                f"{route.handler_type.__qualname__}.handle returns a single response; use "
                f"`await mediator.send(request)` for {type(request).__qualname__}"
            )
        if self._container is None:
            async for item in self._stream(route, route.handler_type(), request, None):
                yield item
            return
        async with self._container.scope() as resolver:
            handler = await resolver.resolve(route.handler_type)
            async for item in self._stream(route, handler, request, resolver):
                yield item

    async def _stream(
        self, route: _Route, handler: Any, request: object, resolver: Resolver | None
    ) -> AsyncIterator[Any]:
        items = handler.handle(request)
        try:
            async for item in items:
                events = _take_events(handler, route.native_events)
                if events:
                    await self._emit(events, resolver, handler)
                yield item
            events = _take_events(handler, route.native_events)
            if events:
                await self._emit(events, resolver, handler)
        finally:
            await items.aclose()

    async def _emit(self, events: list[Event], resolver: Resolver | None, handler: object) -> None:
        if self._emitter is None:
            raise MediatorError(
                f"{type(handler).__qualname__} raised {len(events)} event(s) "
                f"({', '.join(type(e).__qualname__ for e in events)}) but the Mediator has no "
                "event emitter; pass Mediator(event_emitter=EventEmitter(event_map=...))"
            )
        await self._emitter.emit_all(events, resolver)
