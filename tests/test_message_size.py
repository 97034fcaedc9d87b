"""One size limit, shared by a broker and its consumers: nothing is
published that the library's own consumers would dead-letter as too large.
One test body for every transport."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import attrs
import pytest

from mediator import EventConsumer, EventEmitter, EventMap, MessageTooLargeError, NotificationEvent
from mediator.testing import wait_until
from mediator.transport import DEFAULT_MAX_MESSAGE_SIZE
from tests.transports import FACTORIES, Transport


@attrs.frozen(kw_only=True)
class DocumentScanned(NotificationEvent):
    page: int
    text: str


@pytest.fixture(params=sorted(FACTORIES))
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    prefix = f"mtk-s{uuid.uuid4().hex[:8]}"
    async with FACTORIES[request.param](prefix, request) as transport:
        yield transport


async def test_an_event_larger_than_the_limit_is_refused_when_published(
    transport: Transport,
) -> None:
    broker = transport.broker
    handled: list[int] = []
    events = EventMap()

    @events.bind(DocumentScanned)
    async def index(event: DocumentScanned) -> None:
        handled.append(event.page)

    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe(f"{broker.channel_prefix}:notification_event:*")
    emitter = EventEmitter(message_broker=transport.new_broker())
    async with consumer:
        with pytest.raises(MessageTooLargeError) as refused:
            await emitter.emit(DocumentScanned(page=1, text="x" * 2 * DEFAULT_MAX_MESSAGE_SIZE))
        await emitter.emit(DocumentScanned(page=2, text="a page"))
        stats = await wait_until(consumer, lambda s: s.handled >= 1, timeout=30)

    text = str(refused.value)
    assert "DocumentScanned" in text
    assert f"refuse more than {DEFAULT_MAX_MESSAGE_SIZE} (max_message_size)" in text
    assert handled == [2]
    assert stats.dead_lettered == 0


TRANSPORT_LIMITS = {
    "kafka": "the producer's max_request_size (1 MiB by default) is the transport's own limit",
    "azure": "Service Bus takes 256 KiB a message on the standard tier",
}


async def test_consumers_follow_their_brokers_raised_limit(transport: Transport) -> None:
    if transport.name in TRANSPORT_LIMITS:
        pytest.skip(TRANSPORT_LIMITS[transport.name])
    raised = 3 * DEFAULT_MAX_MESSAGE_SIZE
    publisher = transport.new_broker()
    for broker in {id(b): b for b in (transport.broker, publisher)}.values():
        broker.max_message_size = raised  # type: ignore[attr-defined]
    handled: list[int] = []
    events = EventMap()

    @events.bind(DocumentScanned)
    async def index(event: DocumentScanned) -> None:
        handled.append(len(event.text))

    consumer = EventConsumer(broker=transport.broker, event_map=events)  # no limit of its own
    await consumer.subscribe(f"{transport.broker.channel_prefix}:notification_event:*")
    async with consumer:
        await EventEmitter(message_broker=publisher).emit(
            DocumentScanned(page=1, text="x" * 2 * DEFAULT_MAX_MESSAGE_SIZE)
        )
        stats = await wait_until(consumer, lambda s: s.settled >= 1, timeout=30)

    assert stats.dead_lettered == 0
    assert handled == [2 * DEFAULT_MAX_MESSAGE_SIZE]
