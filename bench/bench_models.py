"""The three forms of a model, side by side in one run: attrs classes (the
default), dataclasses as diator writes them, and pydantic v2 models.

    python bench/bench_models.py [--quick]

For each form, microseconds per operation and the ratio of its time to the
attrs form's (the median of the ratios of rounds run side by side, the forms
taking turns; attrs = 1.00, lower is better):

- send: `Mediator.send` of a request in that form whose handler raises one
  NotificationEvent in that form, through an `EventEmitter` on an
  `InMemoryMessageBroker`. With nobody subscribed the broker keeps the
  envelope (`MessageCodec.to_message`: the payload read off the event) and
  writes no JSON; the request is built once, the event once per send.
- consume: an `EventConsumer` subscribed by pattern decodes envelopes of that
  form into typed events and awaits a plain async handler. The envelopes are
  written before the round and published into the subscription's buffer
  before the consumer runs; the time is from the first delivery to the last.
- codec: `encode_message(MessageCodec.to_message(event))` of one event, and
  `MessageCodec.decode` of one envelope, strict (the default) and with
  `strict_json=False`; then `decode_received`, what a consumer calls, which
  builds the `Message` only when asked (`decode` builds it, and with
  `strict_json=False` that takes a second parse to cut the payload's bytes
  out, which is why `decode` gains little from it).

Budgets: none here. The attrs form's budgets are those of bench_mediator.py
and bench_consumer.py, unchanged; the dataclass and pydantic lines are
reference figures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pydantic

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import Progress, interleaved

import mediator.pydantic as pydantic_kinds
from brokers.memory import InMemoryMessageBroker
from mediator import (
    EventConsumer,
    EventEmitter,
    EventMap,
    Mediator,
    MessageCodec,
    NotificationEvent,
    Request,
    RequestHandler,
    RequestMap,
)
from mediator.transport import channel_for, encode_message

PREFIX = "bench"
PATTERN = f"{PREFIX}:notification_event:*"

# -- the three forms ---------------------------------------------------------


@attrs.frozen(kw_only=True)
class AttrsTick(NotificationEvent):
    number: int


@attrs.frozen(kw_only=True)
class AttrsPing(Request[int]):
    value: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataclassTick(NotificationEvent):
    number: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataclassPing(Request[int]):
    value: int


class PydanticTick(pydantic_kinds.NotificationEvent):
    number: int


class PydanticPing(pydantic.BaseModel, Request[int]):
    model_config = pydantic.ConfigDict(frozen=True)

    value: int


class AttrsHandler(RequestHandler[AttrsPing, int]):
    async def handle(self, request: AttrsPing) -> int:
        self.events.append(AttrsTick(number=request.value))
        return request.value + 1


class DataclassHandler(RequestHandler[DataclassPing, int]):
    async def handle(self, request: DataclassPing) -> int:
        self.events.append(DataclassTick(number=request.value))
        return request.value + 1


class PydanticHandler(RequestHandler[PydanticPing, int]):
    async def handle(self, request: PydanticPing) -> int:
        self.events.append(PydanticTick(number=request.value))
        return request.value + 1


@attrs.frozen
class Form:
    name: str
    tick: type[Any]
    ping: type[Any]
    handler: type[Any]


FORMS = (
    Form("attrs", AttrsTick, AttrsPing, AttrsHandler),
    Form("dataclass", DataclassTick, DataclassPing, DataclassHandler),
    Form("pydantic", PydanticTick, PydanticPing, PydanticHandler),
)

# -- printing ----------------------------------------------------------------


def form_lines(title: str, times: list[list[float]]) -> None:
    """One line per form: its median time per operation and, past attrs, the
    median of its ratios to attrs over the rounds (no budget)."""
    base = times[0]
    for form, cand in zip(FORMS, times, strict=True):
        us = statistics.median(cand) * 1e6
        label = f"{title}: {form.name}"
        if form is FORMS[0]:
            print(f"{label:<58} {us:8.2f} us  {1.0:5.2f}x attrs time (baseline)")
            continue
        ratio = statistics.median(c / b for b, c in zip(base, cand, strict=True))
        print(f"{label:<58} {us:8.2f} us  {ratio:5.2f}x attrs time (reference, no budget)")


# -- send --------------------------------------------------------------------


async def send_times(n: int, repeats: int) -> list[list[float]]:
    bodies = []
    brokers: list[InMemoryMessageBroker] = []
    for form in FORMS:
        requests = RequestMap()
        requests.bind(form.ping, form.handler)
        broker = InMemoryMessageBroker(channel_prefix=PREFIX, history=1_000)
        mediator = Mediator(
            request_map=requests,
            event_emitter=EventEmitter(event_map=EventMap(), message_broker=broker),
        )
        request = form.ping(value=1)

        def body(mediator: Mediator = mediator, request: Any = request) -> Any:
            async def run(n: int) -> None:
                send = mediator.send
                for _ in range(n):
                    await send(request)

            return run

        bodies.append(body())
        brokers.append(broker)
    times = await interleaved(bodies, n, repeats)
    for form, broker in zip(FORMS, brokers, strict=True):
        # Every send kept its event's envelope.
        if broker.messages[-1].message_name != form.tick.__name__:  # pragma: no cover
            raise AssertionError(f"{form.name}: no envelope kept")
    return times


# -- consume -----------------------------------------------------------------


def envelopes(form: Form, n: int) -> list[tuple[str, bytes]]:
    """`n` envelopes of `form`'s event, each with its own id, as published."""
    written = []
    for number in range(n):
        message = MessageCodec.to_message(form.tick(number=number))
        written.append((channel_for(PREFIX, message), encode_message(message)))
    return written


async def consume_once(form: Form, published: list[tuple[str, bytes]]) -> float:
    """Seconds per message for a consumer to handle `published`."""
    progress = Progress(len(published))
    events = EventMap()

    async def handler(event: Any) -> None:
        progress.tick()

    events.bind(form.tick, handler)
    broker = InMemoryMessageBroker(channel_prefix=PREFIX, buffer_size=len(published))
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe(PATTERN)
    async with consumer:
        # The buffer holds them all, so this loop never yields: the consumer
        # starts on a full buffer.
        for channel, data in published:
            await broker.publish_raw(channel, data)
        await progress.done.wait()
    if consumer.stats.handled != len(published):  # pragma: no cover - a broken bench
        raise AssertionError(f"{form.name}: handled {consumer.stats.handled}")
    return progress.per_message()


async def consume_times(n: int, repeats: int) -> list[list[float]]:
    published = [envelopes(form, n) for form in FORMS]
    for form, written in zip(FORMS, published, strict=True):
        await consume_once(form, written[: max(2, n // 5)])
    times: list[list[float]] = [[] for _ in FORMS]
    order = list(range(len(FORMS)))
    for _ in range(repeats):
        for index in order:
            times[index].append(await consume_once(FORMS[index], published[index]))
        order.reverse()
    return times


# -- codec -------------------------------------------------------------------


def looped(call: Callable[[], Any]) -> Callable[[int], Any]:
    async def run(n: int) -> None:
        for _ in range(n):
            call()

    return run


async def codec_times(n: int, repeats: int) -> dict[str, list[list[float]]]:
    lines: dict[str, list[Callable[[int], Any]]] = {
        "codec: to_message + encode_message": [],
        "codec: decode, strict": [],
        "codec: decode, strict_json=False": [],
        "codec: decode_received, strict": [],
        "codec: decode_received, strict_json=False": [],
    }
    encode, strict, trusting, received, received_trusting = lines.values()
    for form in FORMS:
        events = EventMap()
        events.register(form.tick)
        event = form.tick(number=7)
        data = encode_message(MessageCodec.to_message(event))
        strict_codec = MessageCodec(events.event_class)
        trusting_codec = MessageCodec(events.event_class, strict_json=False)
        for codec in (strict_codec, trusting_codec):
            if codec.decode(data)[1] != event:  # pragma: no cover - a broken bench
                raise AssertionError(f"{form.name}: decode differs")

        def write(event: Any = event) -> bytes:
            return encode_message(MessageCodec.to_message(event))

        encode.append(looped(write))
        strict.append(looped(lambda codec=strict_codec, data=data: codec.decode(data)))
        trusting.append(looped(lambda codec=trusting_codec, data=data: codec.decode(data)))
        received.append(looped(lambda codec=strict_codec, data=data: codec.decode_received(data)))
        received_trusting.append(
            looped(lambda codec=trusting_codec, data=data: codec.decode_received(data))
        )
    return {title: await interleaved(bodies, n, repeats) for title, bodies in lines.items()}


async def main(n: int, repeats: int) -> None:
    started = time.perf_counter()
    form_lines("send raising one NotificationEvent", await send_times(n, repeats))
    form_lines("consume by pattern, typed", await consume_times(n // 4, repeats))
    for title, times in (await codec_times(n, repeats)).items():
        form_lines(title, times)
    print(f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    asyncio.run(main(n=10_000 if quick else 50_000, repeats=5 if quick else 9))
