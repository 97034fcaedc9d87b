"""Adapters for dependency-injection libraries: `DIContainer` for `di`,
`RodiContainer` for rodi. Each library is optional; building an adapter
without its library raises an ImportError that says what to install.

```python
import di
from mediator.container import DIContainer

container = DIContainer(di.Container())
mediator = Mediator(request_map=requests, container=container)
```

`DIContainer`: each handler class is solved once and the solved graph is
cached. Every `scope()` (one per `Mediator.send`) enters a di ``"request"``
scope inside a long-lived ``"app"`` scope. Dependencies that di wires from
type hints are request-scoped, so one send shares them and closes them after
it; an explicit ``Marker`` must name its scope:
``Marker(open_db, scope="request")`` or ``Marker(Settings, scope="app")``.

Both adapters also have diator's API: build them empty, then
``attach_external_container(container)``; ``external_container``; and
``await resolve(type)`` outside any send.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

_DI_MISSING: ImportError | None = None
try:
    import di
    from di.dependent import Dependent
    from di.executors import AsyncExecutor
except ImportError as exc:  # pragma: no cover - depends on the environment
    _DI_MISSING = exc

if TYPE_CHECKING:
    import rodi

__all__ = ["APP_SCOPE", "REQUEST_SCOPE", "DIContainer", "RodiContainer"]

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
        if _DI_MISSING is not None:  # pragma: no cover - depends on the environment
            raise ImportError(
                "mediator.container.DIContainer needs the `di` library: "
                "pip install 'mediator-toolkit[di]'"
            ) from _DI_MISSING
        self._container = container if container is not None else di.Container()
        self._executor = AsyncExecutor()
        self._solved: dict[type[Any], di.SolvedDependent[Any]] = {}
        self._app_context: AbstractAsyncContextManager[di.ScopeState] | None = None
        self._app_state: di.ScopeState | None = None

    @property
    def container(self) -> di.Container:
        """The wrapped `di.Container`, for binds."""
        return self._container

    @property
    def external_container(self) -> di.Container:
        """The wrapped `di.Container` (diator's name for `container`)."""
        return self._container

    def attach_external_container(self, container: di.Container) -> None:
        """Wrap `container` instead (diator's way to configure the adapter):

        ```python
        container = DIContainer()
        container.attach_external_container(di_container)
        ```

        Raises RuntimeError once the app scope is open (after a send, a
        resolve or ``async with``): its dependencies came from the other one.
        """
        if self._app_state is not None:
            raise RuntimeError(
                "DIContainer.attach_external_container: the app scope of the attached container "
                "is open; attach before the first send or resolve, or call "
                "`await container.aclose()` first"
            )
        self._container = container
        self._solved.clear()

    async def resolve(self, type_: type[T]) -> T:
        """An instance of `type_` built in a request scope of its own, closed
        before it is returned (diator's `resolve`). A send opens one scope for
        the whole send instead; prefer that for request-scoped resources."""
        async with self.scope() as scope:
            return await scope.resolve(type_)

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


def _require_rodi() -> None:
    try:
        import rodi  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "mediator.container.RodiContainer needs the `rodi` library: "
            "pip install 'mediator-toolkit[rodi]'"
        ) from exc


class RodiContainer:
    """Adapts a `rodi.Container` to the mediator's `Container` protocol, as
    diator's `RodiContainer` did, plus scopes.

    ```python
    import rodi
    from mediator.container import RodiContainer

    services = rodi.Container()
    services.register(CreateUserHandler)
    container = RodiContainer(services)  # or diator's way:
    # container = RodiContainer(); container.attach_external_container(services)
    ```

    Every `scope()` (one per send, one per consumed message) is a rodi
    activation scope, so a service registered as scoped
    (``add_scoped``) is one instance per send, shared by the request handler
    and the event handlers it triggers. Register every handler class with rodi.
    Resolution uses the container's own provider (``rodi.Container.provider``),
    built on first use, so register everything before the first send.
    """

    __slots__ = ("_container", "_services")

    def __init__(self, container: rodi.Container | None = None) -> None:
        _require_rodi()
        self._container = container
        self._services: rodi.Services | None = None

    @property
    def container(self) -> rodi.Container:
        """The wrapped `rodi.Container`.

        Raises AttributeError, saying how to attach one, when there is none.
        """
        if self._container is None:
            raise AttributeError(
                "RodiContainer has no rodi.Container yet; pass RodiContainer(container) or call "
                "attach_external_container(container)"
            )
        return self._container

    @property
    def external_container(self) -> rodi.Container:
        """The wrapped `rodi.Container` (diator's name for `container`)."""
        return self.container

    def attach_external_container(self, container: rodi.Container) -> None:
        """Wrap `container` instead (diator's way to configure the adapter)."""
        self._container = container
        self._services = None

    def services(self) -> rodi.Services:
        """The provider that builds instances: the container's own, built on first use."""
        services = self._services
        if services is None:
            services = self._services = self.container.provider
        return services

    def scope(self) -> _RodiScope:
        """Open one activation scope."""
        return _RodiScope(self.services())

    async def resolve(self, type_: type[T]) -> T:
        """An instance of `type_` outside any scope (diator's `resolve`):
        scoped services get a scope of their own."""
        return self.services().get(type_)


class _RodiScope:
    __slots__ = ("_scope", "_services")

    def __init__(self, services: rodi.Services) -> None:
        self._services = services

    async def __aenter__(self) -> _RodiScope:
        self._scope = self._services.create_scope()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._scope.dispose()  # type: ignore[no-untyped-call]  # rodi leaves it unannotated

    async def resolve(self, type_: type[T]) -> T:
        return self._services.get(type_, self._scope)
