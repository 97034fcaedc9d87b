"""The container protocol: how the mediator gets handler instances.

A container opens one scope per `Mediator.send` (and per consumed message);
everything resolved through that scope shares its request-scoped
dependencies, which are closed when the scope exits.

A container of diator's shape, an object with `async resolve(type)` alone,
is taken too: `as_container` adapts it once, when the mediator, emitter or
consumer is built, so a send pays nothing for it.
"""

from __future__ import annotations

import inspect
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol, TypeVar, cast

__all__ = [
    "Container",
    "ResolveOnlyContainer",
    "Resolver",
    "as_container",
    "described",
    "misplaced",
]

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


class _Unscoped:
    """The scope of a resolve-only container: the container itself, nothing to close.
    Stateless, so one instance serves every (concurrent) scope."""

    __slots__ = ("_resolver",)

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver

    async def __aenter__(self) -> Resolver:
        return self._resolver

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class ResolveOnlyContainer:
    """A container of diator's shape (`async resolve(type)`, no scopes) seen as
    a `Container`: every scope is the container itself, so nothing is shared
    per send beyond what the container shares, and nothing is closed."""

    __slots__ = ("_scope", "resolver")

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        """The adapted object."""
        self._scope = _Unscoped(resolver)

    def scope(self) -> AbstractAsyncContextManager[Resolver]:
        """The container itself, as an open scope."""
        return self._scope

    def __repr__(self) -> str:
        return f"ResolveOnlyContainer({self.resolver!r})"


_SHAPES = (
    "pass an object with scope() returning an async context manager that yields a resolver "
    "(like mediator.container.DIContainer), or one with diator's `async def resolve(type)`"
)


def described(value: object) -> str:
    """`value` named for an error about a constructor argument."""
    if isinstance(value, type):
        return f"the class {value.__qualname__}"
    return f"an instance of {type(value).__qualname__}"


def misplaced(value: object, owner: str) -> str:
    """Where `value` belongs when it looks like one of the objects that
    `owner`'s constructor or its neighbours take ("" when it does not):
    positional arguments in the wrong order end up in the wrong slot."""
    if isinstance(value, type):
        return "; pass an instance of it"
    if hasattr(value, "emit_all"):
        return "; it looks like an EventEmitter, which goes in Mediator(event_emitter=...)"
    if hasattr(value, "send_message"):
        return "; it looks like a message broker, which goes in EventEmitter(message_broker=...)"
    if callable(getattr(value, "scope", None)) or inspect.iscoroutinefunction(
        getattr(value, "resolve", None)
    ):
        return f"; it looks like a container, which goes in {owner}(container=...)"
    return ""


def _hint(container: object, owner: str) -> str:
    """Why `container` is no container, when its look says more."""
    if hasattr(container, "solve") and hasattr(container, "enter_scope"):
        return "; a di.Container goes in mediator.container.DIContainer(...)"
    if not isinstance(container, type) and callable(getattr(container, "resolve", None)):
        return (
            "; its resolve is not async (a rodi.Container goes in "
            "mediator.container.RodiContainer(...))"
        )
    return misplaced(container, owner)


def as_container(container: Container | Resolver | None, owner: str) -> Container | None:
    """`container` as the scoped protocol: as it is when it has `scope()`,
    adapted when it has only diator's `async resolve(type)`.

    `owner` names the constructor for the error: anything else raises
    TypeError saying which two shapes are accepted.
    """
    if container is None:
        return None
    if not isinstance(container, type):
        if callable(getattr(container, "scope", None)):
            return cast(Container, container)
        if inspect.iscoroutinefunction(getattr(container, "resolve", None)):
            return ResolveOnlyContainer(cast(Resolver, container))
    raise TypeError(
        f"{owner}(container=...) got {described(container)}, which is neither accepted shape: "
        f"{_SHAPES}{_hint(container, owner)}"
    )
