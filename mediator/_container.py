"""The container protocol: how the mediator gets handler instances.

A container opens one scope per `Mediator.send` (and per consumed message);
everything resolved through that scope shares its request-scoped
dependencies, which are closed when the scope exits.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeVar

__all__ = ["Container", "Resolver"]

T = TypeVar("T")


class Resolver(Protocol):
    """Builds instances inside one open scope."""

    async def resolve(self, type_: type[T]) -> T:
        """An instance of `type_`, with its dependencies injected."""
        ...


class Container(Protocol):
    """Anything that can open a resolution scope.

    An adapter for another DI library is a class with a `scope()` method
    returning an async context manager that yields a `Resolver`.
    """

    def scope(self) -> AbstractAsyncContextManager[Resolver]:
        """Open one scope; leaving it closes the request-scoped dependencies."""
        ...
