"""Middlewares wrap the handling of every request, outermost first."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

__all__ = ["Handle", "LoggingMiddleware", "Middleware", "MiddlewareChain"]

Handle = Callable[[Any], Awaitable[Any]]
"""The next step of the chain: call it with the request, await the response."""


class Middleware(Protocol):
    """diator-compatible middleware: ``async def __call__(self, request, handle)``."""

    async def __call__(self, request: Any, handle: Handle) -> Any: ...


Applies = type[Any] | tuple[type[Any], ...] | Callable[[Any], bool]


class _Scoped:
    """A middleware that runs only for the requests it applies to."""

    __slots__ = ("_applies", "_middleware")

    def __init__(self, middleware: Middleware, applies: Applies) -> None:
        self._middleware = middleware
        if isinstance(applies, type | tuple):
            types = applies

            def check(request: Any) -> bool:
                return isinstance(request, types)

            self._applies: Callable[[Any], bool] = check
        else:
            self._applies = applies

    async def __call__(self, request: Any, handle: Handle) -> Any:
        if self._applies(request):
            return await self._middleware(request, handle)
        return await handle(request)

    def __repr__(self) -> str:
        return f"{self._middleware!r} (scoped)"


class MiddlewareChain:
    """An ordered list of middlewares; the first added is the outermost.

    ```python
    chain = MiddlewareChain()
    chain.add(LoggingMiddleware())
    chain.add(TransactionMiddleware(), only=CreateUser)      # one request type
    chain.add(AuditMiddleware(), only=lambda r: r.audited)   # a predicate
    ```
    """

    __slots__ = ("_middlewares",)

    def __init__(self, middlewares: Iterable[Middleware] = ()) -> None:
        self._middlewares: list[Middleware] = list(middlewares)

    def add(self, middleware: Middleware, *, only: Applies | None = None) -> None:
        """Append `middleware` innermost so far; `only` limits it to requests of
        a type (or tuple of types) or to those a predicate accepts."""
        self._middlewares.append(middleware if only is None else _Scoped(middleware, only))

    def set(self, middlewares: Iterable[Middleware]) -> None:
        """Replace the whole chain."""
        self._middlewares[:] = list(middlewares)

    @property
    def middlewares(self) -> list[Middleware]:
        """The live list, outermost first (mutated in place by add and set)."""
        return self._middlewares

    def wrap(self, handle: Handle) -> Handle:
        """`handle` wrapped in every middleware, outermost first."""
        for middleware in reversed(self._middlewares):
            handle = _link(middleware, handle)
        return handle

    def __bool__(self) -> bool:
        return bool(self._middlewares)

    def __len__(self) -> int:
        return len(self._middlewares)


def _link(middleware: Middleware, handle: Handle) -> Handle:
    def step(request: Any) -> Awaitable[Any]:
        return middleware(request, handle)

    return step


class LoggingMiddleware:
    """Logs each request's type, outcome and duration.

    When its logger is not enabled for `level` it passes the request straight
    on: one cached ``isEnabledFor`` check per request.
    """

    __slots__ = ("_level", "_logger")

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.DEBUG) -> None:
        self._logger = logger or logging.getLogger("mediator.requests")
        self._level = level

    async def __call__(self, request: Any, handle: Handle) -> Any:
        logger = self._logger
        if not logger.isEnabledFor(self._level):
            return await handle(request)
        name = type(request).__name__
        started = time.perf_counter()
        try:
            response = await handle(request)
        except BaseException as exc:
            logger.log(
                self._level,
                "%s failed after %.3f ms: %r",
                name,
                (time.perf_counter() - started) * 1000,
                exc,
            )
            raise
        elapsed = (time.perf_counter() - started) * 1000
        logger.log(self._level, "%s handled in %.3f ms", name, elapsed)
        return response
