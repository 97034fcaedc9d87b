"""A command goes through the Mediator; its domain event reaches a local
handler and its notification event lands on the in-memory broker.

Run it with ``python examples/quickstart.py``; no server is needed.
"""

from __future__ import annotations

import asyncio
import uuid

import attrs

from brokers.memory import InMemoryMessageBroker
from mediator import (
    DomainEvent,
    EventEmitter,
    EventHandler,
    EventMap,
    Mediator,
    NotificationEvent,
    Request,
    RequestHandler,
    RequestMap,
)
from mediator.transport import encode_message


@attrs.frozen(kw_only=True)
class JoinMeeting(Request[uuid.UUID]):
    """A command: the user joins the meeting; the response is the seat id."""

    meeting_id: int
    user_id: int


@attrs.frozen(kw_only=True)
class UserJoined(DomainEvent):
    meeting_id: int
    user_id: int


@attrs.frozen(kw_only=True)
class UserJoinedNotification(NotificationEvent, name="meeting.user_joined"):
    meeting_id: int
    user_id: int


class JoinMeetingHandler(RequestHandler[JoinMeeting, uuid.UUID]):
    async def handle(self, request: JoinMeeting) -> uuid.UUID:
        seat = uuid.uuid4()
        self.events.append(UserJoined(meeting_id=request.meeting_id, user_id=request.user_id))
        self.events.append(
            UserJoinedNotification(meeting_id=request.meeting_id, user_id=request.user_id)
        )
        return seat


class GreetUser(EventHandler[UserJoined]):
    async def handle(self, event: UserJoined) -> None:
        print(f"local handler: user {event.user_id} joined meeting {event.meeting_id}")


async def main() -> None:
    requests = RequestMap()
    requests.bind(JoinMeeting, JoinMeetingHandler)

    events = EventMap()
    events.bind(UserJoined, GreetUser)

    broker = InMemoryMessageBroker(channel_prefix="meetings")
    mediator = Mediator(
        request_map=requests,
        event_emitter=EventEmitter(event_map=events, message_broker=broker),
    )

    seat = await mediator.send(JoinMeeting(meeting_id=42, user_id=7))
    print(f"response: seat {seat}")

    published = broker.messages[-1]
    print(f"published on {broker.channel_prefix}:{published.message_type}:{published.message_name}")
    print(encode_message(published).decode())


if __name__ == "__main__":
    asyncio.run(main())
