"""Prometheus metrics at the health server's ``GET /metrics``: parsed by
prometheus-client's own parser, they match the consumer's stats."""

from __future__ import annotations

import asyncio
import sys

import attrs
import pytest
from prometheus_client.parser import text_string_to_metric_families

from brokers.memory import InMemoryMessageBroker
from mediator import EventMap, NotificationEvent, Service
from mediator._operations.health import HealthServer
from mediator._policies import Backoff, DeadLetter, Retry
from mediator.testing import wait_until


@attrs.frozen(kw_only=True)
class OrderPaid(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class OrderLost(NotificationEvent):
    order_id: int


QUICK = Retry(attempts=2, backoff=Backoff(initial=0, jitter=0), then=DeadLetter())


def shop() -> Service:
    """Paid orders are handled (order 2 after one retry); lost ones always fail."""
    failed_once: set[int] = set()

    async def on_paid(event: OrderPaid) -> None:
        if event.order_id == 2 and event.order_id not in failed_once:
            failed_once.add(event.order_id)
            raise RuntimeError("flaky")

    async def on_lost(event: OrderLost) -> None:
        raise RuntimeError("gone")

    events = EventMap()
    events.bind(OrderPaid, on_paid, policy=QUICK)
    events.bind(OrderLost, on_lost, policy=QUICK)
    service = Service(InMemoryMessageBroker(channel_prefix="shop"), name="shop", event_map=events)
    service.subscribe("{prefix}:notification_event:*", group="billing")
    return service


async def get(port: int, path: str) -> tuple[int, dict[str, str], str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, body = response.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body.decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **want: str
) -> float:
    return sum(
        value
        for (sample, labels), value in found.items()
        if sample == name and set(want.items()) <= labels
    )


async def test_metrics_match_the_consumer_stats_after_handling_a_retry_and_a_dead_letter() -> None:
    service = shop()
    async with HealthServer(service) as health, service:
        (consumer,) = service.consumers
        await service.event_emitter.emit_all(
            [OrderPaid(order_id=1), OrderPaid(order_id=2), OrderLost(order_id=3)]
        )
        broker = service.broker
        assert isinstance(broker, InMemoryMessageBroker)
        await broker.publish_raw("shop:notification_event:OrderPaid", b"not json")
        stats = await wait_until(consumer, lambda s: s.settled == 4)
        status, headers, text = await get(health.port, "/metrics")

    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    found = samples(text)
    pattern = {"service": "shop", "pattern": "shop:notification_event:*"}
    assert (stats.handled, stats.retried, stats.dead_lettered) == (2, 2, 2)
    assert total(found, "mediator_messages_received_total", **pattern) == stats.received == 4
    assert total(found, "mediator_messages_handled_total", **pattern) == stats.handled
    assert total(found, "mediator_messages_released_total") == stats.released == 0
    assert total(found, "mediator_messages_dead_lettered_total") == stats.dead_lettered
    for reason, count in stats.dead_lettered_by_reason.items():
        assert total(found, "mediator_messages_dead_lettered_total", reason=reason) == count
    assert total(found, "mediator_handler_retries_total", service="shop") == stats.retried
    assert total(found, "mediator_messages_handled_total", event="OrderPaid") == 2
    assert (
        total(
            found,
            "mediator_messages_dead_lettered_total",
            event="OrderLost",
            reason="handler_failed",
        )
        == 1
    )
    assert total(found, "mediator_messages_dead_lettered_total", event="undecoded") == 1
    # One observation per settled delivery, by outcome.
    assert total(found, "mediator_message_handling_duration_seconds_count") == stats.settled
    assert (
        total(found, "mediator_message_handling_duration_seconds_count", outcome="handled")
        == stats.handled
    )
    # The three events were published in one batch, straight to the broker.
    assert total(found, "mediator_messages_published_total", operation="publish") == 3
    assert total(found, "mediator_messages_published_total", event="OrderLost") == 1
    assert total(found, "mediator_publish_duration_seconds_count", outcome="ok") == 1
    assert total(found, "mediator_messages_in_flight") == 0
    # The in-memory transport reports what waits for the consumer.
    assert total(found, "mediator_consumer_lag_messages", group="billing") == 0
    # Bounded labels: no message or event id anywhere.
    label_names = {name for _, labels in found for name, _ in labels}
    assert label_names <= {
        "service",
        "pattern",
        "event",
        "reason",
        "outcome",
        "operation",
        "group",
        "le",
    }


async def test_two_services_keep_their_own_registries() -> None:
    first, second = shop(), shop()
    second.name = "other"
    one, two = HealthServer(first), HealthServer(second)
    assert one.metrics is not None
    assert two.metrics is not None
    assert one.metrics.registry is not two.metrics.registry
    # A second server of the same service serves the same metrics, attached once.
    assert HealthServer(first).metrics is one.metrics
    async with first:
        await first.event_emitter.emit_all([OrderPaid(order_id=1)])
        await wait_until(first.consumers[0], lambda s: s.handled == 1)
    assert total(samples(one.metrics.exposition().decode()), "mediator_messages_handled_total") == 1
    assert total(samples(two.metrics.exposition().decode()), "mediator_messages_handled_total") == 0


async def test_the_other_paths_answer_as_before_and_metrics_can_be_off() -> None:
    service = shop()
    async with HealthServer(service, metrics=False) as health:
        status, headers, body = await get(health.port, "/metrics")
        assert status == 404
        assert "metrics=False" in body
        status, headers, _ = await get(health.port, "/livez")
        assert (status, headers["Content-Type"]) == (200, "application/json")


def test_without_the_extra_metrics_are_a_404_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "mediator.prometheus", raising=False)
    with pytest.raises(ImportError, match=r"mediator-toolkit\[prometheus\]"):
        import mediator.prometheus  # noqa: F401
    health = HealthServer(shop())
    assert health.metrics is None
    status, content_type, body = health.respond("GET", "/metrics")
    assert (status, content_type) == (404, "application/json")
    assert b"pip install 'mediator-toolkit[prometheus]'" in body
