"""DIContainer: cached solves, one request scope per send, app scope across sends;
diator's API on it; RodiContainer, one rodi activation scope per send."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Annotated, ClassVar

import attrs
import di
import pytest
import rodi
from di import bind_by_type
from di.dependent import Dependent, Marker

from mediator import (
    DomainEvent,
    EventEmitter,
    EventHandler,
    EventMap,
    Mediator,
    Request,
    RequestHandler,
    RequestMap,
)
from mediator.container import DIContainer, RodiContainer


class Session:
    """A request-scoped resource: opened per send, closed after it."""

    opened: ClassVar[list[Session]] = []
    closed: ClassVar[list[Session]] = []

    def __init__(self) -> None:
        self.writes: list[str] = []


async def open_session() -> AsyncIterator[Session]:
    session = Session()
    Session.opened.append(session)
    yield session
    Session.closed.append(session)


class Settings:
    """An app-scoped dependency: one for the container's life."""


SessionDep = Annotated[Session, Marker(open_session, scope="request")]
SettingsDep = Annotated[Settings, Marker(Settings, scope="app")]


@attrs.frozen(kw_only=True)
class Register(Request[tuple[int, int]]):
    name: str


@attrs.frozen(kw_only=True)
class Registered(DomainEvent):
    name: str


class RegisterHandler(RequestHandler[Register, tuple[int, int]]):
    def __init__(self, session: SessionDep, settings: SettingsDep) -> None:
        self.session = session
        self.settings = settings

    async def handle(self, request: Register) -> tuple[int, int]:
        self.session.writes.append(f"register {request.name}")
        self.events.append(Registered(name=request.name))
        return id(self.session), id(self.settings)


class AuditRegistered(EventHandler[Registered]):
    def __init__(self, session: SessionDep) -> None:
        self.session = session

    async def handle(self, event: Registered) -> None:
        self.session.writes.append(f"audit {event.name}")


def build(container: DIContainer) -> Mediator:
    requests = RequestMap()
    requests.bind(Register, RegisterHandler)
    events = EventMap()
    events.bind(Registered, AuditRegistered)
    return Mediator(
        request_map=requests,
        event_emitter=EventEmitter(event_map=events, container=container),
        container=container,
    )


async def test_one_send_shares_its_request_scope_and_closes_it_after() -> None:
    Session.opened.clear()
    Session.closed.clear()
    async with DIContainer(di.Container()) as container:
        mediator = build(container)
        first_session, first_settings = await mediator.send(Register(name="ada"))
        second_session, second_settings = await mediator.send(Register(name="bob"))

    # The handler and the event handler it triggered wrote to the same session.
    assert [s.writes for s in Session.opened] == [
        ["register ada", "audit ada"],
        ["register bob", "audit bob"],
    ]
    assert Session.closed == Session.opened  # each closed once its send was done
    assert first_session != second_session
    assert first_settings == second_settings  # app scope spans sends


async def test_solved_graphs_are_cached_per_type() -> None:
    container = DIContainer()
    assert container.solved(AuditRegistered) is container.solved(AuditRegistered)
    await container.aclose()


class Clock:
    def now(self) -> str:
        return "real"


class FrozenClock(Clock):
    def now(self) -> str:
        return "frozen"


@attrs.frozen
class WhatTime(Request[str]):
    pass


class WhatTimeHandler(RequestHandler[WhatTime, str]):
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    async def handle(self, request: WhatTime) -> str:
        return self.clock.now()


async def test_binds_on_the_wrapped_container_are_honoured() -> None:
    wrapped = di.Container()
    wrapped.bind(bind_by_type(Dependent(FrozenClock, scope="request"), Clock))
    requests = RequestMap()
    requests.bind(WhatTime, WhatTimeHandler)
    async with DIContainer(wrapped) as container:
        mediator = Mediator(request_map=requests, container=container)
        assert await mediator.send(WhatTime()) == "frozen"


# -- diator's API: DIContainer() + attach_external_container + resolve ----------


class Dependency: ...


async def test_a_container_attached_after_construction_resolves_as_in_diator() -> None:
    external_container = di.Container()
    external_container.bind(bind_by_type(Dependent(Dependency, scope="request"), Dependency))

    di_container = DIContainer()
    di_container.attach_external_container(external_container)

    assert di_container.external_container is external_container
    assert isinstance(await di_container.resolve(Dependency), Dependency)


async def test_sends_use_the_binds_of_the_attached_container() -> None:
    wrapped = di.Container()
    wrapped.bind(bind_by_type(Dependent(FrozenClock, scope="request"), Clock))
    requests = RequestMap()
    requests.bind(WhatTime, WhatTimeHandler)
    container = DIContainer()
    container.attach_external_container(wrapped)
    async with container:
        mediator = Mediator(request_map=requests, container=container)
        assert await mediator.send(WhatTime()) == "frozen"


async def test_resolve_outside_a_send_closes_its_request_scope_before_returning() -> None:
    Session.opened.clear()
    Session.closed.clear()
    container = DIContainer()

    handler = await container.resolve(RegisterHandler)

    # As in diator: the scope lives for the resolve alone, so request-scoped
    # resources are already closed; sends open one scope for the whole send.
    assert Session.opened == Session.closed == [handler.session]
    await container.aclose()


async def test_attaching_once_the_app_scope_is_open_is_refused() -> None:
    async with DIContainer() as container:
        with pytest.raises(RuntimeError) as refused:
            container.attach_external_container(di.Container())

    assert str(refused.value) == (
        "DIContainer.attach_external_container: the app scope of the attached container is "
        "open; attach before the first send or resolve, or call `await container.aclose()` first"
    )


# -- RodiContainer: diator's rodi adapter, with scopes ---------------------------


class UnitOfWork:
    """Scoped in rodi: one per send."""


class RegisterWithRodi(RequestHandler[Register, tuple[int, int]]):
    def __init__(self, unit_of_work: UnitOfWork) -> None:
        self.unit_of_work = unit_of_work

    async def handle(self, request: Register) -> tuple[int, int]:
        self.events.append(Registered(name=request.name))
        return id(self.unit_of_work), 0


AUDITED_UNITS: list[UnitOfWork] = []


class AuditWithRodi(EventHandler[Registered]):
    def __init__(self, unit_of_work: UnitOfWork) -> None:
        self.unit_of_work = unit_of_work

    async def handle(self, event: Registered) -> None:
        AUDITED_UNITS.append(self.unit_of_work)


async def test_a_rodi_container_attached_as_in_diator_resolves() -> None:
    external_container = rodi.Container()
    external_container.register(Dependency)

    rodi_container = RodiContainer()
    rodi_container.attach_external_container(external_container)

    assert rodi_container.external_container is external_container
    assert isinstance(await rodi_container.resolve(Dependency), Dependency)


async def test_one_send_is_one_rodi_scope_shared_with_its_event_handlers() -> None:
    AUDITED_UNITS.clear()
    services = rodi.Container()
    services.add_scoped(UnitOfWork)
    services.register(RegisterWithRodi)
    services.register(AuditWithRodi)
    container = RodiContainer(services)
    requests = RequestMap()
    requests.bind(Register, RegisterWithRodi)
    events = EventMap()
    events.bind(Registered, AuditWithRodi)
    mediator = Mediator(requests, container, EventEmitter(events))

    first, _ = await mediator.send(Register(name="ada"))
    second, _ = await mediator.send(Register(name="bob"))

    assert [id(unit) for unit in AUDITED_UNITS] == [first, second]
    assert first != second


async def test_a_rodi_container_with_nothing_attached_says_how_to_attach_one() -> None:
    requests = RequestMap()
    requests.bind(WhatTime, WhatTimeHandler)
    mediator = Mediator(request_map=requests, container=RodiContainer())

    with pytest.raises(AttributeError) as refused:
        await mediator.send(WhatTime())

    assert str(refused.value) == (
        "RodiContainer has no rodi.Container yet; pass RodiContainer(container) or call "
        "attach_external_container(container)"
    )


def test_without_rodi_installed_the_adapter_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "rodi", None)  # what a missing package looks like

    with pytest.raises(ImportError) as missing:
        RodiContainer()

    assert str(missing.value) == (
        "mediator.container.RodiContainer needs the `rodi` library: "
        "pip install 'mediator-toolkit[rodi]'"
    )


class CountingRegisterHandler(RequestHandler[Register, tuple[int, int]]):
    """A handler with a class-level annotation, which rodi reads as an injectable property."""

    handled: ClassVar[int] = 0

    async def handle(self, request: Register) -> tuple[int, int]:
        type(self).handled += 1
        return 0, 0


async def test_rodi_builds_a_handler_with_class_level_annotations() -> None:
    services = rodi.Container()
    services.register(CountingRegisterHandler)
    requests = RequestMap()
    requests.bind(Register, CountingRegisterHandler)
    mediator = Mediator(request_map=requests, container=RodiContainer(services))

    await mediator.send(Register(name="ada"))

    assert CountingRegisterHandler.handled == 1
