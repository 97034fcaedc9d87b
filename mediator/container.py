"""Dependency injection with the `di` library.

```python
import di
from mediator.container import DIContainer

container = DIContainer(di.Container())
mediator = Mediator(request_map=requests, container=container)
```

Each handler class is solved once and the solved graph is cached. Every
`scope()` (one per `Mediator.send`) enters a di ``"request"`` scope inside a
long-lived ``"app"`` scope. Dependencies that di wires from type hints are
request-scoped, so one send shares them and closes them after it; an
explicit ``Marker`` must name its scope: ``Marker(open_db, scope="request")``
or ``Marker(Settings, scope="app")``.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, TypeVar

try:
    import di
    from di.dependent import Dependent
    from di.executors import AsyncExecutor
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "mediator.container.DIContainer needs the `di` library: pip install 'mediator-toolkit[di]'"
    ) from exc

__all__ = ["APP_SCOPE", "REQUEST_SCOPE", "DIContainer"]

T = TypeVar("T")

APP_SCOPE = "app"
"""Scope of dependencies that live as long as the DIContainer."""
REQUEST_SCOPE = "request"
"""Scope of dependencies shared by everything one send resolves."""


class DIContainer:
    """Adapts a `di.Container` to the mediator's `Container` protocol.

    Use it as ``async with DIContainer(...)`` or call `aclose()` at shutdown
    to close app-scoped dependencies.
    """

    __slots__ = ("_app_context", "_app_state", "_container", "_executor", "_solved")

    def __init__(self, container: di.Container | None = None) -> None:
        self._container = container if container is not None else di.Container()
        self._executor = AsyncExecutor()
        self._solved: dict[type[Any], di.SolvedDependent[Any]] = {}
        self._app_context: AbstractAsyncContextManager[di.ScopeState] | None = None
        self._app_state: di.ScopeState | None = None

    @property
    def container(self) -> di.Container:
        """The wrapped `di.Container`, for binds."""
        return self._container

    def solved(self, type_: type[T]) -> di.SolvedDependent[T]:
        """The cached solved graph of `type_` (solved on first use)."""
        solved = self._solved.get(type_)
        if solved is None:
            solved = self._container.solve(
                Dependent(type_, scope=REQUEST_SCOPE), scopes=[APP_SCOPE, REQUEST_SCOPE]
            )
            self._solved[type_] = solved
        return solved

    async def app_state(self) -> di.ScopeState:
        """The state of the app scope, entered on first use."""
        if self._app_state is None:
            context = self._container.enter_scope(APP_SCOPE)
            self._app_state = await context.__aenter__()
            self._app_context = context
        return self._app_state

    def scope(self) -> _DIScope:
        """Open one request scope."""
        return _DIScope(self)

    async def aclose(self) -> None:
        """Close app-scoped dependencies; the container can be used again afterwards."""
        context, self._app_context, self._app_state = self._app_context, None, None
        if context is not None:
            await context.__aexit__(None, None, None)

    async def __aenter__(self) -> DIContainer:
        await self.app_state()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _DIScope:
    __slots__ = ("_context", "_owner", "_state")

    def __init__(self, owner: DIContainer) -> None:
        self._owner = owner

    async def __aenter__(self) -> _DIScope:
        app_state = self._owner._app_state or await self._owner.app_state()
        self._context = app_state.enter_scope(REQUEST_SCOPE)
        self._state = await self._context.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._context.__aexit__(exc_type, exc, tb)

    async def resolve(self, type_: type[T]) -> T:
        owner = self._owner
        solved: di.SolvedDependent[T] = owner._solved.get(type_) or owner.solved(type_)
        return await solved.execute_async(owner._executor, self._state)
