"""The three model forms, one test body each: attrs classes, dataclasses as
diator writes them, and pydantic models, for events and requests; and
handlers written as plain (sync) functions and methods."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import orjson
import pytest

import mediator.pydantic as models
from brokers.memory import InMemoryMessageBroker
from mediator import (
    Backoff,
    DeadLetter,
    DecodeFailure,
    DomainEvent,
    EventConsumer,
    EventEmitter,
    EventHandler,
    EventMap,
    Mediator,
    MessageCodec,
    MessageDecodeError,
    NotificationEvent,
    Request,
    RequestBindingError,
    RequestHandler,
    RequestMap,
    Retry,
    Service,
)
from mediator._operations.asyncapi import asyncapi_document
from mediator._operations.diagram import mermaid_diagram
from mediator.testing import wait_until
from mediator.transport import encode_message
from tests import bad_inputs
from tests.bad_inputs import CASES, PROBE_NAME, Probe
from tests.transports import FACTORIES, Transport

NO_WAIT = Backoff(initial=0, jitter=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataclassProbe(NotificationEvent, name=PROBE_NAME):
    user_id: int = dataclasses.field()
    name: str = dataclasses.field(default="anonymous")


class ModelProbe(models.NotificationEvent, name=PROBE_NAME):
    user_id: int
    name: str = "anonymous"


PROBES: dict[str, type[Any]] = {"attrs": Probe, "dataclass": DataclassProbe, "pydantic": ModelProbe}
FORMS = sorted(PROBES)


def codec_for(form: str, *, strict_json: bool = True) -> MessageCodec:
    return MessageCodec(
        bad_inputs.probe_event_map(PROBES[form]).event_class, strict_json=strict_json
    )


def wire(event: Any) -> bytes:
    return encode_message(MessageCodec.to_message(event, {"correlation_id": "c-1"}))


# -- the codec ----------------------------------------------------------------------


@pytest.mark.parametrize("strict_json", [True, False], ids=["strict", "trusting"])
@pytest.mark.parametrize("form", FORMS)
def test_each_form_goes_to_the_wire_and_back_as_itself(form: str, strict_json: bool) -> None:
    event = PROBES[form](user_id=5, name="Ada")

    message, decoded = codec_for(form, strict_json=strict_json).decode(wire(event))

    assert type(decoded) is PROBES[form]
    assert decoded == event
    assert message.message_id == event.event_id
    payload = orjson.loads(wire(event))["payload"]
    assert payload == {
        "event_id": str(event.event_id),
        "event_timestamp": event.event_timestamp.isoformat(),
        "user_id": 5,
        "name": "Ada",
    }


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in CASES])
@pytest.mark.parametrize("form", FORMS)
def test_every_bad_input_is_refused_with_its_reason_whatever_the_form(
    form: str, case: bad_inputs.BadInput
) -> None:
    codec = codec_for(form)
    with pytest.raises(MessageDecodeError) as whole:
        codec.decode(case.build(PROBE_NAME))
    with pytest.raises(MessageDecodeError) as in_two_steps:
        codec.to_event(codec.decode_message(case.build(PROBE_NAME)))

    assert whole.value.reason is DecodeFailure(case.reason)
    assert in_two_steps.value.reason is DecodeFailure(case.reason)


def edited(change: Callable[[dict[str, Any]], None]) -> bytes:
    body = orjson.loads(bad_inputs.valid())
    change(body["payload"])
    return orjson.dumps(body)


@pytest.mark.parametrize("form", FORMS)
def test_unknown_fields_are_ignored_missing_and_wrong_ones_named(form: str) -> None:
    codec = codec_for(form)

    _, event = codec.decode(edited(lambda p: p.update(added_later={"x": [1, 2]})))
    assert event.user_id == 7  # type: ignore[attr-defined]

    with pytest.raises(MessageDecodeError, match="user_id") as missing:
        codec.decode(edited(lambda p: p.pop("user_id")))
    assert missing.value.reason is DecodeFailure.INVALID_PAYLOAD

    for wrong in ("7", 7.5, True, None, [7]):
        with pytest.raises(MessageDecodeError, match=r"\$\.user_id") as refused:
            codec.decode(edited(lambda p, w=wrong: p.update(user_id=w)))  # type: ignore[misc]
        assert refused.value.reason is DecodeFailure.INVALID_PAYLOAD


@pytest.mark.parametrize(
    "stamp",
    [
        datetime(2026, 3, 7, 9, 26, 2, 588855),
        datetime(2026, 3, 7, 9, 26, 2, 588855, tzinfo=timezone(timedelta(hours=-5))),
        datetime(2026, 3, 7, 9, 26, 2, 588855, tzinfo=UTC),
    ],
    ids=["naive", "minus-five", "utc"],
)
@pytest.mark.parametrize("form", FORMS)
def test_datetimes_travel_as_written(form: str, stamp: datetime) -> None:
    event = PROBES[form](user_id=1, event_timestamp=stamp)

    sent = orjson.loads(wire(event))["payload"]["event_timestamp"]
    _, decoded = codec_for(form).decode(wire(event))

    assert sent == stamp.isoformat()
    assert decoded.event_timestamp == stamp
    assert decoded.event_timestamp.utcoffset() == stamp.utcoffset()


def test_a_pydantic_models_own_config_can_make_decoding_lax() -> None:
    class Lax(models.NotificationEvent, name=PROBE_NAME):
        model_config = models.pydantic.ConfigDict(strict=False)
        user_id: int

    codec = codec_for("pydantic")
    lax = MessageCodec(bad_inputs.probe_event_map(Lax).event_class)
    data = edited(lambda p: p.update(user_id="7"))

    with pytest.raises(MessageDecodeError):
        codec.decode(data)
    assert lax.decode(data)[1].user_id == 7  # type: ignore[attr-defined]


# -- a diator producer ------------------------------------------------------------

DIATOR_PREFIX = "python_diator_channel"


@dataclasses.dataclass(frozen=True, kw_only=True)
class UserJoinedNotificationEvent(NotificationEvent):
    user_id: int = dataclasses.field()


async def test_a_diator_envelope_on_diators_channel_decodes_into_a_dataclass_event() -> None:
    # As diator's Events page shows it: a naive timestamp, no headers, and the
    # channel named after the message id rather than the event.
    message_id = "9f62e977-73f7-462b-92cb-8ea658d3bcb5"
    data = (
        b'{"message_type":"notification_event","message_name":"UserJoinedNotificationEvent",'
        b'"message_id":"'
        + message_id.encode()
        + b'","payload":{"event_id":"'
        + message_id.encode()
        + b'","event_timestamp":"2023-03-07T09:26:02.588855","user_id":123}}'
    )
    broker = InMemoryMessageBroker(channel_prefix=DIATOR_PREFIX)
    received: list[UserJoinedNotificationEvent] = []
    events = EventMap()

    @events.bind(UserJoinedNotificationEvent)
    async def joined(event: UserJoinedNotificationEvent) -> None:
        received.append(event)

    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe(f"{DIATOR_PREFIX}:notification_event:*")
    async with consumer:
        await broker.publish_raw(f"{DIATOR_PREFIX}:notification_event:{message_id}", data)
        await wait_until(consumer, lambda s: s.handled >= 1)

    [event] = received
    assert type(event) is UserJoinedNotificationEvent
    assert event.user_id == 123
    assert event.event_id == uuid.UUID(message_id)
    assert event.event_timestamp == datetime(2023, 3, 7, 9, 26, 2, 588855)  # naive, as sent


# -- consumers -----------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis-streams"])
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    prefix = f"mtk-{uuid.uuid4().hex[:8]}"
    async with FACTORIES[request.param](prefix, request) as transport:
        yield transport


@pytest.mark.parametrize("form", FORMS)
async def test_a_consumer_dead_letters_every_bad_input_with_its_reason_whatever_the_form(
    transport: Transport, form: str
) -> None:
    probe = PROBES[form]
    events = bad_inputs.probe_event_map(probe)
    handled: list[Any] = []

    @events.bind(probe)
    async def handle(event: Any) -> None:
        handled.append(event)

    consumer = EventConsumer(broker=transport.broker, event_map=events)
    channel = f"{transport.broker.channel_prefix}:notification_event:{PROBE_NAME}"
    await consumer.subscribe(channel)
    async with consumer:
        for case in CASES:
            await transport.publish_raw(channel, case.build(PROBE_NAME))
        await transport.publish_raw(channel, wire(probe(user_id=11)))
        await wait_until(
            consumer, lambda s: s.handled >= 1 and s.dead_lettered >= len(CASES), timeout=30
        )
    assert [(type(e), e.user_id) for e in handled] == [(probe, 11)]
    dead = await transport.dead_letters()
    assert Counter(reason for reason, _ in dead) == Counter(case.reason for case in CASES)


# -- mixed forms in one map ------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ShippedAsAttrs(NotificationEvent):
    """Shipped, declared with attrs."""

    order_id: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShippedAsDataclass(NotificationEvent):
    """Shipped, declared as a dataclass."""

    order_id: int
    carrier: str = "post"


class Parcel(models.pydantic.BaseModel):
    weight_grams: int


class ShippedAsModel(models.ECSTEvent):
    """Shipped, declared as a pydantic model."""

    order_id: int
    parcel: Parcel


def mixed_map(seen: list[Any]) -> EventMap:
    events = EventMap()
    for event_type in (ShippedAsAttrs, ShippedAsDataclass, ShippedAsModel):

        async def record(event: Any) -> None:
            seen.append(event)

        events.bind(event_type, record)
    return events


async def test_one_map_holds_all_three_forms_through_the_emitter_and_a_consumer() -> None:
    seen: list[Any] = []
    broker = InMemoryMessageBroker(channel_prefix="mixed")
    sent = [
        ShippedAsAttrs(order_id=1),
        ShippedAsDataclass(order_id=2),
        ShippedAsModel(order_id=3, parcel=Parcel(weight_grams=250)),
    ]
    consumer = EventConsumer(broker=broker, event_map=mixed_map(seen))
    await consumer.subscribe("mixed:*")
    async with consumer:
        await EventEmitter(event_map=EventMap(), message_broker=broker).emit_all(sent)
        await wait_until(consumer, lambda s: s.handled >= 3)

    assert sorted(seen, key=lambda e: e.order_id) == sent
    assert [type(e) for e in sorted(seen, key=lambda e: e.order_id)] == [type(e) for e in sent]


def test_the_asyncapi_document_and_the_diagram_show_all_three_forms() -> None:
    service = Service(InMemoryMessageBroker(channel_prefix="mixed"), event_map=mixed_map([]))
    service.subscribe("mixed:*")

    document = asyncapi_document(service)
    schemas = document["components"]["schemas"]
    assert schemas["ShippedAsAttrs"]["properties"]["order_id"] == {"type": "integer"}
    assert schemas["ShippedAsDataclass"]["properties"]["carrier"]["type"] == "string"
    model = schemas["ShippedAsModel"]
    assert model["properties"]["order_id"]["type"] == "integer"
    assert model["properties"]["parcel"] == {"$ref": "#/components/schemas/Parcel"}
    assert schemas["Parcel"]["properties"]["weight_grams"]["type"] == "integer"
    assert {"event_id", "event_timestamp", "order_id", "parcel"} <= set(model["required"])
    messages = document["components"]["messages"]
    for name in ("ShippedAsAttrs", "ShippedAsDataclass", "ShippedAsModel"):
        assert messages[name]["payload"]["properties"]["payload"] == {
            "$ref": f"#/components/schemas/{name}"
        }
    chart = mermaid_diagram(service)
    for name in ("ShippedAsAttrs", "ShippedAsDataclass", "ShippedAsModel"):
        assert name in chart


# -- requests in every form ------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AddAsAttrs(Request[int]):
    a: int
    b: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class AddAsDataclass(Request[int]):
    a: int
    b: int


class AddAsModel(models.pydantic.BaseModel, Request[int]):
    a: int
    b: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class Added(DomainEvent):
    total: int


async def test_requests_in_every_form_reach_their_handler_and_raise_events() -> None:
    totals: list[int] = []

    class Adds(RequestHandler[Any, int]):
        async def handle(self, request: Any) -> int:
            self.events.append(Added(total=request.a + request.b))
            return request.a + request.b  # type: ignore[no-any-return]

    requests = RequestMap()
    for request_type in (AddAsAttrs, AddAsDataclass, AddAsModel):
        requests.bind(request_type, Adds)
    events = EventMap()

    @events.bind(Added)
    async def record(event: Added) -> None:
        totals.append(event.total)

    mediator = Mediator(request_map=requests, event_emitter=EventEmitter(event_map=events))
    results = [
        await mediator.send(AddAsAttrs(a=1, b=2)),
        await mediator.send(AddAsDataclass(a=3, b=4)),
        await mediator.send(AddAsModel(a=5, b=6)),
    ]
    assert results == [3, 7, 11]
    assert totals == [3, 7, 11]


# -- sync handlers -----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Ping(NotificationEvent):
    number: int


@attrs.frozen(kw_only=True)
class Tick(DomainEvent):
    number: int


@attrs.frozen(kw_only=True)
class Tock(DomainEvent):
    number: int


class Calls:
    """What sync handlers saw: the events, and the threads they ran on."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.numbers: list[int] = []
        self.threads: list[int] = []

    def __call__(self, event: Ping | Tick) -> None:
        self.numbers.append(event.number)
        self.threads.append(threading.get_ident())
        if len(self.numbers) <= self.failures:
            raise ConnectionError(f"failure {len(self.numbers)}")


def sync_handlers(calls: Calls) -> dict[str, object]:
    def function(event: Ping | Tick) -> None:
        calls(event)

    class Handler(EventHandler[Ping | Tick]):
        def handle(self, event: Ping | Tick) -> None:  # type: ignore[override]
            calls(event)

    return {"function": function, "class": Handler}


@pytest.mark.parametrize("to_thread", [False, True], ids=["in-the-loop", "in-a-thread"])
@pytest.mark.parametrize("kind", ["function", "class"])
async def test_a_sync_handler_runs_under_retry_locally(kind: str, to_thread: bool) -> None:
    calls = Calls(failures=2)
    events = EventMap()
    events.bind(
        Tick,
        sync_handlers(calls)[kind],  # type: ignore[arg-type]
        policy=Retry(attempts=3, backoff=NO_WAIT),
        to_thread=to_thread,
    )
    emitter = EventEmitter(event_map=events)

    await emitter.emit(Tick(number=1))

    assert calls.numbers == [1, 1, 1]
    loop_thread = threading.get_ident()
    assert all((thread != loop_thread) is to_thread for thread in calls.threads)


@pytest.mark.parametrize("to_thread", [False, True], ids=["in-the-loop", "in-a-thread"])
@pytest.mark.parametrize("kind", ["function", "class"])
async def test_a_sync_handler_in_a_consumer_is_retried_then_dead_lettered(
    kind: str, to_thread: bool
) -> None:
    calls = Calls(failures=10)
    events = EventMap()
    events.bind(
        Ping,
        sync_handlers(calls)[kind],  # type: ignore[arg-type]
        policy=Retry(attempts=2, backoff=NO_WAIT, then=DeadLetter()),
        to_thread=to_thread,
    )
    broker = InMemoryMessageBroker(channel_prefix="sync")
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe("sync:*")
    async with consumer:
        await EventEmitter(message_broker=broker).emit(Ping(number=4))
        await wait_until(consumer, lambda s: s.dead_lettered >= 1)

    assert calls.numbers == [4, 4]
    [dead] = await broker.dead_letters()
    assert "failure 2" in dead.description
    loop_thread = threading.get_ident()
    assert all((thread != loop_thread) is to_thread for thread in calls.threads)


async def test_a_sync_handler_in_a_thread_raises_follow_ups_and_returns_them() -> None:
    events = EventMap()
    seen: list[int] = []

    class Reacts(EventHandler[Tick]):
        def handle(self, event: Tick) -> None:  # type: ignore[override]
            self.events.append(Tock(number=event.number + 1))

    def returns(event: Tock) -> Ping:
        seen.append(event.number)
        return Ping(number=event.number * 10)

    events.bind(Tick, Reacts, to_thread=True)
    events.bind(Tock, returns, to_thread=True)
    broker = InMemoryMessageBroker()

    await EventEmitter(event_map=events, message_broker=broker).emit(Tick(number=1))

    assert seen == [2]
    assert [m.payload["number"] for m in broker.messages] == [20]


async def test_a_stopped_consumer_waits_for_a_sync_handler_in_a_thread() -> None:
    started, release = threading.Event(), threading.Event()
    finished: list[int] = []

    def slow(event: Ping) -> None:
        started.set()
        release.wait(5)
        finished.append(event.number)

    events = EventMap()
    events.bind(Ping, slow, to_thread=True)
    broker = InMemoryMessageBroker(channel_prefix="slow")
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe("slow:*")
    await consumer.start()
    await EventEmitter(message_broker=broker).emit(Ping(number=9))
    assert await asyncio.to_thread(started.wait, 5)
    stopping = asyncio.create_task(consumer.stop())
    release.set()
    await asyncio.wait_for(stopping, 10)

    assert finished == [9]
    assert consumer.stats.handled == 1


def test_a_request_handler_with_a_sync_handle_is_refused_where_it_is_bound() -> None:
    class Adds(RequestHandler[AddAsAttrs, int]):
        def handle(self, request: AddAsAttrs) -> int:  # type: ignore[override]
            return request.a + request.b

    with pytest.raises(RequestBindingError, match="its handle is a plain def"):
        RequestMap().bind(AddAsAttrs, Adds)
