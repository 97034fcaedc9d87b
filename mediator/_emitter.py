"""The EventEmitter: local handlers for domain events, the broker for the rest."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mediator._broker import MessageBroker
from mediator._codec import MessageCodec
from mediator._container import Container, Resolver, as_container, described, misplaced
from mediator._context import outgoing_headers
from mediator._event_map import EventBinding, EventMap
from mediator._events import Event, message_type_of
from mediator._exceptions import EventCycleError, NoMessageBrokerError
from mediator._interceptors import Interceptor, Publishing, intercept_publish, overrides
from mediator._message import Message
from mediator._policies import ErrorPolicy, FailFast
from mediator._recovery import run_bindings

__all__ = ["EventEmitter"]

logger = logging.getLogger("mediator.events")


class EventEmitter:
    """Dispatches events: DomainEvents (and any event that is not broker-bound)
    to the handlers bound in the `EventMap`, NotificationEvents and ECSTEvents
    to the message broker as envelopes.

    Local handlers run first, breadth-first: the follow-up events a handler
    raises are queued behind the events already waiting. The broker-bound
    events of one `emit_all` are published after every local handler has
    succeeded, in the order they were raised, as one batch where the broker
    supports it.

    `max_concurrency` above 1 runs the handlers bound to one event
    concurrently, at most that many at a time.

    Every published envelope carries a `correlation_id` header (the one in
    force, see `correlation_scope`, else a new one per batch) and, when the
    events were raised while handling a consumed message, a `causation_id`
    naming that message. Each function in `outgoing` then sees the envelope
    and returns it, changed or not (``attrs.evolve(message, headers=...)``).
    Each batch is published inside the `publishing` of every `Interceptor`
    in `interceptors` (tracing is one).
    """

    def __init__(
        self,
        event_map: EventMap | None = None,
        container: Container | Resolver | None = None,
        message_broker: MessageBroker | None = None,
        *,
        max_concurrency: int = 1,
        outgoing: Sequence[Callable[[Message], Message]] = (),
        interceptors: Sequence[Interceptor] = (),
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        # diator's positional order; a value in the wrong slot is refused here, not at an emit.
        if event_map is not None and not isinstance(event_map, EventMap):
            raise TypeError(
                f"EventEmitter(event_map=...) got {described(event_map)}; pass an EventMap"
                f"{misplaced(event_map, 'EventEmitter')}"
            )
        self._container = as_container(container, "EventEmitter")
        if message_broker is not None and not callable(
            getattr(message_broker, "send_message", None)
        ):
            raise TypeError(
                f"EventEmitter(message_broker=...) got {described(message_broker)}, which has no "
                "send_message; pass a broker such as brokers.memory.InMemoryMessageBroker()"
                f"{misplaced(message_broker, 'EventEmitter')}"
            )
        self.event_map = event_map if event_map is not None else EventMap()
        self.message_broker = message_broker
        self._max_concurrency = max_concurrency
        self._send_messages = getattr(message_broker, "send_messages", None)
        self._outgoing = tuple(outgoing)
        self._interceptors = overrides(interceptors, "publishing")
        self._policy: ErrorPolicy = self.event_map.default_policy or FailFast()

    async def emit(self, event: Event) -> None:
        """Dispatch one event (diator's signature)."""
        await self.emit_all((event,))

    async def emit_all(
        self,
        events: Sequence[Event],
        resolver: Resolver | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Dispatch `events` in order, with their follow-ups, then publish.

        `resolver` is the open container scope to build handlers in (the
        mediator passes the scope of the send that raised the events);
        without one the emitter opens a scope of its own container, if any.
        `headers` go into the envelope of every published message.
        """
        if resolver is None and self._container is not None:
            async with self._container.scope() as scope:
                await self.emit_all(events, scope, headers)
                return
        if self.message_broker is None:
            for event in events:
                self._require_broker(type(event))
        # Breadth-first: follow-ups are appended behind the events waiting.
        pending = list(events)
        ancestry: dict[int, tuple[type[Event], ...]] | None = None
        outbox: list[Event] = []
        handlers_for = self.event_map.handlers_for
        sequential = self._max_concurrency == 1
        index = 0
        while index < len(pending):
            event = pending[index]
            index += 1
            event_type = type(event)
            if message_type_of(event_type) is not None:
                outbox.append(event)
                continue
            bindings = handlers_for(event_type)
            if not bindings:
                continue
            if sequential or len(bindings) == 1:
                dispatched = await run_bindings(bindings, event, resolver, self._policy)
                if dispatched.fail is not None:
                    raise dispatched.fail
                follow_ups = dispatched.follow_ups
            else:
                follow_ups = await self._concurrently(event, bindings, resolver)
            if follow_ups:
                if ancestry is None:
                    ancestry = {}
                chain = (*ancestry.get(index - 1, ()), event_type)
                for follow_up in follow_ups:
                    self._check_cycle(type(follow_up), chain)
                    ancestry[len(pending)] = chain
                    pending.append(follow_up)
        if outbox:
            await self.publish(self._envelopes(outbox, headers))

    def _envelopes(self, events: list[Event], headers: Mapping[str, str] | None) -> list[Message]:
        batch_headers = outgoing_headers()
        if headers:
            batch_headers.update(headers)
        messages = [MessageCodec.to_message(event, batch_headers) for event in events]
        for hook in self._outgoing:
            messages = [hook(message) for message in messages]
        return messages

    def _require_broker(self, event_type: type[Event]) -> None:
        if self.message_broker is None and message_type_of(event_type) is not None:
            raise NoMessageBrokerError(
                f"{event_type.__qualname__} is a {message_type_of(event_type)} but the "
                "EventEmitter has no message broker; pass "
                "EventEmitter(message_broker=InMemoryMessageBroker()) or another broker"
            )

    def _check_cycle(self, event_type: type[Event], chain: tuple[type[Event], ...]) -> None:
        if message_type_of(event_type) is not None:
            self._require_broker(event_type)
        elif event_type in chain:
            path = " -> ".join(t.__qualname__ for t in (*chain, event_type))
            raise EventCycleError(
                f"Event cycle: {path}. A handler raised {event_type.__qualname__} while "
                f"{event_type.__qualname__} was already being handled in the same chain; "
                "make one of the handlers stop raising the follow-up"
            )

    async def _concurrently(
        self, event: Event, bindings: tuple[EventBinding, ...], resolver: Resolver | None
    ) -> Sequence[Event]:
        # Per event, not per emitter: a handler that sends a request through
        # the same emitter must not wait for a slot its own caller holds.
        semaphore = asyncio.Semaphore(self._max_concurrency)

        async def limited(binding: EventBinding) -> Sequence[Event]:
            async with semaphore:
                dispatched = await run_bindings((binding,), event, resolver, self._policy)
            if dispatched.fail is not None:
                raise dispatched.fail
            return dispatched.follow_ups

        results = await asyncio.gather(*(limited(b) for b in bindings), return_exceptions=True)
        follow_ups: list[Event] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            if result:
                follow_ups.extend(result)
        return follow_ups

    async def publish(self, messages: Sequence[Message]) -> None:
        """Hand ready envelopes to the broker: one batch when it can take one."""
        broker = self.message_broker
        if broker is None:
            raise NoMessageBrokerError(
                "EventEmitter.publish needs a message broker; pass EventEmitter(message_broker=...)"
            )
        if self._interceptors:
            await intercept_publish(
                self._interceptors, Publishing(messages=messages, broker=broker), self._send
            )
        else:
            await self._send(messages)

    async def _send(self, messages: Sequence[Message]) -> None:
        broker: Any = self.message_broker
        send_messages: Any = self._send_messages
        if send_messages is not None and len(messages) > 1:
            await send_messages(messages)
        else:
            for message in messages:
                await broker.send_message(message)
