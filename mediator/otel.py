"""OpenTelemetry tracing and metrics, following the messaging semantic conventions.

```python
from mediator.otel import OpenTelemetry

service = Service(broker, name="shop", interceptors=[OpenTelemetry()])
```

Needs the ``otel`` extra (opentelemetry-api only); configure an SDK (or the
``opentelemetry-instrument`` agent) in the application to export anything.
Without this interceptor nothing is traced and nothing costs anything.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import attrs

try:
    from opentelemetry import context, metrics, propagate, trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "mediator.otel needs opentelemetry-api: pip install 'mediator-toolkit[otel]'"
    ) from exc

from mediator._interceptors import Consuming, Interceptor, Publishing
from mediator._message import Message, channel_for

__all__ = ["DURATION_BUCKETS", "OpenTelemetry", "messaging_system"]

_NOTHING: AbstractContextManager[None] = nullcontext()
_NO_PROVIDER = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_UNKNOWN = object()
"""The global provider before an SDK sets one: spans would go nowhere."""

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
"""The bucket boundaries (seconds) the conventions give for messaging durations."""

_SYSTEMS = {
    "InMemoryMessageBroker": "memory",
    "RedisPubSubMessageBroker": "redis",
    "RedisStreamMessageBroker": "redis",
    "RabbitMQMessageBroker": "rabbitmq",
    "KafkaMessageBroker": "kafka",
    "AzureMessageBroker": "servicebus",
    "Outbox": "outbox",
}


def messaging_system(broker: object) -> str:
    """The ``messaging.system`` of `broker`: the conventions' name where there
    is one (``rabbitmq``, ``kafka``, ``servicebus``), else ``redis``, ``memory``,
    ``outbox`` (`mediator.outbox.Outbox`), or the class name in lower case."""
    for cls in type(broker).__mro__:
        system = _SYSTEMS.get(cls.__name__)
        if system is not None:
            return system
    wrapped = getattr(broker, "broker", None)  # a wrapper such as CapturingBroker
    if wrapped is not None and wrapped is not broker:
        return messaging_system(wrapped)
    return type(broker).__name__.lower()


class OpenTelemetry(Interceptor):
    """Spans and metrics for every send, publish, outbox relay and delivery.

    - ``send {Request}`` (internal) around each `Mediator.send`, handler,
      local events and publishing included;
    - ``publish {channel}`` (producer) around each published batch (just
      ``publish`` when a batch spans channels), with ``messaging.system``,
      ``messaging.destination.name``, ``messaging.operation.name`` and
      ``.type``, ``messaging.message.id`` for one message and
      ``messaging.batch.message_count`` for several. A batch written to an
      `Outbox` is named the same, with ``messaging.system`` ``outbox``,
      ``messaging.operation.type`` ``create`` and ``mediator.outbox``;
    - ``publish {channel}`` (producer) around each batch an `OutboxRelay`
      publishes, with the real broker's ``messaging.*`` attributes, in a
      trace of its own, linked to the span of each outbox write whose rows
      it carries;
    - ``process {channel}`` (consumer) around the handling and settling of
      each delivery, with ``messaging.consumer.group.name`` when it has a
      group; a delivery released or dead-lettered ends with an error status.

    The publish span's context (the outbox write's, through an outbox)
    travels in every envelope's headers as W3C ``traceparent`` (and
    ``tracestate``), written by the global propagator, so the process span
    in another process, on any transport, continues the producer's trace;
    the relay leaves those headers alone. Metrics:
    ``messaging.client.operation.duration`` per publish, outbox write and
    relay publish, and ``messaging.process.duration`` per delivery
    (seconds), and the counters ``messaging.client.sent.messages`` (what
    went to a broker: not the outbox writes) and
    ``messaging.client.consumed.messages``.
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.tracer = trace.get_tracer("mediator", tracer_provider=tracer_provider)
        self._given_provider = tracer_provider is not None
        trace.get_tracer_provider()  # loads one named by OTEL_PYTHON_TRACER_PROVIDER, if any
        meter = metrics.get_meter("mediator", meter_provider=meter_provider)
        self.operation_duration = meter.create_histogram(
            "messaging.client.operation.duration",
            unit="s",
            description="Duration of a messaging operation a producer or consumer started.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.process_duration = meter.create_histogram(
            "messaging.process.duration",
            unit="s",
            description="Duration of processing operation.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.sent_messages = meter.create_counter(
            "messaging.client.sent.messages",
            unit="{message}",
            description="Number of messages producer attempted to send to the broker.",
        )
        self.consumed_messages = meter.create_counter(
            "messaging.client.consumed.messages",
            unit="{message}",
            description="Number of messages that were delivered to the application.",
        )

    def tracing(self) -> bool:
        """Whether spans go anywhere: a provider was given, or an SDK set the
        global one. While neither holds, no span is started at all."""
        if self._given_provider:
            return True
        # The API's module global, read without get_tracer_provider()'s
        # environment lookup, so an unconfigured send stays cheap.
        provider = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
        if provider is None:
            return False
        if provider is _UNKNOWN and isinstance(trace.get_tracer_provider(), _NO_PROVIDER):
            return False
        self._given_provider = True  # an SDK set the global provider; it stays set
        return True

    def sending(self, request: object) -> AbstractContextManager[None]:
        return self._send_span(request) if self.tracing() else _NOTHING

    def publishing(self, publishing: Publishing) -> AbstractContextManager[None]:
        return self._publish_span(publishing) if self.tracing() else self._publish_timed(publishing)

    def relaying(self, publishing: Publishing) -> AbstractContextManager[None]:
        return self._relay_span(publishing) if self.tracing() else self._publish_timed(publishing)

    def consuming(self, consuming: Consuming) -> AbstractContextManager[None]:
        return self._process_span(consuming)

    @contextmanager
    def _send_span(self, request: object) -> Iterator[None]:
        name = type(request).__qualname__
        with self.tracer.start_as_current_span(
            f"send {name}", kind=SpanKind.INTERNAL, attributes={"mediator.request.type": name}
        ):
            yield

    @contextmanager
    def _publish_timed(self, publishing: Publishing) -> Iterator[None]:
        # Metrics without spans: what a publish costs when tracing is off.
        attributes = self._publish_attributes(publishing)[1]
        started = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            attributes["error.type"] = type(exc).__qualname__
            raise
        finally:
            self._record_publish(publishing, started, attributes)

    def _record_publish(
        self, publishing: Publishing, started: float, attributes: dict[str, Any]
    ) -> None:
        self.operation_duration.record(time.perf_counter() - started, attributes)
        if attributes["messaging.operation.type"] == "send":
            # An outbox write is not a send: the relay's publish counts its rows.
            self.sent_messages.add(len(publishing.messages), attributes)

    def _publish_attributes(
        self, publishing: Publishing
    ) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
        messages = publishing.messages
        prefix = getattr(publishing.broker, "channel_prefix", None) or ""
        channels = {channel_for(prefix, message) for message in messages}
        destination = channels.pop() if len(channels) == 1 else None
        system = messaging_system(publishing.broker)
        attributes: dict[str, Any] = {
            "messaging.system": system,
            "messaging.operation.name": "publish",
            # The outbox creates the messages (the conventions' "create"
            # operation, whose context each message carries); the relay sends.
            "messaging.operation.type": "create" if system == "outbox" else "send",
        }
        if destination is not None:
            attributes["messaging.destination.name"] = destination
        metric_attributes = dict(attributes)
        if len(messages) == 1:
            attributes["messaging.message.id"] = str(messages[0].message_id)
        else:
            attributes["messaging.batch.message_count"] = len(messages)
        if system == "outbox":
            attributes["mediator.outbox"] = True
        return destination, metric_attributes, attributes

    @contextmanager
    def _publish_span(self, publishing: Publishing) -> Iterator[None]:
        messages = publishing.messages
        destination, metric_attributes, attributes = self._publish_attributes(publishing)
        name = f"publish {destination}" if destination is not None else "publish"
        started = time.perf_counter()
        with self.tracer.start_as_current_span(
            name, kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            if carrier:
                publishing.messages = [_with_headers(message, carrier) for message in messages]
            with self._publish_outcome(span, publishing, started, metric_attributes):
                yield

    @contextmanager
    def _relay_span(self, publishing: Publishing) -> Iterator[None]:
        # A trace of its own (the relay's task may have been started inside
        # any span), linked to the outbox write of each envelope. The headers
        # are left alone: the consumers continue the sends' traces.
        destination, metric_attributes, attributes = self._publish_attributes(publishing)
        name = f"publish {destination}" if destination is not None else "publish"
        started = time.perf_counter()
        with (
            self.tracer.start_as_current_span(
                name,
                context=context.Context(),
                kind=SpanKind.PRODUCER,
                attributes=attributes,
                links=_links(publishing.messages),
            ) as span,
            self._publish_outcome(span, publishing, started, metric_attributes),
        ):
            yield

    @contextmanager
    def _publish_outcome(
        self,
        span: trace.Span,
        publishing: Publishing,
        started: float,
        metric_attributes: dict[str, Any],
    ) -> Iterator[None]:
        """A publish's error type on its span and metrics, and its metrics recorded."""
        try:
            yield
        except BaseException as exc:
            metric_attributes["error.type"] = type(exc).__qualname__
            span.set_attribute("error.type", type(exc).__qualname__)
            raise
        finally:
            self._record_publish(publishing, started, metric_attributes)

    @contextmanager
    def _process_span(self, consuming: Consuming) -> Iterator[None]:
        message = consuming.message
        attributes: dict[str, Any] = {
            "messaging.system": messaging_system(consuming.broker),
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.destination.name": consuming.channel,
        }
        if consuming.group is not None:
            attributes["messaging.consumer.group.name"] = consuming.group
        metric_attributes = dict(attributes)
        attributes["messaging.message.id"] = str(message.message_id)
        if consuming.delivery_count > 1:
            attributes["mediator.delivery_count"] = consuming.delivery_count
        parent = propagate.extract(message.headers)
        started = time.perf_counter()
        with self.tracer.start_as_current_span(
            f"process {consuming.channel}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            try:
                yield
            except BaseException as exc:
                metric_attributes["error.type"] = type(exc).__qualname__
                raise
            finally:
                if consuming.outcome is not None:
                    span.set_attribute("mediator.outcome", consuming.outcome)
                if consuming.outcome in ("released", "dead_lettered"):
                    error = consuming.reason or consuming.outcome
                    metric_attributes["error.type"] = consuming.outcome
                    span.set_attribute("error.type", consuming.outcome)
                    span.set_status(Status(StatusCode.ERROR, error))
                self.process_duration.record(time.perf_counter() - started, metric_attributes)
                self.consumed_messages.add(1, metric_attributes)


def _with_headers(message: Message, headers: Mapping[str, str]) -> Message:
    return attrs.evolve(message, headers={**message.headers, **headers})


def _links(messages: Sequence[Message]) -> list[Link]:
    """A link to the span context each envelope carries, once per context."""
    links: dict[tuple[int, int], Link] = {}
    for message in messages:
        if not message.headers:
            continue
        carried = trace.get_current_span(propagate.extract(message.headers)).get_span_context()
        key = (carried.trace_id, carried.span_id)
        if carried.is_valid and key not in links:
            links[key] = Link(carried)
    return list(links.values())
