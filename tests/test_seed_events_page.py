"""diator's Events page, every example on it, with only its imports changed.

The page declares its events as ``@dataclasses.dataclass(frozen=True,
kw_only=True)`` subclasses of the three kinds, raises them from a command
handler that keeps its own `events` list, binds two handlers to one domain
event and wires the emitter and the mediator through a container. The
classes below are the page's, line for line; what the page leaves out (the
command, MeetingAPI, the second handler, the container) is written here the
plainest way. A consumer on the in-memory broker and on Redis Streams then
receives the notification as an instance of its dataclass.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest

# diator: from diator.requests import RequestHandler / from diator.events import ...
from mediator import (
    DomainEvent,
    ECSTEvent,
    Event,
    EventConsumer,
    EventEmitter,
    EventHandler,
    EventMap,
    Mediator,
    NotificationEvent,
    RequestHandler,
    RequestMap,
)
from mediator.testing import wait_until
from tests.transports import FACTORIES, Transport

# Python 3.12 deprecates the page's datetime.utcnow(); the page is run as written.
pytestmark = pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")


# -- what the page uses without showing ------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class JoinMeetingCommand:
    meeting_id: int
    user_id: int


class MeetingAPI:
    def __init__(self) -> None:
        self.joined: list[tuple[int, int]] = []
        self.notified: list[tuple[int, str]] = []

    async def join(self, meeting_id: int, user_id: int) -> None:
        self.joined.append((meeting_id, user_id))

    async def notify(self, meeting_id: int, text: str) -> None:
        self.notified.append((meeting_id, text))


# -- the page's code -------------------------------------------------------------------


class JoinMeetingCommandHandler(RequestHandler[JoinMeetingCommand, None]):
    def __init__(self, meeting_api: MeetingAPI) -> None:
        self._meeting_api = meeting_api
        self._events: list[Event] = []

    @property
    def events(self) -> list[Event]:
        return self._events

    async def handle(self, request: JoinMeetingCommand) -> None:
        await self._meeting_api.join(request.meeting_id, request.user_id)
        self._events.append(
            UserJoinedDomainEvent(
                user_id=request.user_id,
                timestamp=datetime.utcnow(),
                meeting_id=request.meeting_id,
            )
        )
        self._events.append(UserJoinedNotificationEvent(user_id=request.user_id))


@dataclasses.dataclass(frozen=True, kw_only=True)
class UserJoinedDomainEvent(DomainEvent):
    user_id: int = dataclasses.field()
    meeting_id: int = dataclasses.field()
    timestamp: datetime = dataclasses.field()


class UserJoinedDomainEventHandler(EventHandler[UserJoinedDomainEvent]):
    def __init__(self, meeting_api: MeetingAPI) -> None:
        self._meeting_api = meeting_api

    async def handle(self, event: UserJoinedDomainEvent) -> None:
        await self._meeting_api.notify(event.meeting_id, "New user joined!")


@dataclasses.dataclass(frozen=True, kw_only=True)
class UserJoinedNotificationEvent(NotificationEvent):
    user_id: int = dataclasses.field()


@dataclasses.dataclass(frozen=True, kw_only=True)
class UserChangedECSTEvent(ECSTEvent):
    user_id: int = dataclasses.field()
    new_username: str = dataclasses.field()


# -- the page's second handler and its container, not shown there ------------------------


class AnotherUserJoinedDomainEventHandler(EventHandler[UserJoinedDomainEvent]):
    def __init__(self, meeting_api: MeetingAPI) -> None:
        self._meeting_api = meeting_api

    async def handle(self, event: UserJoinedDomainEvent) -> None:
        await self._meeting_api.notify(event.meeting_id, f"user {event.user_id} is here")


class Container:
    """diator's container protocol: ``async resolve(type)``."""

    def __init__(self, meeting_api: MeetingAPI) -> None:
        self.meeting_api = meeting_api

    async def resolve(self, type_: type[Any]) -> Any:
        return type_(self.meeting_api)


def wired(message_broker: Any) -> tuple[Mediator, EventEmitter, MeetingAPI]:
    """The page's "Mapping" and "Event Emitter" sections, as written there."""
    meeting_api = MeetingAPI()
    container = Container(meeting_api)
    request_map = RequestMap()
    request_map.bind(JoinMeetingCommand, JoinMeetingCommandHandler)

    event_map = EventMap()
    event_map.bind(UserJoinedDomainEvent, UserJoinedDomainEventHandler)
    event_map.bind(UserJoinedDomainEvent, AnotherUserJoinedDomainEventHandler)

    event_emitter = EventEmitter(
        event_map=event_map, container=container, message_broker=message_broker
    )
    mediator = Mediator(event_emitter=event_emitter, request_map=request_map, container=container)
    return mediator, event_emitter, meeting_api


# -- the checks ---------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis-streams"])
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    prefix = f"mtk-{uuid.uuid4().hex[:8]}"
    async with FACTORIES[request.param](prefix, request) as transport:
        yield transport


async def test_the_pages_command_reaches_both_handlers_and_a_consumer_gets_the_dataclass(
    transport: Transport,
) -> None:
    received: list[Event] = []
    consumed = EventMap()

    @consumed.bind(UserJoinedNotificationEvent)
    async def joined(event: UserJoinedNotificationEvent) -> None:
        received.append(event)

    @consumed.bind(UserChangedECSTEvent)
    async def changed(event: UserChangedECSTEvent) -> None:
        received.append(event)

    consumer = EventConsumer(broker=transport.broker, event_map=consumed)
    prefix = transport.broker.channel_prefix
    # The page's PSUBSCRIBE pattern, on this test's prefix.
    await consumer.subscribe(f"{prefix}:notification_event:*")
    await consumer.subscribe(f"{prefix}:ecst_event:*")
    mediator, emitter, meeting_api = wired(transport.new_broker())
    async with consumer:
        await mediator.send(JoinMeetingCommand(meeting_id=42, user_id=123))
        await emitter.emit(UserChangedECSTEvent(user_id=123, new_username="ada"))
        await wait_until(consumer, lambda s: s.handled >= 2, timeout=10)

    assert meeting_api.joined == [(42, 123)]
    assert meeting_api.notified == [(42, "New user joined!"), (42, "user 123 is here")]
    notification, state = received
    assert type(notification) is UserJoinedNotificationEvent
    assert notification.user_id == 123
    assert type(state) is UserChangedECSTEvent
    assert (state.user_id, state.new_username) == (123, "ada")


async def test_the_published_event_has_the_pages_wire_shape() -> None:
    from brokers.memory import InMemoryMessageBroker

    broker = InMemoryMessageBroker()
    mediator, _, _ = wired(broker)

    await mediator.send(JoinMeetingCommand(meeting_id=1, user_id=123))

    [message] = broker.messages
    assert message.message_type == "notification_event"
    assert message.message_name == "UserJoinedNotificationEvent"
    assert message.message_id == message.payload["event_id"]
    assert sorted(message.payload) == ["event_id", "event_timestamp", "user_id"]
    assert message.payload["user_id"] == 123
