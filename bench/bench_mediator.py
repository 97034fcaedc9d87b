"""Mediator.send against doing the same work by hand, measured in one run.

    python bench/bench_mediator.py [--quick]

Budgets (README.md, "Benchmarks"): send with no events and no container <= 1.2x the
least any mediator must do, written out here (look the handler class up by
request type, construct it, await handle, check its events are empty; the
direct `await handler.handle(request)` is printed beside it); with DIContainer
<= 1.3x entering a di request scope, executing a cached solve and awaiting
handle; send whose handler raises one DomainEvent handled by one local handler
<= 1.5x building the event and calling the event handler by hand.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import attrs
import di
from di.dependent import Dependent
from di.executors import AsyncExecutor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import compare

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
from mediator.container import DIContainer


@attrs.frozen(kw_only=True)
class Ping(Request[int]):
    value: int


class PingHandler(RequestHandler[Ping, int]):
    async def handle(self, request: Ping) -> int:
        return request.value + 1


class Repository:
    def __init__(self) -> None:
        self.rows = 0


class PingWithDependency(RequestHandler[Ping, int]):
    def __init__(self, repository: Repository) -> None:
        self.repository = repository

    async def handle(self, request: Ping) -> int:
        return request.value + 1


class DiatorStyleHandler:
    """A handler as diator's docs write one: its own events list and a dependency."""

    def __init__(self, repository: Repository | None = None) -> None:
        self.repository = repository
        self._events: list[DomainEvent] = []

    @property
    def events(self) -> list[DomainEvent]:
        return self._events

    async def handle(self, request: Ping) -> int:
        return request.value + 1


ROUTES: dict[type[Any], type[Any]] = {Ping: PingHandler}


async def least_send(request: Any) -> Any:
    """The least any mediator must do: look the handler class up by request
    type, construct it, await `handle`, check that it raised no events."""
    handler = ROUTES[type(request)]()
    result = await handler.handle(request)
    if handler.events:
        raise AssertionError("this bench's handler raises no events")
    return result


@attrs.frozen(kw_only=True)
class Pinged(DomainEvent):
    value: int


@attrs.frozen(kw_only=True)
class PingEvents(Request[int]):
    value: int


class PingEventsHandler(RequestHandler[PingEvents, int]):
    async def handle(self, request: PingEvents) -> int:
        self.events.append(Pinged(value=request.value))
        return request.value + 1


class PingedHandler(EventHandler[Pinged]):
    async def handle(self, event: Pinged) -> None:
        return None


async def main(n: int, repeats: int) -> None:
    requests = RequestMap()
    requests.bind(Ping, PingHandler)
    requests.bind(PingEvents, PingEventsHandler)
    events = EventMap()
    events.bind(Pinged, PingedHandler)
    mediator = Mediator(request_map=requests, event_emitter=EventEmitter(event_map=events))
    ping = Ping(value=1)
    ping_events = PingEvents(value=1)

    async def direct(n: int) -> None:
        for _ in range(n):
            await PingHandler().handle(ping)

    async def via_send(n: int) -> None:
        send = mediator.send
        for _ in range(n):
            await send(ping)

    async def least(n: int) -> None:
        for _ in range(n):
            await least_send(ping)

    await compare("send, no events, no container", least, via_send, 1.2, n, repeats)
    await compare(
        "  the least, against the direct call", direct, least, None, n, repeats
    )

    diator_requests = RequestMap()
    diator_requests.bind(Ping, DiatorStyleHandler)
    diator_mediator = Mediator(request_map=diator_requests)

    async def direct_diator(n: int) -> None:
        for _ in range(n):
            await DiatorStyleHandler().handle(ping)

    async def via_send_diator(n: int) -> None:
        send = diator_mediator.send
        for _ in range(n):
            await send(ping)

    async def least_diator(n: int) -> None:
        for _ in range(n):
            handler = DiatorStyleHandler()
            await handler.handle(ping)
            if handler.events:
                raise AssertionError("this bench's handler raises no events")

    await compare(
        "send, no events, no container, diator-style handler",
        least_diator,
        via_send_diator,
        None,
        n,
        repeats,
    )
    await compare(
        "  the least, against the direct call", direct_diator, least_diator, None, n, repeats
    )

    di_requests = RequestMap()
    di_requests.bind(Ping, PingWithDependency)
    di_container = di.Container()
    container = DIContainer(di_container)
    di_mediator = Mediator(request_map=di_requests, container=container)
    solved = di_container.solve(
        Dependent(PingWithDependency, scope="request"), scopes=["app", "request"]
    )
    executor = AsyncExecutor()
    async with di_container.enter_scope("app") as app_state:

        async def by_hand_di(n: int) -> None:
            for _ in range(n):
                async with app_state.enter_scope("request") as state:
                    handler = await solved.execute_async(executor, state)
                    await handler.handle(ping)

        async def via_send_di(n: int) -> None:
            send = di_mediator.send
            for _ in range(n):
                await send(ping)

        await compare("send with DIContainer", by_hand_di, via_send_di, 1.3, n // 4, repeats)
    await container.aclose()

    async def by_hand_event(n: int) -> None:
        # What send does, written out: call the request handler, take the
        # event it raised, call the event handler with it.
        for _ in range(n):
            handler = PingEventsHandler()
            await handler.handle(ping_events)
            event = handler.events.pop()
            await PingedHandler().handle(event)

    async def via_send_event(n: int) -> None:
        send = mediator.send
        for _ in range(n):
            await send(ping_events)

    await compare(
        "send raising one DomainEvent, one handler",
        by_hand_event,
        via_send_event,
        1.5,
        n // 2,
        repeats,
    )


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    asyncio.run(main(n=20_000 if quick else 200_000, repeats=3 if quick else 7))
