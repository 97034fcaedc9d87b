"""RabbitMQ: publishing, confirmed and mandatory.

One channel with publisher confirms; every message is published mandatory,
so a return means no queue (nor the alternate exchange) took it. A publish
cut off by a lost connection is sent again until `publish_timeout`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple

from aiormq import exceptions as amqp_errors
from aiormq.abc import AbstractChannel, AbstractConnection
from pamqp import commands as spec
from pamqp.common import FieldTable

from brokers.rabbitmq._errors import CONNECTION_LOST, close_quietly, raise_if_cancelled, refusal
from brokers.rabbitmq._naming import MANDATORY_KEY, Layout
from brokers.rabbitmq._topology import Topology
from mediator.transport import (
    RECONNECT,
    BrokerUnavailableError,
    CredentialError,
    Message,
    MessageTooLargeError,
    PublishError,
    quote,
)

__all__ = ["Outgoing", "Publisher", "outgoing_of"]

logger = logging.getLogger("mediator.brokers.rabbitmq")


class Outgoing(NamedTuple):
    """One AMQP message to publish, and how errors name it."""

    routing_key: str
    body: bytes
    properties: spec.Basic.Properties
    label: str


def outgoing_of(
    message: Message, routing_key: str, encode: Callable[[Message], bytes], *, mandatory: bool
) -> Outgoing:
    """`message` as the broker publishes it (docs/rabbitmq.md, "Publishing")."""
    if len(routing_key.encode()) > 255:
        raise PublishError(
            f"the routing key of {quote(message.message_name, 100)} is over 255 bytes, "
            "RabbitMQ's limit; give the event a shorter name"
        )
    headers: FieldTable | None = dict(message.headers) if message.headers else None
    if mandatory:
        headers = {**(headers or {}), "BCC": [MANDATORY_KEY]}
    return Outgoing(
        routing_key,
        encode(message),
        spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=2,
            message_id=str(message.message_id),
            message_type=message.message_name,
            headers=headers,
        ),
        f"{message.message_name} ({message.message_id})",
    )


class Publisher:
    """The publishing channel, opened on first use and again after it closed,
    and the publish loop."""

    def __init__(
        self,
        layout: Layout,
        topology: Topology,
        ready: Callable[[], Awaitable[AbstractConnection]],
    ) -> None:
        self._layout = layout
        self._topology = topology
        self._ready = ready
        self._channel: AbstractChannel | None = None
        self._lock = asyncio.Lock()

    async def channel(self) -> AbstractChannel:
        """The channel with publisher confirms, on a connection with the topology declared."""
        channel = self._channel
        if channel is not None and not channel.is_closed and self._topology.declared:
            return channel
        async with self._lock:
            # Declares again, after something was found gone.
            connection = await self._ready()
            channel = self._channel
            if channel is None or channel.is_closed:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                self._channel = channel
            return channel

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await close_quietly(channel)

    async def publish(
        self,
        exchange: str,
        outgoing: list[Outgoing],
        *,
        timeout: float,
        mandatory: bool,
        redeclare_on_return: bool,
    ) -> None:
        """Publish mandatory, confirmed, within `timeout` seconds: a return means
        no queue took the message (and, on the main exchange, no alternate
        exchange either). `mandatory` is the broker's: whether a return on the
        main exchange is what its publisher asked for."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        attempt = 0
        while True:
            attempt += 1
            results: list[BaseException | None]
            try:
                async with asyncio.timeout_at(deadline):
                    channel = await self.channel()
                    if len(outgoing) == 1:
                        results = [await _publish_one(channel, exchange, outgoing[0])]
                    else:
                        results = list(
                            await asyncio.gather(
                                *(_publish_one(channel, exchange, o) for o in outgoing)
                            )
                        )
            except TimeoutError as exc:
                raise PublishError(
                    f"RabbitMQ did not confirm {_labels(outgoing)} within {timeout}s "
                    f"(attempt {attempt}; is the connection down?); they may or may not have "
                    "been delivered"
                ) from exc
            except BrokerUnavailableError as exc:
                raise PublishError(f"could not publish {_labels(outgoing)}: {exc}") from exc
            except CONNECTION_LOST as exc:
                raise_if_cancelled(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                results = [exc] * len(outgoing)
            failed = [(o, e) for o, e in zip(outgoing, results, strict=True) if e is not None]
            if not failed:
                return
            retry: list[Outgoing] = []
            for item, error in failed:
                if isinstance(error, amqp_errors.PublishError):
                    if redeclare_on_return and attempt == 1:
                        self._topology.forget()  # the queue behind the exchange is gone
                        retry.append(item)
                        continue
                    raise self._returned(exchange, item, mandatory=mandatory) from error
                if isinstance(error, amqp_errors.DeliveryError):
                    raise PublishError(
                        f"RabbitMQ refused {quote(item.label, 200)} (nack): a queue may be at its "
                        "length limit, or the server low on resources; try again later"
                    ) from error
                if isinstance(error, amqp_errors.ChannelPreconditionFailed) and "size" in str(
                    error
                ):
                    raise MessageTooLargeError(
                        f"RabbitMQ refused {quote(item.label, 200)}: {quote(str(error), 300)}; "
                        "send less data per event or raise the server's max_message_size"
                    ) from error
                refused = refusal(f"publishing to exchange {exchange!r}", error)
                if isinstance(refused, CredentialError):
                    raise refused from error
                if refused is not None:
                    raise PublishError(str(refused)) from error
                if isinstance(error, amqp_errors.ChannelNotFoundEntity):
                    self._topology.forget()  # the exchange was deleted: declare it again
                elif not isinstance(error, CONNECTION_LOST):
                    raise PublishError(
                        f"could not publish {quote(item.label, 200)}: {quote(repr(error))}"
                    ) from error
                retry.append(item)
            if loop.time() >= deadline:
                raise PublishError(
                    f"could not publish {_labels(retry)} to RabbitMQ within "
                    f"{timeout}s: {quote(repr(failed[0][1]))}"
                ) from failed[0][1]
            logger.warning(
                "publishing %s was cut off (%s); publishing again (attempt %d)",
                _labels(retry),
                quote(repr(failed[0][1]), 300),
                attempt + 1,
            )
            await asyncio.sleep(min(RECONNECT.delay(attempt), max(0.0, deadline - loop.time())))
            outgoing = retry

    def _returned(self, exchange: str, item: Outgoing, *, mandatory: bool) -> PublishError:
        """The error for a message RabbitMQ returned: no queue took it."""
        layout = self._layout
        returned = (
            f"RabbitMQ returned {quote(item.label, 200)}: no queue is bound to exchange "
            f"{exchange!r} for routing key {item.routing_key!r}"
        )
        if exchange != layout.exchange:
            return PublishError(
                f"{returned}, even after declaring {layout.dead_letter_queue!r} again; "
                "check what deletes it"
            )
        if mandatory:
            return PublishError(
                f"{returned} (mandatory=True). Start a consumer of it first (its group's queue "
                "keeps messages from then on), or publish with mandatory=False, the default, to "
                f"keep such messages in the queue {layout.unroutable_queue!r}"
            )
        return PublishError(
            f"{returned}, and the exchange has no alternate exchange to keep it: it was "
            "declared without one (by an earlier version or another program), which RabbitMQ "
            "cannot change by declaring it again. Add one with a policy: "
            f"{layout.alternate_exchange_policy()}; or start a consumer of it first"
        )


async def _publish_one(
    channel: AbstractChannel, exchange: str, outgoing: Outgoing
) -> BaseException | None:
    """Publish mandatory and await the confirm; the error instead of raising it."""
    try:
        await channel.basic_publish(
            outgoing.body,
            exchange=exchange,
            routing_key=outgoing.routing_key,
            properties=outgoing.properties,
            mandatory=True,
        )
    except (*CONNECTION_LOST, amqp_errors.AMQPError) as exc:
        raise_if_cancelled(exc)
        return exc  # a CancelledError here: the channel closed under it
    return None


def _labels(outgoing: Sequence[Outgoing]) -> str:
    return quote(", ".join(o.label for o in outgoing), 300)
