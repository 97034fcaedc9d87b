"""Kafka publishing: the record of each envelope, the producer, the
produce loop that sends a cut-off record once more, and publish errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka import errors as aiokafka_errors

from brokers.kafka._errors import AUTH_ERRORS, CUT_OFF, TOO_LARGE
from mediator.transport import (
    CredentialError,
    MediatorError,
    Message,
    MessageTooLargeError,
    PublishError,
    quote,
)

__all__ = [
    "Record",
    "publish_error",
    "records_of",
    "send_records",
    "start_producer",
]

logger = logging.getLogger("mediator.brokers.kafka")

Record = tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]
"""A record to produce: topic, value, key, headers."""


def records_of(
    messages: Sequence[Message],
    topic_for: Callable[[Message], str],
    encode: Callable[[Message], bytes],
) -> list[Record]:
    """The records of `messages`, in order: the envelope as the value, the
    partition key as the key (none without one), the headers UTF-8."""
    return [
        (
            topic_for(m),
            encode(m),
            None if m.partition_key is None else m.partition_key.encode(),
            [(k, v.encode()) for k, v in m.headers.items()],
        )
        for m in messages
    ]


async def start_producer(
    servers: Sequence[str], *, idempotence: bool, options: Mapping[str, Any]
) -> Any:
    """A started producer that waits for every in-sync replica; stopped again
    if it does not start."""
    producer = AIOKafkaProducer(
        bootstrap_servers=servers, acks="all", enable_idempotence=idempotence, **options
    )
    try:
        await producer.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await producer.stop()
        raise
    return producer


async def send_records(producer: Callable[[], Awaitable[Any]], records: Sequence[Record]) -> None:
    """Produce `records` in order and await them all; those cut off with
    their connection are sent once more, and an error is raised as it came."""
    cut_off = await _produce(producer, records)
    if cut_off:
        # aiokafka gives a record up with a request unanswered for
        # request_timeout_ms (its batch expires with it), and drops
        # that connection: one more try goes out on a new one.
        logger.warning(
            "publishing %d record(s) was cut off (%s); publishing them again",
            len(cut_off),
            quote(repr(cut_off[0][1]), 300),
        )
        cut_off = await _produce(producer, [record for record, _ in cut_off])
        if cut_off:
            raise cut_off[0][1]


async def _produce(
    producer: Callable[[], Awaitable[Any]], records: Sequence[Record]
) -> list[tuple[Record, Exception]]:
    """Hand `records` to the producer in order, then await them all;
    returns those cut off with their connection (`CUT_OFF`), in order,
    and raises any other error once every record handed over has settled."""
    futures: list[asyncio.Future[Any]] = []
    try:
        send = (await producer()).send
        for topic, value, key, headers in records:
            futures.append(await send(topic, value, key=key, headers=headers))
        if len(futures) == 1:
            await futures[0]  # no gathering future: one loop turn less
        else:
            await asyncio.gather(*futures)
    except Exception as exc:
        # Nothing left unobserved: the records already handed over settle too.
        results = await asyncio.gather(*futures, return_exceptions=True)
        if len(results) < len(records) or not isinstance(exc, CUT_OFF):
            raise
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, CUT_OFF):
                raise result from None  # the error of its own, not the cut-off one
        return [
            (record, result)
            for record, result in zip(records, results, strict=True)
            if isinstance(result, CUT_OFF)
        ]
    return []


def publish_error(
    messages: Sequence[Message], exc: Exception, *, idempotence: bool, servers: Sequence[str]
) -> MediatorError:
    """The library's error for `messages` that Kafka did not take."""
    names = quote(", ".join(m.message_name for m in messages), 200)
    detail = quote(repr(exc))
    if isinstance(exc, TOO_LARGE):
        return MessageTooLargeError(
            f"Kafka refused {names} as too large ({detail}); raise max_request_size in "
            "producer_options and the topic's max.message.bytes, or send less"
        )
    if isinstance(exc, AUTH_ERRORS):
        return CredentialError(
            f"Kafka refused to take {names} ({detail}); check client_options (sasl_*, "
            "ssl_context) and the producer's ACLs"
        )
    hint = ""
    if idempotence and isinstance(
        exc, aiokafka_errors.UnknownError | aiokafka_errors.UnsupportedVersionError
    ):
        hint = (
            "; the broker may not support idempotent producers (Tansu 0.6 does not): "
            "pass idempotence=False"
        )
    return PublishError(
        f"could not publish {names} to Kafka at {','.join(servers)}: {detail}{hint}"
    )
