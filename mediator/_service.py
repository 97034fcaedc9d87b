"""The Service: what one process runs, bundled, started and stopped in order."""

from __future__ import annotations

import ast
import asyncio
import functools
import inspect
import logging
import textwrap
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import attrs

from mediator._broker import SubscribingBroker
from mediator._consumer import ConsumerStats, EventConsumer
from mediator._container import Container
from mediator._emitter import EventEmitter
from mediator._event_map import EventMap
from mediator._events import DomainEvent, Event, message_type_of
from mediator._interceptors import Interceptor
from mediator._mediator import Mediator
from mediator._message import Message
from mediator._middlewares import MiddlewareChain
from mediator._policies import ErrorPolicy
from mediator._requests import RequestMap
from mediator._running import RunsUntilStopped

__all__ = [
    "Service",
    "ServiceStarted",
    "ServiceStopping",
    "SubscriptionSpec",
    "events_raised_by",
]

logger = logging.getLogger("mediator.service")

Hook = Callable[[], Coroutine[Any, Any, None]]
"""A start-up or shut-down hook, or a background task: an async function without arguments."""
H = TypeVar("H", bound=Hook)


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

    `start()` starts the broker, runs the start-up hooks in order, starts one
    `EventConsumer` per event map (returning once every subscription is live),
    starts the background tasks, then emits `ServiceStarted` through the event
    map. `stop()` stops the consumers (each drains its deliveries in flight
    within `drain_timeout` seconds), emits `ServiceStopping`, cancels the
    background tasks, runs the shut-down hooks in reverse order and stops the
    broker. A consumer or background task that fails stops the service, and
    `run()` (or leaving ``async with``) raises its error.

    The service starts and stops its broker: it is the one that runs it.
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
        self._subscriptions: list[tuple[str, str | None, EventMap]] = []
        self._startup: list[Hook] = []
        self._shutdown_hooks: list[Hook] = []
        self._background: list[Hook] = []
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
            self._emitter = EventEmitter(
                event_map=self.event_map,
                container=self.container,
                message_broker=self._broker,
                outgoing=self._outgoing,
                interceptors=self.interceptors,
            )
        return self._emitter

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
            )
        return self._mediator

    def subscribe(
        self, pattern: str, group: str | None = None, *, event_map: EventMap | None = None
    ) -> None:
        """Receive what matches `pattern` once the service starts, handled by
        `event_map` (the service's by default) in consumer `group`.

        ``{prefix}`` in `pattern` stands for the broker's channel prefix, so the
        pattern follows the broker ``mediator run --broker`` sets.
        """
        if self._running:
            raise RuntimeError(
                f"{self!r} is running; declare subscription {pattern!r} before start()"
            )
        self._subscriptions.append(
            (pattern, group, event_map if event_map is not None else self.event_map)
        )

    @property
    def subscriptions(self) -> list[SubscriptionSpec]:
        """The declared subscriptions, patterns resolved against the broker's prefix."""
        prefix = self._broker.channel_prefix if self._broker is not None else "{prefix}"
        return [
            SubscriptionSpec(pattern=pattern.replace("{prefix}", prefix), group=group, event_map=m)
            for pattern, group, m in self._subscriptions
        ]

    def publishes(self, *event_types: type[Event]) -> None:
        """Declare events the service publishes that its documents cannot find
        by reading the handlers (`events_raised_by`), e.g. events built in a helper."""
        self._publishes.extend(event_types)

    @property
    def event_maps(self) -> list[EventMap]:
        """The service's event map, then every other map a subscription uses."""
        maps = [self.event_map]
        for _, _, event_map in self._subscriptions:
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
        """Run `task` from start to stop (an outbox relay, a poller); a decorator.

        It is cancelled at stop, after the consumers drained; if it fails
        before, the service stops and `run()` raises its error.
        """
        self._background.append(task)
        return task

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
        """Running, with every consumer taking deliveries and every subscription
        connected (where its transport says)."""
        return self.running and all(_consumer_ready(c) for c, _ in self._consumers)

    def stats(self) -> dict[str, Any]:
        """The consumers' counters, for health checks: one entry per consumer."""
        return {
            "service": self.name,
            "running": self.running,
            "ready": self.ready,
            "consumers": [
                {
                    "subscriptions": [{"pattern": s.pattern, "group": s.group} for s in specs],
                    "running": consumer.running,
                    **_stats_dict(consumer.stats),
                }
                for consumer, specs in self._consumers
            ],
        }

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Start everything (see the class docs); returns once every
        subscription is live and `ServiceStarted` was handled."""
        if self._running:
            return
        if self._subscriptions and self._broker is None:
            raise ValueError(
                f"{self!r} subscribes to {self._subscriptions[0][0]!r} but has no broker; "
                "pass Service(broker=...) or run it with `mediator run --broker URL`"
            )
        self._stop_requested = asyncio.Event()
        self._failure = None
        self._running = True
        try:
            if self._broker is not None:
                await self._broker.start()
            self._hooks_ran = 0
            for hook in self._startup:
                await hook()
                self._hooks_ran += 1
            self._consumers = await self._build_consumers()
            for consumer, _ in self._consumers:
                await consumer.start()
                self._watch(asyncio.create_task(consumer.run(), name=f"{self.name}:consumer"))
            for task in self._background:
                name = getattr(task, "__qualname__", repr(task))
                self._watch(asyncio.create_task(task(), name=f"{self.name}:{name}"))
            await self.event_emitter.emit_all((ServiceStarted(service=self.name),))
        except BaseException:
            await self._shutdown(announce=False)
            self._failure = None  # the caller gets the error itself
            raise
        logger.info(
            "service %s started: %d subscription(s) on %s",
            self.name,
            len(self._subscriptions),
            describe_broker(self._broker),
        )

    # -- inside --------------------------------------------------------------

    async def _build_consumers(self) -> list[tuple[EventConsumer, list[SubscriptionSpec]]]:
        built: dict[int, tuple[EventConsumer, list[SubscriptionSpec]]] = {}
        for spec in self.subscriptions:
            entry = built.get(id(spec.event_map))
            if entry is None:
                assert self._broker is not None
                emitter = (
                    self.event_emitter
                    if spec.event_map is self.event_map
                    else EventEmitter(
                        event_map=spec.event_map,
                        container=self.container,
                        message_broker=self._broker,
                        outgoing=self._outgoing,
                        interceptors=self.interceptors,
                    )
                )
                consumer = EventConsumer(
                    self._broker,
                    spec.event_map,
                    self.container,
                    event_emitter=emitter,
                    max_concurrency=self.max_concurrency,
                    drain_timeout=self.drain_timeout,
                    default_policy=self.default_policy,
                    incoming=self._incoming,
                    interceptors=self.interceptors,
                )
                entry = built[id(spec.event_map)] = (consumer, [])
            # Recorded only: the consumer opens it when it starts.
            await entry[0].subscribe(spec.pattern, spec.group)
            entry[1].append(spec)
        return list(built.values())

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
        if announce:
            try:
                await self.event_emitter.emit_all((ServiceStopping(service=self.name),))
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
        for error in errors:
            logger.error("stopping service %s: %r", self.name, error, exc_info=error)
        if errors and self._failure is None:
            self._failure = errors[0]
        logger.info("service %s %s", self.name, "stopped" if announce else "did not start")


def events_raised_by(handler: object) -> tuple[type[Event], ...]:
    """The event classes a handler (class or function) constructs in its code,
    in the order they appear, found by reading its source: a best effort for
    documents and diagrams, blind to events built elsewhere (declare those
    with `Service.publishes`)."""
    function = getattr(handler, "handle", handler)
    function = inspect.unwrap(function)  # type: ignore[arg-type]
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        names = inspect.getclosurevars(function)
    except (OSError, TypeError, SyntaxError):
        return ()
    scope = {**names.builtins, **names.globals, **names.nonlocals}
    found: dict[type[Event], None] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        target = _resolve(node.func, scope)
        if isinstance(target, type) and issubclass(target, Event):
            found[target] = None
    return tuple(found)


def _resolve(node: ast.expr, scope: dict[str, Any]) -> Any:
    # `OrderPlaced(...)` or `events.OrderPlaced(...)`; anything else is not followed.
    if isinstance(node, ast.Name):
        return scope.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, scope)
        return getattr(owner, node.attr, None) if inspect.ismodule(owner) else None
    return None


def describe_broker(broker: object) -> str:
    """A broker as logs show it: its class, where it connects and its prefix."""
    if broker is None:
        return "no broker"
    where = getattr(broker, "address", None) or getattr(broker, "bootstrap_servers", None)
    if isinstance(where, list | tuple):
        where = ",".join(map(str, where))
    prefix = getattr(broker, "channel_prefix", None)
    details = ", ".join(
        part for part in (where and str(where), prefix and f"prefix {prefix!r}") if part
    )
    return f"{type(broker).__name__}({details})"


def _consumer_ready(consumer: EventConsumer) -> bool:
    # A transport on the kit says whether each subscription is connected right now.
    live = getattr(consumer, "_subscriptions", ())
    return consumer.running and all(getattr(s, "connected", True) for s in live)


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
