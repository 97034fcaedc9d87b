"""OpenTelemetry: one trace from the producer's send through the publish to
the consumer's process, in one process on the in-memory broker and across
two processes on Redis Streams; the attribute and metric names of the
messaging conventions; nothing imported or done when it is not used."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import redis.asyncio

pytest.importorskip("opentelemetry.sdk", reason="the test extra installs opentelemetry-sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util.types import Attributes

from brokers.memory import InMemoryMessageBroker
from brokers.redis import RedisStreamMessageBroker
from mediator import (
    DeadLetter,
    EventMap,
    NotificationEvent,
    Request,
    RequestHandler,
    RequestMap,
    Service,
)
from mediator.otel import OpenTelemetry
from mediator.outbox import OutboxRelay
from mediator.testing import wait_until
from tests.cli_app import OrderPlaced
from tests.outbox_support import KINDS, Database, open_database, relayed
from tests.test_cli import _env, _start

ROOT = Path(__file__).resolve().parent.parent


@attrs.frozen(kw_only=True)
class PlaceOrder(Request[None]):
    order_id: int


class PlaceOrderHandler(RequestHandler[PlaceOrder, None]):
    async def handle(self, request: PlaceOrder) -> None:
        self.events.append(OrderPlaced(order_id=request.order_id))


@attrs.frozen(kw_only=True)
class Audited(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class PlaceAudited(Request[None]):
    order_id: int


class PlaceAuditedHandler(RequestHandler[PlaceAudited, None]):
    async def handle(self, request: PlaceAudited) -> None:
        self.events.append(OrderPlaced(order_id=request.order_id))
        self.events.append(Audited(order_id=request.order_id))


@attrs.define
class Telemetry:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    otel: OpenTelemetry

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def span(self, name: str, **attributes: Any) -> ReadableSpan:
        """The one finished span of `name` with these attributes (dots as ``_``)."""
        [found] = [
            span
            for span in self.finished()
            if span.name == name and _has(span.attributes, attributes)
        ]
        return found

    def metric_points(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]


def _has(found: Attributes, wanted: dict[str, Any]) -> bool:
    return all((found or {}).get(k.replace("_", ".")) == v for k, v in wanted.items())


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    spans = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    yield Telemetry(spans, reader, OpenTelemetry(tracer_provider=tracing, meter_provider=meters))
    tracing.shutdown()
    meters.shutdown()


def shop(broker: Any, otel: OpenTelemetry, group: str | None = "billing") -> Service:
    requests = RequestMap()
    requests.bind(PlaceOrder, PlaceOrderHandler)
    requests.bind(PlaceAudited, PlaceAuditedHandler)
    events = EventMap()

    @events.bind(OrderPlaced)
    async def bill(event: OrderPlaced) -> None:
        return None

    @events.bind(Audited, policy=DeadLetter())
    async def audit(event: Audited) -> None:
        raise RuntimeError("the audit log is full")

    service = Service(broker, name="shop", request_map=requests, event_map=events)
    service.interceptors.append(otel)
    service.subscribe("{prefix}:notification_event:*", group=group)
    return service


async def test_one_trace_from_send_through_publish_to_process_in_memory(
    telemetry: Telemetry,
) -> None:
    service = shop(InMemoryMessageBroker(channel_prefix="shop"), telemetry.otel)
    async with service:
        await service.mediator.send(PlaceOrder(order_id=7))
        await wait_until(service.consumers[0], lambda stats: stats.handled == 1)
    channel = "shop:notification_event:OrderPlaced"
    send = telemetry.span("send PlaceOrder")
    publish = telemetry.span(f"publish {channel}")
    process = telemetry.span(f"process {channel}")
    assert (send.kind, publish.kind, process.kind) == (
        SpanKind.INTERNAL,
        SpanKind.PRODUCER,
        SpanKind.CONSUMER,
    )
    assert send.context is not None
    assert publish.context is not None
    assert publish.parent is not None
    assert process.parent is not None
    assert publish.parent.span_id == send.context.span_id
    assert process.parent.span_id == publish.context.span_id
    assert {send.context.trace_id} == {s.context.trace_id for s in (publish, process) if s.context}
    message_id = publish.attributes["messaging.message.id"] if publish.attributes else None
    assert dict(publish.attributes or {}) == {
        "messaging.system": "memory",
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
        "messaging.destination.name": channel,
        "messaging.message.id": message_id,
    }
    assert dict(process.attributes or {}) == {
        "messaging.system": "memory",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": channel,
        "messaging.consumer.group.name": "billing",
        "messaging.message.id": message_id,
        "mediator.outcome": "handled",
    }
    assert process.status.status_code is StatusCode.UNSET


async def test_a_batch_is_one_publish_span_and_a_failed_delivery_an_error(
    telemetry: Telemetry,
) -> None:
    service = shop(InMemoryMessageBroker(channel_prefix="shop"), telemetry.otel, group=None)
    async with service:
        await service.mediator.send(PlaceAudited(order_id=8))
        await wait_until(service.consumers[0], lambda stats: stats.settled == 2)
    publish = telemetry.span("publish")  # two channels: no single destination
    assert publish.attributes is not None
    assert publish.attributes["messaging.batch.message_count"] == 2
    assert "messaging.destination.name" not in publish.attributes
    assert "messaging.message.id" not in publish.attributes
    failed = telemetry.span("process shop:notification_event:Audited")
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "dead_lettered"
    assert "messaging.consumer.group.name" not in failed.attributes


async def test_the_duration_metrics_are_recorded(telemetry: Telemetry) -> None:
    service = shop(InMemoryMessageBroker(channel_prefix="shop"), telemetry.otel)
    async with service:
        await service.mediator.send(PlaceOrder(order_id=1))
        await service.mediator.send(PlaceOrder(order_id=2))
        await wait_until(service.consumers[0], lambda stats: stats.handled == 2)
    [published] = telemetry.metric_points("messaging.client.operation.duration")
    assert published.count == 2
    assert dict(published.attributes) == {
        "messaging.system": "memory",
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
        "messaging.destination.name": "shop:notification_event:OrderPlaced",
    }
    [processed] = telemetry.metric_points("messaging.process.duration")
    assert processed.count == 2
    assert processed.attributes["messaging.consumer.group.name"] == "billing"
    assert sum(p.value for p in telemetry.metric_points("messaging.client.sent.messages")) == 2
    consumed = telemetry.metric_points("messaging.client.consumed.messages")
    assert sum(p.value for p in consumed) == 2


async def test_a_failing_publish_is_recorded_with_its_error_type(telemetry: Telemetry) -> None:
    class Refusing(InMemoryMessageBroker):
        async def send_message(self, message: Any) -> None:
            raise ConnectionError("broker went away")

    service = shop(Refusing(channel_prefix="shop"), telemetry.otel)
    service._subscriptions.clear()
    with pytest.raises(ConnectionError):
        await service.mediator.send(PlaceOrder(order_id=1))
    publish = telemetry.span("publish shop:notification_event:OrderPlaced")
    assert publish.status.status_code is StatusCode.ERROR
    assert publish.attributes is not None
    assert publish.attributes["error.type"] == "ConnectionError"
    [point] = telemetry.metric_points("messaging.client.operation.duration")
    assert point.attributes["error.type"] == "ConnectionError"
    send = telemetry.span("send PlaceOrder")
    assert send.status.status_code is StatusCode.ERROR


async def test_one_trace_across_two_processes_on_redis_streams(
    telemetry: Telemetry,
    redis_url: str,
    key_prefix: str,
    redis_client: redis.asyncio.Redis,
) -> None:
    env = _env(
        key_prefix,
        redis_url,
        CLI_APP_BROKER=redis_url.replace("redis://", "redis+streams://", 1),
        CLI_APP_TRACE="1",
    )
    consumer = await _start("run", "tests.cli_app:service", env=env)
    try:
        await consumer.line("stdout", "started billing")
        producer = shop(RedisStreamMessageBroker.from_url(redis_url, key_prefix), telemetry.otel)
        producer._subscriptions.clear()  # this side only sends
        async with producer:
            await producer.mediator.send(PlaceOrder(order_id=41))
        channel = f"{key_prefix}:notification_event:OrderPlaced"
        line = await consumer.line("stdout", f'"name": "process {channel}"')
        consumer.process.send_signal(signal.SIGTERM)
        assert await consumer.finish() == 0, "\n".join(consumer.stderr)
    finally:
        if consumer.process.returncode is None:
            consumer.process.kill()
            await consumer.process.wait()
    process = json.loads(line)
    send = telemetry.span("send PlaceOrder")
    publish = telemetry.span(f"publish {channel}")
    assert send.context is not None
    assert publish.context is not None
    assert process["context"]["trace_id"] == f"0x{send.context.trace_id:032x}"
    assert process["parent_id"] == f"0x{publish.context.span_id:016x}"
    assert process["kind"] == "SpanKind.CONSUMER"
    assert process["attributes"]["messaging.system"] == "redis"
    assert process["attributes"]["messaging.consumer.group.name"] == "billing"
    assert process["attributes"]["messaging.destination.name"] == channel
    assert publish.attributes is not None
    assert publish.attributes["messaging.system"] == "redis"
    assert await redis_client.lrange(f"{key_prefix}:handled", 0, -1)


def test_nothing_imports_opentelemetry_unless_asked() -> None:
    # The command, the service and the brokers work without the otel extra.
    code = (
        "import sys, mediator, brokers, mediator._operations.cli, mediator._operations.asyncapi,"
        " mediator._operations.diagram\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


async def test_without_interceptors_the_send_path_is_the_plain_one() -> None:
    # The compiled route of a mediator without interceptors is the handler's
    # run itself: no wrapper, so tracing switched off costs nothing per send.
    service = shop(InMemoryMessageBroker(channel_prefix="shop"), OpenTelemetry())
    service.interceptors.clear()
    await service.mediator.send(PlaceOrder(order_id=1))
    [route] = service.mediator._routes.values()
    assert route.__qualname__.endswith("_route.<locals>.run")
    service.interceptors.append(OpenTelemetry())
    service.broker = service.broker  # type: ignore[assignment]  # a fresh mediator
    await service.mediator.send(PlaceOrder(order_id=2))
    [route] = service.mediator._routes.values()
    assert "intercepted" in route.__qualname__


# -- through the outbox: send -> outbox write -> (link) relay publish; process continues the send


@pytest.fixture(params=KINDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(request.param, tmp_path)
    try:
        yield database
    finally:
        await database.close()


def outbox_shop(db: Database, otel: OpenTelemetry, relay: bool | OutboxRelay = True) -> Service:
    service = shop(InMemoryMessageBroker(channel_prefix="shop"), otel)
    return Service(
        service.broker,
        name="shop",
        request_map=service.request_map,
        event_map=service.event_map,
        interceptors=[otel],
        outbox=db.outbox,
        relay=relay,
    )


async def test_the_outbox_write_and_the_relay_publish_are_traced_and_the_trace_goes_on(
    telemetry: Telemetry, db: Database
) -> None:
    service = outbox_shop(db, telemetry.otel)
    service.subscribe("{prefix}:notification_event:*", group="billing")
    async with service:
        # The service built the relay with its broker and its interceptors.
        assert service.relay is not None
        assert service.relay.interceptors == (telemetry.otel,)
        assert db.outbox.channel_prefix == "shop"
        await service.mediator.send(PlaceOrder(order_id=7))
        await wait_until(service.consumers[0], lambda stats: stats.handled == 1)
    channel = "shop:notification_event:OrderPlaced"
    send = telemetry.span("send PlaceOrder")
    write = telemetry.span(f"publish {channel}", messaging_system="outbox")
    relayed_span = telemetry.span(f"publish {channel}", messaging_system="memory")
    process = telemetry.span(f"process {channel}")
    assert send.context is not None
    assert write.context is not None
    assert relayed_span.context is not None
    assert process.context is not None

    # The outbox write: in the send, named by the channel its row goes to.
    assert write.kind is SpanKind.PRODUCER
    assert write.parent is not None
    assert write.parent.span_id == send.context.span_id
    message_id = write.attributes["messaging.message.id"] if write.attributes else None
    assert dict(write.attributes or {}) == {
        "messaging.system": "outbox",
        "messaging.operation.name": "publish",
        "messaging.operation.type": "create",
        "messaging.destination.name": channel,
        "messaging.message.id": message_id,
        "mediator.outbox": True,
    }

    # The relay's publish: a trace of its own, linked to the outbox write.
    assert relayed_span.kind is SpanKind.PRODUCER
    assert relayed_span.parent is None
    assert relayed_span.context.trace_id != send.context.trace_id
    assert dict(relayed_span.attributes or {}) == {
        "messaging.system": "memory",
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
        "messaging.destination.name": channel,
        "messaging.message.id": message_id,
    }
    [link] = relayed_span.links
    assert (link.context.trace_id, link.context.span_id) == (
        send.context.trace_id,
        write.context.span_id,
    )

    # The relay left the headers alone: the consumer continues the send's trace.
    assert process.context.trace_id == send.context.trace_id
    assert process.parent is not None
    assert process.parent.span_id == write.context.span_id
    assert process.attributes is not None
    assert process.attributes["messaging.message.id"] == message_id

    # What went to the broker is counted once: by the relay, not the outbox write.
    sent = telemetry.metric_points("messaging.client.sent.messages")
    assert [(p.attributes["messaging.system"], p.value) for p in sent] == [("memory", 1)]
    durations = telemetry.metric_points("messaging.client.operation.duration")
    assert sorted(
        (p.attributes["messaging.system"], p.attributes["messaging.operation.type"], p.count)
        for p in durations
    ) == [("memory", "send", 1), ("outbox", "create", 1)]


async def test_a_relayed_batch_links_every_send_it_carries(
    telemetry: Telemetry, db: Database
) -> None:
    broker = InMemoryMessageBroker(channel_prefix="shop")
    relay = OutboxRelay(db.outbox, broker, interceptors=[telemetry.otel])
    assert db.outbox.channel_prefix == "shop"  # learnt from the relay's broker
    service = outbox_shop(db, telemetry.otel, relay=relay)
    service.broker = broker  # the relay's, so the service runs that relay
    service.subscribe("{prefix}:notification_event:*")
    # Committed before the relay runs: its first round takes the three rows.
    await service.mediator.send(PlaceOrder(order_id=1))
    await service.mediator.send(PlaceAudited(order_id=2))
    async with service:
        assert service.relay is relay
        await relayed(relay, lambda stats: stats.published == 3)
        await wait_until(service.consumers[0], lambda stats: stats.settled == 3)
    sends = [telemetry.span("send PlaceOrder"), telemetry.span("send PlaceAudited")]
    writes = [
        telemetry.span("publish shop:notification_event:OrderPlaced", messaging_system="outbox"),
        telemetry.span("publish", messaging_system="outbox"),  # two channels
    ]
    batch = telemetry.span("publish", messaging_system="memory")
    assert batch.attributes is not None
    assert batch.attributes["messaging.batch.message_count"] == 3
    assert "messaging.destination.name" not in batch.attributes
    assert {(link.context.trace_id, link.context.span_id) for link in batch.links} == {
        (send.context.trace_id, write.context.span_id)
        for send, write in zip(sends, writes, strict=True)
        if send.context is not None and write.context is not None
    }
    assert len(batch.links) == 2  # one per outbox write, not per message
    # Each delivery's process span is in the trace of the send that raised it:
    # one for PlaceOrder's event, two for PlaceAudited's.
    traces = Counter(
        span.context.trace_id
        for span in telemetry.finished()
        if span.name.startswith("process ") and span.context is not None
    )
    assert traces == {
        send.context.trace_id: count
        for send, count in zip(sends, (1, 2), strict=True)
        if send.context is not None
    }
