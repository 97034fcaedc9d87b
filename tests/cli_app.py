"""The service the CLI tests run with ``mediator run tests.cli_app:service``.

It bills OrderPlaced events in the consumer group ``billing`` and records
each one it handled in the Redis list ``{prefix}:handled`` as
``order_id:pid``, so a test in another process sees what was handled and by
which worker. Settings come from the environment: ``CLI_APP_PREFIX`` (the
channel prefix), ``CLI_APP_BROKER`` (its broker URL, default ``memory://``;
on Redis Streams, entries a stopped member had read are claimed after half
a second rather than 30), ``REDIS_URL`` (where the records go),
``CLI_APP_TRACE`` (when set, every span is written to stdout as one JSON
line), ``CLI_APP_WORK`` (seconds each event takes to bill), ``CLI_APP_GATE``
(events with an order id from this one on wait, before billing, for a token
a test pushes to the list ``{prefix}:gate``).
"""

from __future__ import annotations

import asyncio
import os
import sys

import attrs
from redis.asyncio import Redis

import brokers
from mediator import EventMap, NotificationEvent, Service, ServiceStarted, ServiceStopping

PREFIX = os.environ.get("CLI_APP_PREFIX", "cli-app")
WORK = float(os.environ.get("CLI_APP_WORK", "0.01"))
GATE = int(os.environ.get("CLI_APP_GATE", "-1"))


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int


BROKER = os.environ.get("CLI_APP_BROKER", "memory://")
OPTIONS = {"claim_idle": 0.5, "claim_interval": 0.1} if "+streams" in BROKER else {}

events = EventMap()
service = Service(
    brokers.from_url(BROKER, channel_prefix=PREFIX, **OPTIONS), name="billing", event_map=events
)
service.subscribe("{prefix}:notification_event:Order*", group="billing")
records: list[Redis] = []

if os.environ.get("CLI_APP_TRACE"):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    from mediator.otel import OpenTelemetry

    tracing = TracerProvider()
    tracing.add_span_processor(
        SimpleSpanProcessor(
            ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
        )
    )
    service.interceptors.append(OpenTelemetry(tracer_provider=tracing))


@service.on_startup
async def connect() -> None:
    records.append(Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")))


@service.on_shutdown
async def disconnect() -> None:
    await records.pop().aclose()


@events.bind(OrderPlaced)
async def bill(event: OrderPlaced) -> None:
    if 0 <= GATE <= event.order_id:
        # Still in flight when the test sends its signal: let through by the test.
        await records[0].blpop([f"{PREFIX}:gate"], timeout=60)
    await asyncio.sleep(WORK)  # stands for the work of billing
    await records[0].rpush(f"{PREFIX}:handled", f"{event.order_id}:{os.getpid()}")


@events.bind(ServiceStarted)
async def started(event: ServiceStarted) -> None:
    say(f"started {event.service}")


@events.bind(ServiceStopping)
async def stopping(event: ServiceStopping) -> None:
    say(f"stopping {event.service}")


def say(line: str) -> None:
    # One write per line: the workers of one command share its stdout.
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()
