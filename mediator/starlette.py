"""A `Service` in a Starlette or FastAPI application (docs/web.md).

```python
from fastapi import Depends, FastAPI
from mediator.starlette import CorrelationIdMiddleware, error_responses, get_mediator, lifespan

app = FastAPI(
    lifespan=lifespan(service),  # starts the service with the app, drains it at shutdown
    exception_handlers=error_responses({OrderExists: 409}),
)
app.add_middleware(CorrelationIdMiddleware)  # X-Correlation-ID in, on the events, out


@app.post("/orders")
async def place(body: PlaceOrderBody, mediator: Mediator = Depends(get_mediator)) -> int:
    return await mediator.send(PlaceOrder(order_id=body.order_id))
```

Needs the ``starlette`` extra (FastAPI brings Starlette with it); nothing
here imports FastAPI, and the core never imports this module. Trace context
needs nothing from here: under an instrumented server, the request's span
is the active one, so `mediator.otel.OpenTelemetry` makes it the parent of
the send's span and carries it on the published envelopes.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

try:
    from starlette.requests import HTTPConnection, Request
    from starlette.responses import JSONResponse, Response
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "mediator.starlette needs starlette: pip install 'mediator-toolkit[starlette]'"
    ) from exc

from mediator._context import correlation_scope

if TYPE_CHECKING:  # at run time the service is only used, never imported
    from mediator._mediator import Mediator
    from mediator._operations.service import Service

__all__ = [
    "STATE_KEY",
    "CorrelationIdMiddleware",
    "error_responses",
    "get_mediator",
    "get_service",
    "lifespan",
]

STATE_KEY = "mediator_service"
"""The name the service is kept under, in the lifespan state and on ``app.state``."""

Lifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any] | None]]
"""An application's own lifespan, as ``Starlette(lifespan=...)`` takes it."""
ServiceLifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any]]]
"""What `lifespan` returns: ``Starlette(lifespan=...)`` and ``FastAPI(lifespan=...)`` take it."""

_VALID_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
"""What an incoming correlation id may be; anything else is replaced by a new one."""


def lifespan(service: Service, *, inner: Lifespan | None = None) -> ServiceLifespan:
    """A lifespan that starts `service` (its broker, consumers, relay, hooks)
    when the application starts and stops it, draining its consumers, when
    the application shuts down, after the server finished the requests in flight.

    `inner`, the application's own lifespan, runs inside: the service is
    started before it and stopped after it, so its start-up and shut-down
    code can send. The service is put in the lifespan state and on
    ``app.state`` under `STATE_KEY`, where `get_service` finds it. A failure
    of the service while the application ran is raised at shutdown.
    """

    @asynccontextmanager
    async def run(app: Any) -> AsyncIterator[dict[str, Any]]:
        async with service:
            app_state = getattr(app, "state", None)
            if app_state is not None:
                setattr(app_state, STATE_KEY, service)
            try:
                if inner is None:
                    yield {STATE_KEY: service}
                else:
                    async with inner(app) as state:
                        yield {**(state or {}), STATE_KEY: service}
            finally:
                if app_state is not None and getattr(app_state, STATE_KEY, None) is service:
                    delattr(app_state, STATE_KEY)

    return run


def get_service(connection: HTTPConnection) -> Service:
    """The service the application's `lifespan` runs; a dependency
    (``Depends(get_service)``), or call it with the request.

    Raises RuntimeError when no `lifespan` of this module started one (a
    test client that does not run the lifespan, say)."""
    service = connection.scope.get("state", {}).get(STATE_KEY)
    if service is None:
        service = getattr(connection.app.state, STATE_KEY, None)
    if service is None:
        raise RuntimeError(
            "no mediator Service is running for this application: pass "
            "lifespan=mediator.starlette.lifespan(service) to Starlette or FastAPI, "
            "and run the lifespan (a test client: httpx.ASGITransport does not)"
        )
    return cast("Service", service)


def get_mediator(connection: HTTPConnection) -> Mediator:
    """The mediator of the running service (`Service.mediator`): a
    dependency, ``mediator: Mediator = Depends(get_mediator)``."""
    return get_service(connection).mediator


class CorrelationIdMiddleware:
    """Serves each HTTP request (and websocket) inside `correlation_scope`,
    so that what its sends publish carries one correlation id: the request's
    `header` when it has a usable one (1 to 128 letters, digits and
    ``._:/+=-``), else a new one. The id is returned in the same header.

    ```python
    app.add_middleware(CorrelationIdMiddleware)
    ```

    A pure ASGI middleware: the endpoint runs in the task (and context) of the
    request, so `current_correlation_id()` gives the id there too.
    """

    def __init__(self, app: ASGIApp, *, header: str = "X-Correlation-ID") -> None:
        self.app = app
        self.header = header
        self._name = header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == self._name:
                text = value.decode("latin-1")
                incoming = text if _VALID_ID.fullmatch(text) else None
                break
        with correlation_scope(incoming) as correlation_id:
            returned = (self._name, correlation_id.encode("latin-1"))

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    headers = [h for h in message.get("headers", ()) if h[0].lower() != self._name]
                    message["headers"] = [*headers, returned]
                await send(message)

            await self.app(scope, receive, send_with_id)


ErrorHandler = Callable[[Request, Any], Coroutine[Any, Any, Response]]
"""An exception handler, typed as both Starlette and FastAPI take it."""


def error_responses(
    statuses: Mapping[type[Exception], int],
) -> dict[int | type[Exception], ErrorHandler]:
    """Exception handlers answering each error type (and its subclasses) with
    its HTTP status and ``{"error": "TypeName", "detail": "str(error)"}``;
    an error of no type given stays a 500.

    ```python
    app = FastAPI(exception_handlers=error_responses({OrderExists: 409, NoSuchOrder: 404}))
    ```

    The message of a mapped error is sent to the client: map the errors whose
    messages are meant for it (those the handlers raise on purpose).
    """
    for error_type, status in statuses.items():
        if not (isinstance(error_type, type) and issubclass(error_type, Exception)):
            raise TypeError(f"error_responses: {error_type!r} is not an exception type")
        if not (isinstance(status, int) and 400 <= status <= 599):
            raise ValueError(
                f"error_responses: {error_type.__name__} -> {status!r}: "
                "give an HTTP error status, 400 to 599"
            )

    async def respond(request: Request, error: Any) -> Response:
        # The most specific type given wins, as Starlette picks a handler.
        status = next((statuses[t] for t in type(error).__mro__ if t in statuses), 500)
        return JSONResponse({"error": type(error).__name__, "detail": str(error)}, status)

    handlers: dict[int | type[Exception], ErrorHandler] = dict.fromkeys(statuses, respond)
    return handlers
