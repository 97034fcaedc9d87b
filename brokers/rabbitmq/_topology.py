"""RabbitMQ: the exchanges and queues every broker of a prefix declares.

The topic exchange with its alternate exchange, the unroutable exchanges and
queue, and the dead-letter exchange and queue, declared once per connection
(and again after a publish finds one gone).
"""

from __future__ import annotations

import asyncio
import logging

from aiormq import exceptions as amqp_errors
from aiormq.abc import AbstractConnection

from brokers.rabbitmq._errors import close_quietly
from brokers.rabbitmq._naming import MANDATORY_KEY, Layout

__all__ = ["Topology"]

logger = logging.getLogger("mediator.brokers.rabbitmq")


class Topology:
    """What the broker declares, and the connection it was last declared on."""

    def __init__(self, layout: Layout) -> None:
        self._layout = layout
        self._declared_on: AbstractConnection | None = None
        self._lock = asyncio.Lock()

    @property
    def declared(self) -> bool:
        """Whether it was declared on a connection, and not found gone since."""
        return self._declared_on is not None

    def forget(self) -> None:
        """Declare everything again on the next use: something was found gone."""
        self._declared_on = None

    async def declare(self, connection: AbstractConnection, limit: int) -> None:
        """Declare the exchange with its alternate exchange, the unroutable and
        the dead-letter exchanges and queues (each queue keeping the newest
        `limit` messages), once per connection."""
        if self._declared_on is connection:
            return
        async with self._lock:
            if self._declared_on is connection:
                return
            layout = self._layout
            channel = await connection.channel(publisher_confirms=False)
            try:
                await channel.exchange_declare(
                    layout.kept_exchange, exchange_type="fanout", durable=True
                )
                await channel.queue_declare(
                    layout.unroutable_queue, durable=True, arguments={"x-max-length": limit}
                )
                await channel.queue_bind(layout.unroutable_queue, layout.kept_exchange, "")
                await channel.exchange_declare(
                    layout.unroutable_exchange,
                    exchange_type="direct",
                    durable=True,
                    arguments={"alternate-exchange": layout.kept_exchange},
                )
                # Bound to itself: routed, to no queue, so RabbitMQ returns it.
                await channel.exchange_bind(
                    layout.unroutable_exchange, layout.unroutable_exchange, MANDATORY_KEY
                )
                try:
                    await channel.exchange_declare(
                        layout.exchange,
                        exchange_type="topic",
                        durable=True,
                        arguments={"alternate-exchange": layout.unroutable_exchange},
                    )
                except amqp_errors.ChannelPreconditionFailed as exc:
                    if "alternate-exchange" not in str(exc):
                        raise
                    logger.info(
                        "exchange %r was declared without the alternate exchange %r (by an "
                        "earlier version or another program), and RabbitMQ cannot change that "
                        "by declaring it again: it is used as it is. Unless a policy gives it "
                        "one, a message no queue is bound for raises PublishError; the policy: %s",
                        layout.exchange,
                        layout.unroutable_exchange,
                        layout.alternate_exchange_policy(),
                    )
                    channel = await connection.channel(publisher_confirms=False)
                await channel.exchange_declare(
                    layout.dead_letter_exchange, exchange_type="fanout", durable=True
                )
                await channel.queue_declare(
                    layout.dead_letter_queue, durable=True, arguments={"x-max-length": limit}
                )
                await channel.queue_bind(layout.dead_letter_queue, layout.dead_letter_exchange, "")
            finally:
                await close_quietly(channel)
            self._declared_on = connection
