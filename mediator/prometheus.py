"""Prometheus metrics of a `Service`, served at ``GET /metrics`` by its
`HealthServer` (docs/metrics.md).

Needs the ``prometheus`` extra (prometheus-client). Nothing in the core
imports this module: the health server does, when the extra is installed.

```python
from mediator.prometheus import metrics_for

metrics = metrics_for(service)   # the service's one ServiceMetrics, made on first use
text = metrics.exposition()      # what GET /metrics answers
```
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "mediator.prometheus needs prometheus-client: pip install 'mediator-toolkit[prometheus]'"
    ) from exc

from mediator._consumer import EventConsumer
from mediator._handling import Settled
from mediator._interceptors import Interceptor, Publishing
from mediator._patterns import GlobPattern

if TYPE_CHECKING:
    from mediator._operations.service import Service, SubscriptionSpec

__all__ = ["CONTENT_TYPE", "ServiceMetrics", "lag_of", "metrics_for"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The content type of ``GET /metrics``: the text exposition format 0.0.4,
which `generate_latest` writes for the metric names used here (plain
``[a-z_]`` names), whatever version of prometheus-client is installed."""

UNDECODED = "undecoded"
"""The `event` label of a delivery that could not be decoded."""
OTHER = "other"
"""The `pattern` label of a channel no subscription pattern matches (not expected)."""

_MAX_CHANNELS = 10_000
"""Channels whose pattern is remembered; past that each one is matched again."""

_METRICS: weakref.WeakKeyDictionary[Service, ServiceMetrics] = weakref.WeakKeyDictionary()


def metrics_for(service: Service) -> ServiceMetrics:
    """The `ServiceMetrics` of `service`, made (and attached) on the first call."""
    metrics = _METRICS.get(service)
    if metrics is None:
        metrics = _METRICS[service] = ServiceMetrics(service)
    return metrics


class ServiceMetrics:
    """The metrics of one `Service`, in a registry of their own (not the
    global default one: services and tests do not collide).

    Made for a service, it listens to every consumer the service builds
    (`Service.on_consumer`, `EventConsumer.add_listener`) and adds an
    `Interceptor` timing publishes to `Service.interceptors`: make it before
    the service starts and before its mediator is first used (a
    `HealthServer` made before the start does), or it sees only what comes after.
    """

    def __init__(self, service: Service) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        """Where every metric of the service is registered; add your own if you like."""
        labels = ("service", "pattern", "event")
        registry = self.registry
        self.received = Counter(
            "mediator_messages_received",
            "Deliveries taken from the broker, counted once settled.",
            labels,
            registry=registry,
        )
        self.handled = Counter(
            "mediator_messages_handled",
            "Deliveries whose handlers all finished (acknowledged).",
            labels,
            registry=registry,
        )
        self.released = Counter(
            "mediator_messages_released",
            "Deliveries given back to the broker for redelivery.",
            labels,
            registry=registry,
        )
        self.dead_lettered = Counter(
            "mediator_messages_dead_lettered",
            "Deliveries moved to the dead-letter place.",
            (*labels, "reason"),
            registry=registry,
        )
        self.duplicates = Counter(
            "mediator_messages_duplicate",
            "Deliveries an inbox recognised as handled before (acknowledged, not handled).",
            labels,
            registry=registry,
        )
        self.handling_duration = Histogram(
            "mediator_message_handling_duration_seconds",
            "From taking a delivery to the end of its settlement.",
            (*labels, "outcome"),
            registry=registry,
        )
        self.published = Counter(
            "mediator_messages_published",
            "Messages published, written to an outbox, or relayed from one.",
            ("service", "operation", "event"),
            registry=registry,
        )
        self.publish_duration = Histogram(
            "mediator_publish_duration_seconds",
            "One published batch.",
            ("service", "operation", "outcome"),
            registry=registry,
        )
        registry.register(_StatsCollector(service))
        self._children: dict[tuple[str, str, str, str | None], tuple[Any, ...]] = {}
        service.interceptors.append(_PublishTimer(self))
        service.on_consumer(self.watch)
        for consumer, specs in getattr(service, "_consumers", ()):
            self.watch(consumer, specs)  # made while the service runs

    def watch(self, consumer: EventConsumer, subscriptions: Sequence[SubscriptionSpec]) -> None:
        """Count what `consumer`, reading `subscriptions`, settles from now on."""
        consumer.add_listener(_Listener(self, [spec.pattern for spec in subscriptions]))

    def exposition(self) -> bytes:
        """The metrics in the exposition format, as ``GET /metrics`` answers."""
        return generate_latest(self.registry)

    def _settled(self, pattern: str, settled: Settled) -> None:
        message = settled.message
        event = UNDECODED if message is None else message.message_name
        # Released reasons are free text: only dead-letter reasons (a fixed set) are labels.
        reason = settled.reason if settled.outcome == "dead_lettered" else None
        key = (pattern, event, settled.outcome, reason)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = self._children_of(*key)
        received, outcome, duration = children
        received.inc()
        if outcome is not None:
            outcome.inc()
        duration.observe(settled.duration)

    def _children_of(
        self, pattern: str, event: str, outcome: str, reason: str | None
    ) -> tuple[Any, ...]:
        service = self.service.name
        labels = (service, pattern, event)
        counter: Any = None
        if outcome == "handled":
            counter = self.handled.labels(*labels)
        elif outcome == "released":
            counter = self.released.labels(*labels)
        elif outcome == "dead_lettered":
            counter = self.dead_lettered.labels(*labels, reason or "")
        elif outcome == "duplicate":
            counter = self.duplicates.labels(*labels)
        return (
            self.received.labels(*labels),
            counter,
            self.handling_duration.labels(*labels, outcome),
        )


class _Listener:
    """Counts one consumer's settled deliveries under its subscriptions' patterns."""

    def __init__(self, metrics: ServiceMetrics, patterns: list[str]) -> None:
        self._metrics = metrics
        self._only = patterns[0] if len(patterns) == 1 else None
        self._globs = [GlobPattern(pattern) for pattern in patterns]
        self._patterns: dict[str, str] = {}

    def __call__(self, settled: Settled) -> None:
        self._metrics._settled(self._only or self._pattern_of(settled.channel), settled)

    def _pattern_of(self, channel: str) -> str:
        pattern = self._patterns.get(channel)
        if pattern is None:
            # Overlapping patterns: the first that matches names it.
            pattern = next((g.pattern for g in self._globs if g.matches(channel)), OTHER)
            if len(self._patterns) < _MAX_CHANNELS:
                self._patterns[channel] = pattern
        return pattern


class _PublishTimer(Interceptor):
    """Times each published batch and counts its messages."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    def publishing(self, publishing: Publishing) -> AbstractContextManager[None]:
        system = type(publishing.broker).__name__
        return self._timed(publishing, "outbox_write" if system == "Outbox" else "publish")

    def relaying(self, publishing: Publishing) -> AbstractContextManager[None]:
        return self._timed(publishing, "relay")

    @contextmanager
    def _timed(self, publishing: Publishing, operation: str) -> Iterator[None]:
        metrics = self._metrics
        service = metrics.service.name
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            metrics.publish_duration.labels(service, operation, "error").observe(
                time.perf_counter() - started
            )
            raise
        metrics.publish_duration.labels(service, operation, "ok").observe(
            time.perf_counter() - started
        )
        for message in publishing.messages:
            metrics.published.labels(service, operation, message.message_name).inc()


class _StatsCollector(Collector):
    """What is read from the service at scrape time: retries, deliveries in
    flight, readiness, and the backlog where a subscription reports one."""

    def __init__(self, service: Service) -> None:
        self._service = weakref.ref(service)

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        service = self._service()
        if service is None:
            return
        name = service.name
        retries = CounterMetricFamily(
            "mediator_handler_retries",
            "Handler calls repeated under a Retry policy.",
            labels=["service"],
        )
        in_flight = GaugeMetricFamily(
            "mediator_messages_in_flight", "Deliveries being handled now.", labels=["service"]
        )
        ready = GaugeMetricFamily(
            "mediator_service_ready", "1 when the service is ready, else 0.", labels=["service"]
        )
        lag = GaugeMetricFamily(
            "mediator_consumer_lag_messages",
            "Messages waiting for the subscription, as its transport last measured them.",
            labels=["service", "pattern", "group"],
        )
        consumers: list[tuple[EventConsumer, object]] = list(getattr(service, "_consumers", ()))
        retries.add_metric([name], sum(c.stats.retried for c, _ in consumers))
        in_flight.add_metric([name], sum(c.stats.in_flight for c, _ in consumers))
        ready.add_metric([name], 1.0 if service.ready else 0.0)
        for consumer, _ in consumers:
            for subscription in getattr(consumer, "_subscriptions", ()):
                waiting = lag_of(subscription)
                if waiting is not None:
                    group = getattr(subscription, "group", None) or ""
                    lag.add_metric([name, subscription.pattern, group], waiting)
        yield from (retries, in_flight, ready, lag)


def lag_of(subscription: object) -> int | None:
    """The messages waiting for `subscription`, as it last measured them:
    its ``lag`` attribute, else its ``pending`` one (the in-memory
    transport's buffer); None where it reports neither.

    A transport reports lag by keeping ``lag: int | None`` on its
    subscription up to date, off the delivery path: the messages of its
    queue or group that no consumer has taken yet, None while unknown. It is
    read here, at the scrape, without waiting for anything."""
    for name in ("lag", "pending"):
        value = getattr(subscription, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
