"""The Service: what one process runs, bundled, started and stopped in order
(docs/operations.md, "The service")."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from mediator._broker import SubscribingBroker, describe_broker
from mediator._circuit import CircuitBreaker
from mediator._consumer import ConsumerStats, EventConsumer
from mediator._container import Container
from mediator._emitter import EventEmitter
from mediator._event_map import EventMap
from mediator._events import DomainEvent, Event, message_type_of
from mediator._interceptors import Interceptor
from mediator._mediator import Mediator
from mediator._message import Message
from mediator._middlewares import MiddlewareChain
from mediator._operations.raised_events import events_raised_by
from mediator._policies import ErrorPolicy
from mediator._requests import RequestMap
from mediator._running import RunsUntilStopped

if TYPE_CHECKING:  # the outbox extra (SQLAlchemy) is imported only by a service that uses it
    from mediator.outbox._inbox import Inbox
    from mediator.outbox._outbox import Outbox
    from mediator.outbox._relay import OutboxRelay
    from mediator.sagas import SagaRunner, TimeoutDispatcher

__all__ = [
    "Service",
    "ServiceStarted",
    "ServiceStopping",
    "SubscriptionSpec",
]

logger = logging.getLogger("mediator.service")

Hook = Callable[[], Coroutine[Any, Any, None]]
"""A start-up or shut-down hook, or a background task: an async function without arguments."""
H = TypeVar("H", bound=Hook)
ConsumerHook = Callable[[EventConsumer, "list[SubscriptionSpec]"], None]
"""Called with each consumer the service builds, and its subscriptions (`Service.on_consumer`)."""
C = TypeVar("C", bound=ConsumerHook)


@attrs.frozen(kw_only=True)
class ServiceStarted(DomainEvent):
    """Emitted locally once every consumer is live: warm caches, announce readiness."""

    service: str
    """The `Service.name` of the service that started."""


@attrs.frozen(kw_only=True)
class ServiceStopping(DomainEvent):
    """Emitted locally once the consumers have drained, before the background
    tasks end and the brokers stop: flush buffers (publishing still works)."""

    service: str
    """The `Service.name` of the service that is stopping."""


@attrs.frozen(kw_only=True)
class SubscriptionSpec:
    """One `Service.subscribe` call: what to receive, in which group, handled by which map."""

    pattern: str
    """The glob over logical channels, with ``{prefix}`` replaced by the broker's prefix."""
    group: str | None
    """The consumer group, or None for a subscription of its own (broadcast)."""
    event_map: EventMap
    """The map whose handlers receive what matches."""
    inbox: str | None = None
    """The name its deliveries are recorded under in the inbox (`Inbox.consumer`),
    or None when it has no inbox."""


class Service(RunsUntilStopped):
    """Everything one process runs: the broker, the request and event maps,
    the consumers and their subscriptions, background tasks (an outbox
    relay), start-up and shut-down hooks.

    ```python
    service = Service(broker, name="billing", request_map=requests, event_map=events)
    service.subscribe("{prefix}:notification_event:Order*", group="billing")

    @service.on_startup
    async def connect_database() -> None: ...

    await service.run()       # until stop(), SIGTERM under `mediator run`, or a failure
    ```

    `start()` and `stop()` run their steps in a fixed order; a consumer or
    background task that fails stops the service, and `run()` raises its
    error. The service starts and stops its broker.
    """

    def __init__(
        self,
        broker: SubscribingBroker | None = None,
        *,
        name: str = "mediator",
        request_map: RequestMap | None = None,
        event_map: EventMap | None = None,
        container: Container | None = None,
        middleware_chain: MiddlewareChain | None = None,
        drain_timeout: float = 10.0,
        max_concurrency: int = 16,
        default_policy: ErrorPolicy | None = None,
        outgoing: Sequence[Callable[[Message], Message]] = (),
        incoming: Sequence[Callable[[Message], None]] = (),
        interceptors: Sequence[Interceptor] = (),
        outbox: Outbox | None = None,
        relay: bool | OutboxRelay = True,
        inbox: bool = False,
        circuits: Sequence[CircuitBreaker] = (),
        sagas: Sequence[SagaRunner] = (),
        process_managers: Sequence[TimeoutDispatcher] = (),
    ) -> None:
        if drain_timeout < 0:
            raise ValueError(f"Service(drain_timeout={drain_timeout}): must be 0 or more seconds")
        self.name = name
        """Names the service in logs, lifecycle events and its AsyncAPI document."""
        self.request_map = request_map if request_map is not None else RequestMap()
        self.event_map = event_map if event_map is not None else EventMap()
        self.container = container
        self.middleware_chain = middleware_chain
        self.drain_timeout = drain_timeout
        """Seconds each consumer gives its deliveries in flight on stop."""
        self.max_concurrency = max_concurrency
        """Deliveries each consumer handles at once."""
        self.default_policy = default_policy
        self._broker = broker
        self._outgoing = tuple(outgoing)
        self._incoming = tuple(incoming)
        self.interceptors: list[Interceptor] = list(interceptors)
        """Around every send, publish and delivery (`Interceptor`); add before start."""
        self.outbox = outbox
        """The `Outbox` sends write their events to (None: they publish to the broker)."""
        if isinstance(relay, bool):
            self._relay_wanted, self._relay = relay, None
        else:
            if outbox is not None and relay.outbox is not outbox:
                raise ValueError(
                    f"Service(relay={relay!r}) relays another outbox than Service(outbox=...); "
                    "pass the relay of this outbox, or relay=True to have one built"
                )
            self._relay_wanted, self._relay = True, relay
        if inbox and outbox is None:
            raise ValueError(
                "Service(inbox=True) records deliveries in the outbox's database: "
                "pass Service(outbox=Outbox(engine), inbox=True)"
            )
        self.inbox = inbox
        """Whether subscriptions have an inbox unless `subscribe` says otherwise."""
        self.circuits: list[CircuitBreaker] = list(circuits)
        """The circuit breakers whose states `stats()` reports; an open one
        does not make the service not ready."""
        self.sagas: list[SagaRunner] = list(sagas)
        """The saga runners: each resumes its store's unfinished sagas in the
        background once the service started (`SagaRunner.recover`)."""
        self.process_managers: list[TimeoutDispatcher] = list(process_managers)
        """The process managers' timeout dispatchers: each runs from start to
        stop (`TimeoutDispatcher.run`), and `stats()` and ``mediator sagas``
        report the instances in its store."""
        self._subscriptions: list[tuple[str, str | None, EventMap, bool | Inbox | None]] = []
        self._started = False
        self.cancelled_at_stop = 0
        """Deliveries the last stop cancelled because they outlived `drain_timeout`
        (released for redelivery, not handled): 0 when every one drained."""
        self._startup: list[Hook] = []
        self._shutdown_hooks: list[Hook] = []
        self._background: list[Hook] = []
        self._consumer_hooks: list[ConsumerHook] = []
        self._consumers: list[tuple[EventConsumer, list[SubscriptionSpec]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._emitter: EventEmitter | None = None
        self._mediator: Mediator | None = None
        self._running = False
        self._stop_requested: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._hooks_ran = 0
        self._publishes: list[type[Event]] = []

    def __repr__(self) -> str:
        return f"<Service {self.name!r} on {describe_broker(self._broker)}>"

    # -- what it runs --------------------------------------------------------

    @property
    def broker(self) -> SubscribingBroker | None:
        """The broker events are published to and subscriptions read from.

        Replace it before start (``mediator run --broker URL`` does)."""
        return self._broker

    @broker.setter
    def broker(self, broker: SubscribingBroker) -> None:
        if self._running:
            raise RuntimeError(f"{self!r} is running; replace its broker before start()")
        self._broker = broker
        self._emitter = None
        self._mediator = None

    @property
    def event_emitter(self) -> EventEmitter:
        """The emitter over the service's event map, container and broker."""
        if self._emitter is None:
            self._emitter = self._new_emitter(self.event_map, through_outbox=True)
        return self._emitter

    def _new_emitter(self, event_map: EventMap, *, through_outbox: bool) -> EventEmitter:
        return EventEmitter(
            event_map=event_map,
            container=self.container,
            message_broker=self.outbox if through_outbox and self.outbox else self._broker,
            outgoing=self._outgoing,
            interceptors=self.interceptors,
        )

    @property
    def mediator(self) -> Mediator:
        """A Mediator over the service's request map, event map and broker.

        ```python
        await service.mediator.send(PlaceOrder(order_id=7))
        ```
        """
        if self._mediator is None:
            self._mediator = Mediator(
                request_map=self.request_map,
                event_emitter=self.event_emitter,
                container=self.container,
                middleware_chain=self.middleware_chain,
                interceptors=self.interceptors,
                unit_of_work=self.outbox.unit_of_work if self.outbox is not None else None,
            )
        return self._mediator

    def subscribe(
        self,
        pattern: str,
        group: str | None = None,
        *,
        event_map: EventMap | None = None,
        inbox: bool | Inbox | None = None,
    ) -> None:
        """Receive what matches `pattern` once the service starts, handled by
        `event_map` (the service's by default) in consumer `group`; ``{prefix}``
        in `pattern` stands for the broker's channel prefix.

        `inbox` (the service's `inbox` setting when None): True records
        deliveries under ``"{service name}:{group}"`` (``"{service name}"``
        without a group); an `Inbox` of the service's outbox names it yourself.
        """
        if self._running:
            raise RuntimeError(
                f"{self!r} is running; declare subscription {pattern!r} before start()"
            )
        if inbox is not None and inbox is not False and self.outbox is None:
            raise ValueError(
                f"{self!r}.subscribe({pattern!r}, inbox=...): the inbox records deliveries in "
                "the outbox's database; build the service with Service(outbox=Outbox(engine))"
            )
        if not isinstance(inbox, bool | None) and inbox.outbox is not self.outbox:
            raise ValueError(
                f"{self!r}.subscribe({pattern!r}, inbox={inbox!r}): the inbox must be on the "
                "service's outbox, so a delivery's writes and follow-ups commit together"
            )
        self._subscriptions.append(
            (pattern, group, event_map if event_map is not None else self.event_map, inbox)
        )

    @property
    def subscriptions(self) -> list[SubscriptionSpec]:
        """The declared subscriptions, patterns resolved against the broker's prefix."""
        prefix = self._broker.channel_prefix if self._broker is not None else "{prefix}"
        return [
            SubscriptionSpec(
                pattern=pattern.replace("{prefix}", prefix),
                group=group,
                event_map=m,
                inbox=self._inbox_name(group, inbox),
            )
            for pattern, group, m, inbox in self._subscriptions
        ]

    def _inbox_name(self, group: str | None, inbox: bool | Inbox | None) -> str | None:
        if inbox is None:
            inbox = self.inbox
        if inbox is False:
            return None
        if inbox is True:
            return self.name if group is None else f"{self.name}:{group}"
        return inbox.consumer

    @property
    def relay(self) -> OutboxRelay | None:
        """The outbox relay the service runs (built at the first start when
        `Service(outbox=..., relay=True)`), or None."""
        return self._relay

    def publishes(self, *event_types: type[Event]) -> None:
        """Declare events the service publishes that its documents cannot find
        by reading the handlers (`events_raised_by`), e.g. events built in a helper."""
        self._publishes.extend(event_types)

    @property
    def event_maps(self) -> list[EventMap]:
        """The service's event map, then every other map a subscription uses."""
        maps = [self.event_map]
        for _, _, event_map, _ in self._subscriptions:
            if all(event_map is not known for known in maps):
                maps.append(event_map)
        return maps

    def published_events(self) -> list[type[Event]]:
        """The broker-bound events the service publishes, as far as it can
        tell: those its handlers construct, and those declared with `publishes`."""
        found: dict[type[Event], None] = {}
        handlers: list[object] = [handler for _, handler in self.request_map.items()]
        for event_map in self.event_maps:
            handlers.extend(binding.handler for binding in event_map.bindings)
        for handler in handlers:
            found.update(dict.fromkeys(events_raised_by(handler)))
        found.update(dict.fromkeys(self._publishes))
        return [event for event in found if message_type_of(event) is not None]

    def on_startup(self, hook: H) -> H:
        """Run `hook` at start, after the broker and before the consumers (a decorator)."""
        self._startup.append(hook)
        return hook

    def on_shutdown(self, hook: H) -> H:
        """Run `hook` at stop, after the consumers and before the broker (a
        decorator); hooks run in the reverse order of registration."""
        self._shutdown_hooks.append(hook)
        return hook

    def background(self, task: H) -> H:
        """Run `task` from start to stop (a poller, say), cancelled at stop
        after the consumers drained; a decorator."""
        self._background.append(task)
        return task

    def on_consumer(self, hook: C) -> C:
        """Call `hook(consumer, subscriptions)` for each consumer the service
        builds at start, before it takes a delivery (a decorator): to add a
        listener (`EventConsumer.add_listener`) for metrics, say."""
        self._consumer_hooks.append(hook)
        return hook

    # -- state ---------------------------------------------------------------

    @property
    def consumers(self) -> tuple[EventConsumer, ...]:
        """The running consumers, one per event map subscribed (empty before start)."""
        return tuple(consumer for consumer, _ in self._consumers)

    @property
    def running(self) -> bool:
        """Started, not stopped, and nothing has failed."""
        return self._running and self._failure is None

    @property
    def ready(self) -> bool:
        """Started, with every subscription connected and the outbox relay
        running; `not_ready_because` says what is missing."""
        return self.not_ready_because() is None

    def not_ready_because(self) -> str | None:
        """Why the service is not ready, or None when it is."""
        if self._failure is not None:
            return f"failed: {self._failure!r}"[:300]
        if not self._running:
            return "not started" if self._cleanup is None else "stopping"
        if not self._started:
            return "starting"
        for consumer, specs in self._consumers:
            if not consumer.running:
                return f"the consumer of {', '.join(repr(s.pattern) for s in specs)} is not running"
            for subscription in getattr(consumer, "_subscriptions", ()):
                if not getattr(subscription, "connected", True):
                    return f"subscription {subscription!r} is not connected"
        if self._relay is not None and not self._relay.running:
            return "the outbox relay is not running"
        return None

    def stats(self) -> dict[str, Any]:
        """The consumers' (and the relay's) counters, the circuits' states,
        the saga runners' counters and the process managers' instances, for
        health checks."""
        stats: dict[str, Any] = {
            "service": self.name,
            "running": self.running,
            "ready": self.ready,
            "consumers": [
                {
                    "subscriptions": [
                        {"pattern": s.pattern, "group": s.group, "inbox": s.inbox} for s in specs
                    ],
                    "running": consumer.running,
                    **_stats_dict(consumer.stats),
                }
                for consumer, specs in self._consumers
            ],
        }
        if self._relay is not None:
            relay = self._relay
            stats["relay"] = {"name": relay.name, "running": relay.running, **_relay_dict(relay)}
        if self.circuits:
            stats["circuits"] = [circuit.stats() for circuit in self.circuits]
        if self.sagas:
            stats["sagas"] = [runner.stats() for runner in self.sagas]
        if self.process_managers:
            stats["process_managers"] = [d.stats() for d in self.process_managers]
        return stats

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Start everything; returns once every subscription is live and
        `ServiceStarted` was handled."""
        if self._running:
            return
        if self._subscriptions and self._broker is None:
            raise ValueError(
                f"{self!r} subscribes to {self._subscriptions[0][0]!r} but has no broker; "
                "pass Service(broker=...) or run it with `mediator run --broker URL`"
            )
        if self.outbox is not None and self._broker is None and self._relay_wanted:
            raise ValueError(
                f"{self!r} has an outbox to relay but no broker to relay it to; pass "
                "Service(broker=...), run it with `mediator run --broker URL`, or relay=False "
                "when another process relays"
            )
        self._stop_requested = asyncio.Event()
        self._failure = None
        self._running = True
        self._started = False
        try:
            if self._broker is not None:
                await self._broker.start()
            self._hooks_ran = 0
            for hook in self._startup:
                await hook()
                self._hooks_ran += 1
            relay = self._build_relay()
            if relay is not None:
                # Before the consumers: their follow-ups may go through the outbox.
                await relay.start()
                self._watch(asyncio.create_task(relay.run(), name=f"{self.name}:outbox relay"))
            self._consumers = await self._build_consumers()
            for consumer, specs in self._consumers:
                for consumer_hook in self._consumer_hooks:
                    consumer_hook(consumer, list(specs))
            for consumer, _ in self._consumers:
                await consumer.start()
                self._watch(asyncio.create_task(consumer.run(), name=f"{self.name}:consumer"))
            for runner in self.sagas:
                self._watch(asyncio.create_task(_recovered(runner), name=f"{self.name}:sagas"))
            for dispatcher in self.process_managers:
                if dispatcher.run not in self._background:  # also given to background()
                    self._watch(asyncio.create_task(dispatcher.run(), name=f"{self.name}:timeouts"))
            for task in self._background:
                name = getattr(task, "__qualname__", repr(task))
                self._watch(asyncio.create_task(task(), name=f"{self.name}:{name}"))
            await self.event_emitter.emit_all((ServiceStarted(service=self.name),))
        except BaseException:
            await self._shutdown(announce=False)
            self._failure = None  # the caller gets the error itself
            raise
        self._started = True  # ready from here, once every subscription is connected
        logger.info(
            "service %s started: %d subscription(s) on %s",
            self.name,
            len(self._subscriptions),
            describe_broker(self._broker),
        )

    # -- inside --------------------------------------------------------------

    def _build_relay(self) -> OutboxRelay | None:
        outbox = self.outbox
        if outbox is None:
            return None
        broker = self._broker
        if broker is not None and (
            outbox.channel_prefix is None
            # Set by a relay of a broker replaced since (`mediator run --broker`).
            or (
                self._relay is not None
                and outbox.channel_prefix == getattr(self._relay.broker, "channel_prefix", None)
            )
        ):
            # The outbox's writes are traced with the channels its rows go to.
            outbox.channel_prefix = broker.channel_prefix
        if broker is not None and outbox.max_message_size is None:
            # What the broker would refuse is refused at the send.
            outbox.max_message_size = getattr(broker, "max_message_size", None)
        if not self._relay_wanted:
            return None
        if self._relay is None or self._relay.broker is not broker:
            from mediator.outbox._relay import OutboxRelay

            assert broker is not None
            self._relay = OutboxRelay(
                outbox, broker, drain_timeout=self.drain_timeout, interceptors=self.interceptors
            )
        return self._relay

    async def _build_consumers(self) -> list[tuple[EventConsumer, list[SubscriptionSpec]]]:
        # One consumer per event map and inbox: a consumer has one inbox.
        built: dict[tuple[int, str | None], tuple[EventConsumer, list[SubscriptionSpec]]] = {}
        inboxes = {
            self._inbox_name(group, inbox): inbox
            for _, group, _, inbox in self._subscriptions
            if not isinstance(inbox, bool | None)
        }
        for spec in self.subscriptions:
            key = (id(spec.event_map), spec.inbox)
            entry = built.get(key)
            if entry is None:
                assert self._broker is not None
                inbox = None
                if spec.inbox is not None:
                    inbox = inboxes.get(spec.inbox) or self._new_inbox(spec.inbox)
                consumer = EventConsumer(
                    self._broker,
                    spec.event_map,
                    self.container,
                    # With an inbox a delivery is a unit of work: its follow-ups go to
                    # the outbox, committed with its writes. Without one they publish.
                    event_emitter=(
                        self.event_emitter
                        if spec.event_map is self.event_map and (inbox or not self.outbox)
                        else self._new_emitter(spec.event_map, through_outbox=inbox is not None)
                    ),
                    max_concurrency=self.max_concurrency,
                    drain_timeout=self.drain_timeout,
                    default_policy=self.default_policy,
                    incoming=self._incoming,
                    interceptors=self.interceptors,
                    inbox=inbox,
                )
                entry = built[key] = (consumer, [])
            # Recorded only: the consumer opens it when it starts.
            await entry[0].subscribe(spec.pattern, spec.group)
            entry[1].append(spec)
        return list(built.values())

    def _new_inbox(self, name: str) -> Inbox:
        from mediator.outbox._inbox import Inbox

        assert self.outbox is not None
        return Inbox(self.outbox, name)

    def _watch(self, task: asyncio.Task[None]) -> None:
        self._tasks.append(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._cleanup is not None:
            return
        error = task.exception()
        if error is None:
            return  # a background task that finished its work
        logger.error("%s failed; stopping service %s", task.get_name(), self.name, exc_info=error)
        self._record_failure(error)

    async def _shutdown(self, *, announce: bool = True) -> None:
        # Every caller (run(), each stop(), a failed start) waits for the same stop.
        await self._one_cleanup(
            functools.partial(self._stop_all, announce) if self._running else None
        )

    async def _stop_all(self, announce: bool) -> None:
        errors: list[BaseException] = []
        consumers, self._consumers = self._consumers, []
        results = await asyncio.gather(*(c.stop() for c, _ in consumers), return_exceptions=True)
        errors.extend(r for r in results if isinstance(r, BaseException))
        self.cancelled_at_stop = sum(c.cancelled_at_stop for c, _ in consumers)
        if announce:
            try:
                await self.event_emitter.emit_all((ServiceStopping(service=self.name),))
            except Exception as exc:
                errors.append(exc)
        if self._relay is not None:
            # Its round in progress finishes (within drain_timeout): what the
            # consumers' last deliveries wrote goes out now or at the next start.
            try:
                await self._relay.stop()
            except Exception as exc:
                errors.append(exc)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            # A consumer's run() raises its failure here, already recorded by _ended.
            if isinstance(result, Exception) and result is not self._failure:
                errors.append(result)
        # After a start that failed in its start-up hooks, what they would
        # have opened is not there to close.
        if self._hooks_ran == len(self._startup):
            for hook in reversed(self._shutdown_hooks):
                try:
                    await hook()
                except Exception as exc:
                    errors.append(exc)
        if self._broker is not None:
            try:
                await self._broker.stop()
            except Exception as exc:
                errors.append(exc)
        self._running = False
        self._started = False
        for error in errors:
            logger.error("stopping service %s: %r", self.name, error, exc_info=error)
        if errors and self._failure is None:
            self._failure = errors[0]
        logger.info("service %s %s", self.name, "stopped" if announce else "did not start")


def _relay_dict(relay: OutboxRelay) -> dict[str, int]:
    stats = relay.stats
    return {name: getattr(stats, name) for name in type(stats).__annotations__}


def _stats_dict(stats: ConsumerStats) -> dict[str, Any]:
    return {
        "received": stats.received,
        "handled": stats.handled,
        "retried": stats.retried,
        "released": stats.released,
        "dead_lettered": stats.dead_lettered,
        "dead_lettered_by_reason": dict(stats.dead_lettered_by_reason),
        "in_flight": stats.in_flight,
    }


async def _recovered(runner: SagaRunner) -> None:
    """Resume `runner`'s unfinished sagas (a background task of the service)."""
    await runner.recover()
