"""A diator application migrates by changing its imports (issue 10).

Each test names the promise of docs/migrating-from-diator.md it holds to,
error messages included.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import attrs
import pytest

from brokers.memory import InMemoryMessageBroker
from mediator import (
    DomainEvent,
    Event,
    EventBindingError,
    EventConsumer,
    EventEmitter,
    EventHandler,
    EventMap,
    Mediator,
    Message,
    MiddlewareChain,
    NotificationEvent,
    Request,
    RequestHandler,
    RequestMap,
)
from mediator.testing import wait_for_event

T = TypeVar("T")


# -- containers: diator's `async resolve(type)` alone ---------------------------


class Greeter:
    def __init__(self, greeting: str) -> None:
        self.greeting = greeting


@attrs.frozen(kw_only=True)
class Greet(Request[str]):
    name: str


@attrs.frozen(kw_only=True)
class Greeted(NotificationEvent):
    name: str


class GreetHandler(RequestHandler[Greet, str]):
    def __init__(self, greeter: Greeter) -> None:
        self.greeter = greeter

    async def handle(self, request: Greet) -> str:
        self.events.append(Greeted(name=request.name))
        return f"{self.greeter.greeting}, {request.name}"


class RecordGreeted(EventHandler[Greeted]):
    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    async def handle(self, event: Greeted) -> None:
        self.seen.append(event.name)


class ResolveOnlyContainer:
    """A container as diator's protocol has it: `async resolve(type)`, nothing else."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.resolved: list[type[Any]] = []

    async def resolve(self, type_: type[T]) -> T:
        self.resolved.append(type_)
        built: Any
        if type_ is GreetHandler:
            built = GreetHandler(Greeter("Hello"))
        elif type_ is RecordGreeted:
            built = RecordGreeted(self.seen)
        else:
            built = type_()
        return built  # type: ignore[no-any-return]


def greet_maps() -> tuple[RequestMap, EventMap]:
    requests = RequestMap()
    requests.bind(Greet, GreetHandler)
    events = EventMap()
    events.bind(Greeted, RecordGreeted)
    return requests, events


async def test_a_resolve_only_container_builds_the_handlers_of_a_send() -> None:
    container = ResolveOnlyContainer()
    requests, events = greet_maps()
    broker = InMemoryMessageBroker(channel_prefix="greet")
    mediator = Mediator(
        request_map=requests,
        container=container,
        event_emitter=EventEmitter(event_map=events, container=container, message_broker=broker),
    )

    assert await mediator.send(Greet(name="ada")) == "Hello, ada"

    assert container.resolved == [GreetHandler]
    assert [m.message_name for m in broker.messages] == ["Greeted"]


async def test_a_resolve_only_container_builds_the_handlers_of_a_consumer() -> None:
    container = ResolveOnlyContainer()
    _, events = greet_maps()
    broker = InMemoryMessageBroker(channel_prefix="greet")
    consumer = EventConsumer(broker=broker, event_map=events, container=container)
    await consumer.subscribe("greet:notification_event:*")
    async with consumer:
        await EventEmitter(event_map=events, message_broker=broker).emit(Greeted(name="bob"))
        await wait_for_event(consumer, Greeted)

    assert container.seen == ["bob"]
    assert consumer.stats.handled == 1
    assert consumer.stats.released == consumer.stats.dead_lettered == 0


class NoShape:
    """Neither `scope()` nor `async resolve(type)`."""


class SyncResolve:
    """A `resolve` that is not a coroutine function, as on a bare rodi.Container."""

    def resolve(self, type_: type[T]) -> T:
        return type_()


CONSTRUCTORS = {
    "Mediator": lambda c: Mediator(request_map=RequestMap(), container=c),
    "EventEmitter": lambda c: EventEmitter(event_map=EventMap(), container=c),
    "EventConsumer": lambda c: EventConsumer(
        broker=InMemoryMessageBroker(), event_map=EventMap(), container=c
    ),
}


@pytest.mark.parametrize("owner", list(CONSTRUCTORS))
@pytest.mark.parametrize("container", [NoShape(), SyncResolve(), ResolveOnlyContainer])
def test_a_container_of_neither_shape_is_refused_at_construction(
    owner: str, container: object
) -> None:
    with pytest.raises(TypeError) as refused:
        CONSTRUCTORS[owner](container)

    message = str(refused.value)
    assert message.startswith(f"{owner}(container=...)")
    assert "scope()" in message
    assert "async def resolve(type)" in message


# -- Message ------------------------------------------------------------------


def test_a_message_built_without_an_id_gets_a_fresh_uuid() -> None:
    first = Message(payload={"phrase": "hello"}, message_type="", message_name="")
    second = Message(payload={"phrase": "hello"}, message_type="", message_name="")

    assert isinstance(first.message_id, uuid.UUID)
    assert first.message_id != second.message_id
    assert first.headers == {}


# -- positional construction in diator's order ----------------------------------


class Shout:
    """A diator middleware."""

    async def __call__(self, request: Any, handle: Any) -> Any:
        return (await handle(request)).upper()


async def test_mediator_takes_diators_positional_order() -> None:
    container = ResolveOnlyContainer()
    requests, events = greet_maps()
    broker = InMemoryMessageBroker(channel_prefix="greet")
    chain = MiddlewareChain()
    chain.add(Shout())
    emitter = EventEmitter(events, container, broker)  # diator's order too

    mediator = Mediator(requests, container, emitter, chain)

    assert await mediator.send(Greet(name="ada")) == "HELLO, ADA"
    assert [m.message_name for m in broker.messages] == ["Greeted"]


@pytest.mark.parametrize(
    ("build", "says"),
    [
        # The order this library had before: the emitter lands in diator's container slot.
        pytest.param(
            lambda: Mediator(RequestMap(), EventEmitter()),
            "Mediator(container=...) got an instance of EventEmitter, which is neither accepted "
            "shape",
        ),
        pytest.param(
            lambda: Mediator(RequestMap(), None, ResolveOnlyContainer()),
            "Mediator(event_emitter=...) got an instance of ResolveOnlyContainer, which has no "
            "emit_all; pass an EventEmitter(event_map=..., message_broker=...); it looks like a "
            "container, which goes in Mediator(container=...)",
        ),
        pytest.param(
            lambda: Mediator(RequestMap(), None, None, [Shout()]),
            "Mediator(middleware_chain=...) got an instance of list; pass "
            "MiddlewareChain([...]) with the middlewares in order, outermost first",
        ),
        pytest.param(
            lambda: EventEmitter(EventMap(), InMemoryMessageBroker()),
            "EventEmitter(container=...) got an instance of InMemoryMessageBroker, which is "
            "neither accepted shape",
        ),
        pytest.param(
            lambda: EventEmitter(EventMap(), None, ResolveOnlyContainer()),
            "EventEmitter(message_broker=...) got an instance of ResolveOnlyContainer, which has "
            "no send_message; pass a broker such as brokers.memory.InMemoryMessageBroker(); it "
            "looks like a container, which goes in EventEmitter(container=...)",
        ),
        pytest.param(
            lambda: EventEmitter(RequestMap()),
            "EventEmitter(event_map=...) got an instance of RequestMap; pass an EventMap",
        ),
    ],
)
def test_a_wrong_type_in_a_constructor_slot_is_refused_naming_the_keyword(
    build: Any, says: str
) -> None:
    with pytest.raises(TypeError) as refused:
        build()

    assert str(refused.value).startswith(says)


# -- diator-style @dataclass events -------------------------------------------

ATTRS_INSTEAD = (
    "is a @dataclass, but events are attrs classes, which is how they get event_id and "
    "event_timestamp: declare it with @attrs.frozen(kw_only=True) instead of "
    "@dataclass(frozen=True, kw_only=True)"
)


@dataclass(frozen=True, kw_only=True)
class UserJoinedDomainEvent(DomainEvent):
    user_id: int


@dataclass(frozen=True, kw_only=True)
class UserJoinedNotificationEvent(NotificationEvent):
    user_id: int


@dataclass(frozen=True, kw_only=True)
class CheckedNotificationEvent(NotificationEvent):
    """A dataclass event with a __post_init__ of its own, which skips ours."""

    user_id: int

    def __post_init__(self) -> None:
        if self.user_id < 0:
            raise ValueError("user_id must not be negative")


@attrs.frozen(kw_only=True)
class Joined(DomainEvent):
    user_id: int


@attrs.frozen(kw_only=True)
class JoinMeetingRoomCommand(Request[None]):
    user_id: int


class RaisesDataclassEvent(RequestHandler[JoinMeetingRoomCommand, None]):
    async def handle(self, request: JoinMeetingRoomCommand) -> None:
        self.events.append(Joined(user_id=request.user_id))
        self.events.append(UserJoinedNotificationEvent(user_id=request.user_id))


class RaisesCheckedEvent(RequestHandler[JoinMeetingRoomCommand, None]):
    async def handle(self, request: JoinMeetingRoomCommand) -> None:
        self.events.append(CheckedNotificationEvent(user_id=request.user_id))


class RecordJoined(EventHandler[Joined]):
    seen: ClassVar[list[int]] = []

    async def handle(self, event: Joined) -> None:
        self.seen.append(event.user_id)


@pytest.mark.parametrize("event_type", [UserJoinedDomainEvent, UserJoinedNotificationEvent])
def test_binding_a_dataclass_event_is_refused_saying_what_to_change(
    event_type: type[Event],
) -> None:
    events = EventMap()
    with pytest.raises(EventBindingError) as refused:
        events.bind(event_type, RecordJoined)

    name = event_type.__qualname__
    assert str(refused.value) == f"EventMap.bind({name}, RecordJoined): {name} {ATTRS_INSTEAD}"
    assert events.bindings == ()


def test_registering_a_dataclass_event_is_refused_saying_what_to_change() -> None:
    events = EventMap()
    with pytest.raises(EventBindingError) as refused:
        events.register(UserJoinedNotificationEvent)

    name = "UserJoinedNotificationEvent"
    assert str(refused.value) == f"EventMap.register({name}): {name} {ATTRS_INSTEAD}"
    assert events.event_classes() == {}


@pytest.mark.parametrize("event_type", [UserJoinedDomainEvent, UserJoinedNotificationEvent])
def test_a_dataclass_event_cannot_be_built(event_type: type[Event]) -> None:
    with pytest.raises(TypeError) as refused:
        event_type(user_id=1)  # type: ignore[call-arg]

    assert str(refused.value) == f"{event_type.__qualname__} {ATTRS_INSTEAD}"


async def test_a_handler_raising_a_dataclass_event_fails_its_send_before_any_event_runs() -> None:
    RecordJoined.seen.clear()
    requests = RequestMap()
    requests.bind(JoinMeetingRoomCommand, RaisesDataclassEvent)
    events = EventMap()
    events.bind(Joined, RecordJoined)
    broker = InMemoryMessageBroker()
    mediator = Mediator(
        request_map=requests,
        event_emitter=EventEmitter(event_map=events, message_broker=broker),
    )

    with pytest.raises(TypeError, match=re.escape(f"UserJoinedNotificationEvent {ATTRS_INSTEAD}")):
        await mediator.send(JoinMeetingRoomCommand(user_id=1))

    assert RecordJoined.seen == []  # the attrs event raised before it was dropped too
    assert list(broker.messages) == []


async def test_a_dataclass_event_with_its_own_post_init_is_refused_before_publishing() -> None:
    requests = RequestMap()
    requests.bind(JoinMeetingRoomCommand, RaisesCheckedEvent)
    broker = InMemoryMessageBroker()
    mediator = Mediator(
        request_map=requests,
        event_emitter=EventEmitter(event_map=EventMap(), message_broker=broker),
    )

    with pytest.raises(TypeError, match=re.escape(f"CheckedNotificationEvent {ATTRS_INSTEAD}")):
        await mediator.send(JoinMeetingRoomCommand(user_id=1))

    assert list(broker.messages) == []


def test_a_dataclass_subclass_of_a_bound_event_is_never_decoded_into() -> None:
    @attrs.frozen(kw_only=True)
    class MeetingEvent(NotificationEvent):
        meeting_id: int

    @dataclass(frozen=True, kw_only=True)
    class MeetingClosedAsDataclass(MeetingEvent):
        reason: str

    events = EventMap()
    events.bind(MeetingEvent, RecordJoined)

    # Found by name among the subclasses of a bound class, it would fail to build.
    assert events.event_class("MeetingClosedAsDataclass") is None
