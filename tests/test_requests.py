"""Sending requests: dispatch, typing, events raised by handlers, streaming."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import attrs
import pytest

from brokers.memory import InMemoryMessageBroker
from mediator import (
    DomainEvent,
    Event,
    EventEmitter,
    EventMap,
    Mediator,
    MediatorError,
    NotificationEvent,
    Request,
    RequestBindingError,
    RequestHandler,
    RequestMap,
    StreamingRequestHandler,
    StreamRequest,
)


@attrs.frozen(kw_only=True)
class Add(Request[int]):
    a: int
    b: int


class AddHandler(RequestHandler[Add, int]):
    async def handle(self, request: Add) -> int:
        return request.a + request.b


@attrs.frozen(kw_only=True)
class Happened(DomainEvent):
    step: int


@attrs.frozen(kw_only=True)
class Announced(NotificationEvent):
    step: int


@attrs.frozen(kw_only=True)
class RaiseThree(Request[None]):
    fail: bool = False


class RaiseThreeHandler(RequestHandler[RaiseThree, None]):
    async def handle(self, request: RaiseThree) -> None:
        self.events.append(Happened(step=1))
        self.events.append(Announced(step=2))
        self.events.append(Happened(step=3))
        if request.fail:
            raise RuntimeError("handler failed")


def recording_map(seen: list[Event]) -> EventMap:
    events = EventMap()

    @events.bind(Happened)
    async def record(event: Happened) -> None:
        seen.append(event)

    return events


async def test_send_returns_the_handler_response() -> None:
    requests = RequestMap()
    requests.bind(Add, AddHandler)
    assert await Mediator(request_map=requests).send(Add(a=2, b=3)) == 5


async def test_any_object_is_dispatched_by_its_type() -> None:
    @dataclasses.dataclass
    class Plain:
        text: str

    class Shout:
        async def handle(self, request: Plain) -> str:
            return request.text.upper()

    requests = RequestMap()
    requests.bind(Plain, Shout)
    assert await Mediator(request_map=requests).send(Plain("hi")) == "HI"


async def test_unbound_request_names_the_type_and_how_to_bind() -> None:
    mediator = Mediator(request_map=RequestMap())
    with pytest.raises(RequestBindingError, match=r"No handler bound for Add; bind one with "):
        await mediator.send(Add(a=1, b=1))


async def test_a_request_type_takes_one_handler() -> None:
    requests = RequestMap()
    requests.bind(Add, AddHandler)
    with pytest.raises(RequestBindingError, match="already bound to AddHandler"):
        requests.bind(Add, AddHandler)


def test_binding_something_without_handle_is_refused() -> None:
    with pytest.raises(RequestBindingError, match="async def handle"):
        RequestMap().bind(Add, object)


async def test_events_are_processed_in_raised_order_and_published_after_local_handlers() -> None:
    seen: list[Event] = []
    broker = InMemoryMessageBroker()
    requests = RequestMap()
    requests.bind(RaiseThree, RaiseThreeHandler)
    emitter = EventEmitter(event_map=recording_map(seen), message_broker=broker)
    await Mediator(request_map=requests, event_emitter=emitter).send(RaiseThree())

    assert [e.step for e in seen if isinstance(e, Happened)] == [1, 3]
    assert [m.payload["step"] for m in broker.messages] == [2]


async def test_nothing_is_emitted_when_handle_raises() -> None:
    seen: list[Event] = []
    broker = InMemoryMessageBroker()
    requests = RequestMap()
    requests.bind(RaiseThree, RaiseThreeHandler)
    emitter = EventEmitter(event_map=recording_map(seen), message_broker=broker)
    with pytest.raises(RuntimeError, match="handler failed"):
        await Mediator(request_map=requests, event_emitter=emitter).send(RaiseThree(fail=True))
    assert seen == []
    assert list(broker.messages) == []


class SameInstance:
    """A container that hands out one handler instance to every send."""

    def __init__(self, instance: object) -> None:
        self.instance = instance

    def scope(self) -> SameInstance:
        return self

    async def __aenter__(self) -> SameInstance:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def resolve(self, type_: type[object]) -> object:
        return self.instance


def mediator_reusing(shared: RaiseThreeHandler, seen: list[Event]) -> Mediator:
    requests = RequestMap()
    requests.bind(RaiseThree, RaiseThreeHandler)
    return Mediator(
        request_map=requests,
        event_emitter=EventEmitter(
            event_map=recording_map(seen), message_broker=InMemoryMessageBroker()
        ),
        container=SameInstance(shared),
    )


async def test_a_reused_handler_never_re_emits_old_events() -> None:
    shared = RaiseThreeHandler()
    seen: list[Event] = []
    mediator = mediator_reusing(shared, seen)
    await mediator.send(RaiseThree())
    await mediator.send(RaiseThree())
    assert [e.step for e in seen if isinstance(e, Happened)] == [1, 3, 1, 3]
    assert shared.events == []


async def test_events_of_a_failed_handle_are_dropped_not_emitted_by_the_next_send() -> None:
    shared = RaiseThreeHandler()
    seen: list[Event] = []
    mediator = mediator_reusing(shared, seen)
    with pytest.raises(RuntimeError, match="handler failed"):
        await mediator.send(RaiseThree(fail=True))
    await mediator.send(RaiseThree())
    assert [e.step for e in seen if isinstance(e, Happened)] == [1, 3]


async def test_diator_style_events_property_is_collected_and_cleared() -> None:
    class DiatorStyle:
        def __init__(self) -> None:
            self._events: list[Event] = []

        @property
        def events(self) -> list[Event]:
            return self._events

        async def handle(self, request: RaiseThree) -> None:
            self._events.append(Happened(step=7))

    seen: list[Event] = []
    requests = RequestMap()
    requests.bind(RaiseThree, DiatorStyle)
    emitter = EventEmitter(event_map=recording_map(seen))
    await Mediator(request_map=requests, event_emitter=emitter).send(RaiseThree())
    assert [e.step for e in seen if isinstance(e, Happened)] == [7]


async def test_events_without_an_emitter_are_an_error_not_a_silent_drop() -> None:
    requests = RequestMap()
    requests.bind(RaiseThree, RaiseThreeHandler)
    with pytest.raises(MediatorError, match="has no event emitter"):
        await Mediator(request_map=requests).send(RaiseThree())


@attrs.frozen(kw_only=True)
class CountTo(StreamRequest[int]):
    limit: int


class CountToHandler(StreamingRequestHandler[CountTo, int]):
    async def handle(self, request: CountTo) -> AsyncIterator[int]:
        for number in range(1, request.limit + 1):
            self.events.append(Happened(step=number))
            yield number


async def test_stream_yields_items_and_emits_each_items_events_before_it() -> None:
    seen: list[Event] = []
    requests = RequestMap()
    requests.bind(CountTo, CountToHandler)
    mediator = Mediator(
        request_map=requests, event_emitter=EventEmitter(event_map=recording_map(seen))
    )
    observed: list[tuple[int, int]] = []
    async for item in mediator.stream(CountTo(limit=3)):
        observed.append((item, len(seen)))
    assert observed == [(1, 1), (2, 2), (3, 3)]


async def test_send_and_stream_refuse_the_wrong_kind_of_handler() -> None:
    requests = RequestMap()
    requests.bind(CountTo, CountToHandler)
    requests.bind(Add, AddHandler)
    mediator = Mediator(request_map=requests)
    with pytest.raises(RequestBindingError, match=r"mediator\.stream"):
        await mediator.send(CountTo(limit=1))
    with pytest.raises(RequestBindingError, match=r"mediator\.send"):
        async for _ in mediator.stream(Add(a=1, b=2)):
            pass
