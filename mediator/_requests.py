"""Requests, their handlers, and the map that binds one to the other."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar

import attrs

from mediator._events import RaisesEvents
from mediator._exceptions import RequestBindingError

__all__ = [
    "Request",
    "RequestHandler",
    "RequestMap",
    "Response",
    "StreamRequest",
    "StreamingRequestHandler",
]

Res_co = TypeVar("Res_co", covariant=True)
Req_contra = TypeVar("Req_contra", contravariant=True)
Res = TypeVar("Res")


@attrs.frozen(kw_only=True)
class Request(Generic[Res_co]):
    """Base for commands and queries; the type parameter is the response type.

    ```python
    @attrs.frozen(kw_only=True)
    class CreateUser(Request[UserCreated]):
        name: str

    created = await mediator.send(CreateUser(name="ada"))  # typed UserCreated
    ```

    Subclassing is optional: any object can be sent, dispatch is by its type.
    """


@attrs.frozen(kw_only=True)
class StreamRequest(Generic[Res_co]):
    """Base for requests whose handler yields a stream of `Res_co` items,
    consumed with ``async for item in mediator.stream(request)``."""


@attrs.frozen(kw_only=True)
class Response:
    """Optional base for responses; any value can be returned by a handler."""


class RequestHandler(RaisesEvents, Generic[Req_contra, Res_co]):
    """Handles one request type and returns its response.

    Append events to `self.events` while handling; after `handle` returns the
    mediator emits them in the order they were raised and clears the list.
    """

    async def handle(self, request: Req_contra) -> Res_co:
        raise NotImplementedError(
            f"{type(self).__name__} must implement `async def handle(request)`"
        )


class StreamingRequestHandler(RaisesEvents, Generic[Req_contra, Res_co]):
    """Handles a request by yielding results; events raised before each yield
    are emitted before that item reaches the caller."""

    def handle(self, request: Req_contra) -> AsyncIterator[Res_co]:
        raise NotImplementedError(
            f"{type(self).__name__} must implement `async def handle(request)` as a generator"
        )


class RequestMap:
    """Binds each request type to exactly one handler class.

    ```python
    requests = RequestMap()
    requests.bind(CreateUser, CreateUserHandler)
    ```
    """

    __slots__ = ("_handlers",)

    def __init__(self) -> None:
        self._handlers: dict[type[Any], type[Any]] = {}

    def bind(self, request_type: type[Any], handler_type: type[Any]) -> None:
        """Bind `handler_type` to handle `request_type`.

        Raises RequestBindingError if the request type already has a handler.
        """
        if not isinstance(request_type, type):
            raise RequestBindingError(
                f"RequestMap.bind expects a request class, got {request_type!r}"
            )
        if not isinstance(handler_type, type) or not callable(
            getattr(handler_type, "handle", None)
        ):
            raise RequestBindingError(
                f"RequestMap.bind({request_type.__name__}, {handler_type!r}): the handler must be "
                "a class with an `async def handle(request)` method"
            )
        handle = handler_type.handle
        if not (inspect.iscoroutinefunction(handle) or inspect.isasyncgenfunction(handle)):
            raise RequestBindingError(
                f"RequestMap.bind({request_type.__name__}, {handler_type.__name__}): its handle "
                "is a plain def, and a request's handler is awaited; declare it `async def "
                "handle(self, request)` (a blocking call inside can go to asyncio.to_thread)"
            )
        existing = self._handlers.get(request_type)
        if existing is not None:
            raise RequestBindingError(
                f"{request_type.__name__} is already bound to {existing.__name__}; a request has "
                f"exactly one handler. Remove one of the RequestMap.bind({request_type.__name__}, "
                "...) calls"
            )
        self._handlers[request_type] = handler_type

    def get(self, request_type: type[Any]) -> type[Any]:
        """The handler class bound to `request_type`.

        Raises RequestBindingError naming the type when nothing is bound.
        """
        try:
            return self._handlers[request_type]
        except KeyError:
            raise self.unbound(request_type) from None

    @staticmethod
    def unbound(request_type: type[Any]) -> RequestBindingError:
        name = request_type.__name__
        return RequestBindingError(
            f"No handler bound for {name}; bind one with RequestMap.bind({name}, {name}Handler)"
        )

    def __contains__(self, request_type: object) -> bool:
        return request_type in self._handlers

    def __len__(self) -> int:
        return len(self._handlers)

    def items(self) -> list[tuple[type[Any], type[Any]]]:
        """The bindings, in the order they were made."""
        return list(self._handlers.items())
