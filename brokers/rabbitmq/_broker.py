"""RabbitMQ: the broker, tying the connection, the publisher, the
subscriptions and the dead-letter queue together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Self
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aiormq.abc import AbstractConnection, DeliveredMessage
from yarl import URL

from brokers.rabbitmq._dead_letters import (
    count_queue,
    dead_letter_copy,
    read_queue,
    record_of,
    replayed_copy,
    take_from_queue,
    unroutable_record,
)
from brokers.rabbitmq._errors import ERRORS
from brokers.rabbitmq._groups import Groups
from brokers.rabbitmq._naming import Layout, binding_key, routing_key_of
from brokers.rabbitmq._publisher import Outgoing, Publisher, outgoing_of
from brokers.rabbitmq._subscription import RabbitMQSubscription
from brokers.rabbitmq._topology import Topology
from mediator.transport import (
    DEFAULT_MAX_MESSAGE_SIZE,
    BrokerLifecycle,
    BrokerUnavailableError,
    DeadLetterRecord,
    DeliveryGuarantee,
    Message,
    quote,
    replayable,
)

__all__ = ["DEFAULT_HEARTBEAT", "DEFAULT_PREFETCH", "RabbitMQMessageBroker"]

DEFAULT_PREFETCH = 16
"""Unacknowledged deliveries per subscription channel: `EventConsumer`'s
default `max_concurrency`, so nothing waits in the process for a slot."""
DEFAULT_HEARTBEAT = 15
"""Seconds between heartbeats that `from_url` asks for: a connection gone
silent is noticed within 3 x (heartbeat + 1) s."""


class RabbitMQMessageBroker(BrokerLifecycle):
    """Publishes envelopes to a topic exchange; consumes from quorum queues.

    ```python
    import aio_pika
    connection = await aio_pika.connect_robust("amqp://guest:guest@localhost/")
    broker = RabbitMQMessageBroker(connection, channel_prefix="shop")
    ```

    The connection must come from ``aio_pika.connect_robust`` and stays
    yours to configure and close; `from_url` builds one the broker owns.
    """

    delivery_guarantee = DeliveryGuarantee.AT_LEAST_ONCE

    channel_prefix: str
    """The first part of every logical channel, and the name of the topic exchange."""
    prefetch: int
    """Unacknowledged deliveries per subscription; set it to the consumer's `max_concurrency`."""
    mandatory: bool
    """Whether a message no queue is bound for raises `PublishError` (else it
    goes to the queue ``{prefix}.unroutable``)."""
    publish_timeout: float
    """Seconds a publish may take, waiting for the connection and every confirm."""
    connect_timeout: float
    """Seconds `start()` and each (re)subscription wait for the connection."""
    dead_letter_limit: int
    """How many messages the queues ``{prefix}.dead-letter`` and ``{prefix}.unroutable``
    each keep (the newest)."""
    unmatched: int
    """Deliveries acknowledged because they matched no subscription's glob."""
    _connection: AbstractRobustConnection | None

    def __init__(
        self,
        connection: AbstractRobustConnection,
        channel_prefix: str = "mediator",
        *,
        prefetch: int = DEFAULT_PREFETCH,
        mandatory: bool = False,
        publish_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        dead_letter_limit: int = 10_000,
    ) -> None:
        if not isinstance(connection, AbstractRobustConnection):
            raise TypeError(
                f"RabbitMQMessageBroker needs a robust connection, got {type(connection).__name__}:"
                " make it with aio_pika.connect_robust(url), which reconnects after a drop, or "
                "use RabbitMQMessageBroker.from_url(url)"
            )
        self._setup(
            channel_prefix,
            prefetch=prefetch,
            mandatory=mandatory,
            publish_timeout=publish_timeout,
            connect_timeout=connect_timeout,
            dead_letter_limit=dead_letter_limit,
        )
        self._connection = connection

    @classmethod
    def from_url(
        cls,
        url: str,
        channel_prefix: str = "mediator",
        *,
        connection_name: str | None = None,
        reconnect_interval: float = 1.0,
        **options: Any,
    ) -> Self:
        """A broker with its own ``connect_robust`` connection to `url`
        (``amqp://`` or ``amqps://``), opened by `start()` (or the first use)
        and closed by `stop()`. `connection_name` is shown by ``rabbitmqctl
        list_connections``; `reconnect_interval` is the wait between attempts
        to reconnect; `options` are the broker's own keywords. The heartbeat is
        `DEFAULT_HEARTBEAT` seconds unless the URL names one (``?heartbeat=``)."""
        broker = cls.__new__(cls)
        broker._setup(channel_prefix, **options)
        broker._url = url
        broker._connect_options = {
            "reconnect_interval": reconnect_interval,
            "client_properties": {
                "connection_name": connection_name or f"mediator {channel_prefix}"
            },
        }
        if "heartbeat" not in urlsplit(url).query:
            # RabbitMQ proposes 60 s, so a silent connection (a network
            # partition) took 3 x 61 s to notice; 15 s: within 48 s.
            broker._connect_options["heartbeat"] = DEFAULT_HEARTBEAT
        broker._owns_client = True
        return broker

    def _setup(
        self,
        channel_prefix: str,
        *,
        prefetch: int = DEFAULT_PREFETCH,
        mandatory: bool = False,
        publish_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        dead_letter_limit: int = 10_000,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        layout = Layout(channel_prefix)
        for name, value in (
            ("prefetch", prefetch),
            ("dead_letter_limit", dead_letter_limit),
        ):
            if value < 1:
                raise ValueError(f"RabbitMQMessageBroker({name}={value}): must be at least 1")
        if prefetch > 65535:
            raise ValueError(f"prefetch={prefetch}: RabbitMQ takes at most 65535")
        super().__init__(max_message_size=max_message_size)
        self.channel_prefix = channel_prefix
        self.prefetch = prefetch
        self.mandatory = mandatory
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.dead_letter_limit = dead_letter_limit
        self.unmatched = 0
        self._connection = None
        self._url: str | None = None
        self._connect_options: dict[str, Any] = {}
        self._start_lock = asyncio.Lock()
        self._layout = layout
        self._topology = Topology(layout)
        self._publisher = Publisher(layout, self._topology, self._ready)
        self._groups: Groups[RabbitMQSubscription] = Groups(layout)

    # -- names ---------------------------------------------------------------

    @property
    def exchange(self) -> str:
        """The durable topic exchange every message is published to (the prefix)."""
        return self._layout.exchange

    @property
    def dead_letter_exchange(self) -> str:
        """The fanout exchange dead letters go through: ``{prefix}.dead-letter``."""
        return self._layout.dead_letter_exchange

    @property
    def dead_letter_queue(self) -> str:
        """The durable queue that keeps dead letters: ``{prefix}.dead-letter``."""
        return self._layout.dead_letter_queue

    @property
    def unroutable_exchange(self) -> str:
        """The exchange's alternate exchange: ``{prefix}.unroutable``. It returns
        a mandatory publish and passes any other on to the queue ``{prefix}.unroutable``."""
        return self._layout.unroutable_exchange

    @property
    def unroutable_queue(self) -> str:
        """The durable queue that keeps messages no queue was bound for: ``{prefix}.unroutable``."""
        return self._layout.unroutable_queue

    def group_queue(self, group: str) -> str:
        """The durable quorum queue of consumer group `group`: ``{prefix}.{group}``."""
        return self._layout.group_queue(group)

    @property
    def connection(self) -> AbstractRobustConnection:
        """The aio-pika connection (from `from_url`: once started)."""
        if self._connection is None:
            raise RuntimeError(
                "this RabbitMQMessageBroker connects on start(); await broker.start() first"
            )
        return self._connection

    @staticmethod
    def routing_key(message: Message) -> str:
        """The routing key of `message`: ``{message_type}.{message_name}``."""
        return routing_key_of(message)

    # -- connection ----------------------------------------------------------

    async def _open(self) -> None:
        async with self._start_lock:
            if self._connection is None:
                assert self._url is not None
                where = f"connecting to RabbitMQ at {_safe(self._url)}"
                with ERRORS.mapped(where, BrokerUnavailableError):
                    self._connection = await aio_pika.connect_robust(
                        self._url, timeout=self.connect_timeout, **self._connect_options
                    )
        with ERRORS.mapped("starting the RabbitMQ broker", BrokerUnavailableError):
            async with asyncio.timeout(self.connect_timeout):
                await self._ready()

    async def _underlay(self) -> AbstractConnection:
        """aiormq's connection under the robust one, once it is connected
        (waiting while it reconnects; callers bound the wait)."""
        if self._connection is None:
            await self.start()
        connection = self.connection
        while True:
            if connection.is_closed:
                raise BrokerUnavailableError(
                    "the RabbitMQ connection was closed by its owner, and a closed connection "
                    "never comes back; stop the consumers before closing the connection, or "
                    "give the broker a new one"
                )
            transport = connection.transport
            if connection.connected.is_set():
                if transport is not None and not transport.connection.is_closed:
                    return transport.connection
                await asyncio.sleep(0.01)  # the lost connection is still being noticed
            else:
                await connection.connected.wait()

    async def _ready(self) -> AbstractConnection:
        """aiormq's connection, with the exchanges and queues declared on it."""
        connection = await self._underlay()
        await self._topology.declare(connection, self.dead_letter_limit)
        return connection

    # -- publish -------------------------------------------------------------

    def _outgoing(self, message: Message) -> Outgoing:
        return outgoing_of(
            message, self.routing_key(message), self.encode, mandatory=self.mandatory
        )

    async def send_message(self, message: Message) -> None:
        """Publish one envelope and wait for RabbitMQ's confirm."""
        await self._publish(
            self.exchange, [self._outgoing(message)], redeclare_on_return=not self.mandatory
        )

    async def send_messages(self, messages: Sequence[Message]) -> None:
        """Publish a batch concurrently, in order, and wait for every confirm.

        Raises PublishError when RabbitMQ refuses a message (nack), returns
        it (no queue bound for it, with `mandatory`), or does not confirm it
        within `publish_timeout`. A publish caught by a lost connection is sent
        again once the connection is back, so RabbitMQ may get it twice (with
        the same message id).
        """
        if messages:
            batch = [self._outgoing(message) for message in messages]
            await self._publish(self.exchange, batch, redeclare_on_return=not self.mandatory)

    async def _publish(
        self, exchange: str, outgoing: list[Outgoing], *, redeclare_on_return: bool
    ) -> None:
        await self._publisher.publish(
            exchange,
            outgoing,
            timeout=self.publish_timeout,
            mandatory=self.mandatory,
            redeclare_on_return=redeclare_on_return,
        )

    async def _publish_dead_letter(
        self, record: DeadLetterRecord, original: DeliveredMessage
    ) -> None:
        copy = dead_letter_copy(record, original.header.properties, original.routing_key or "")
        await self._publish(self.dead_letter_exchange, [copy], redeclare_on_return=True)

    # -- subscribe -----------------------------------------------------------

    async def subscribe(self, pattern: str, *, group: str | None = None) -> RabbitMQSubscription:
        """Consume the messages whose channel matches `pattern`: from the
        group's quorum queue ``{prefix}.{group}`` (declared and bound to the
        pattern's `binding_key`), or from an exclusive queue of its own
        without a group. Returns once the queue is bound: a group's queue keeps
        what it is sent from then on, and is consumed from the first read."""
        if group is not None:
            self._layout.check_group(group)
        key = binding_key(pattern, self.channel_prefix)
        subscription = RabbitMQSubscription(self, pattern, group, key)
        if group is not None:
            self._groups.join(subscription, group)
        try:
            with ERRORS.mapped(
                f"subscribing to {quote(pattern, 200)} on RabbitMQ", BrokerUnavailableError
            ):
                await subscription.open()
        except BaseException:
            await subscription.close()
            raise
        return subscription

    # -- dead letters --------------------------------------------------------

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetterRecord]:
        """Up to `limit` (default `dead_letter_limit`) records of the queue
        ``{prefix}.dead-letter``, oldest first; they stay in the queue.

        ```python
        for record in await broker.dead_letters():
            print(record.reason, record.description, record.size)
        ```
        """
        return await read_queue(
            self._ready,
            self.dead_letter_queue,
            limit=self.dead_letter_limit if limit is None else limit,
            timeout=self.connect_timeout,
            record=self._record,
        )

    async def unroutable(self, *, limit: int | None = None) -> list[DeadLetterRecord]:
        """Up to `limit` (default `dead_letter_limit`) records, reason
        "unroutable", of the messages no queue was bound for, oldest first;
        they stay in the queue ``{prefix}.unroutable``."""
        return await read_queue(
            self._ready,
            self.unroutable_queue,
            limit=self.dead_letter_limit if limit is None else limit,
            timeout=self.connect_timeout,
            record=self._unroutable_record,
        )

    async def unroutable_count(self) -> int:
        """How many messages the queue ``{prefix}.unroutable`` holds."""
        return await count_queue(self._ready, self.unroutable_queue, timeout=self.connect_timeout)

    async def replay_dead_letters(
        self, records: Iterable[DeadLetterRecord]
    ) -> AsyncIterator[DeadLetterRecord]:
        """Publish each of `records` again, with its routing key, message id
        and headers, to the exchange; once RabbitMQ confirmed the publish,
        acknowledge it off ``{prefix}.dead-letter`` and yield it. The queue is
        walked once, in order; records no longer there are skipped."""
        whole = replayable(records)

        async def publish(message: DeliveredMessage, record: DeadLetterRecord) -> None:
            copy = replayed_copy(message, record)
            await self._publish(self.exchange, [copy], redeclare_on_return=True)

        async for record in take_from_queue(
            self._ready,
            self.dead_letter_queue,
            [record.id for record in whole],
            timeout=self.connect_timeout,
            record=self._record,
            before_ack=publish,
        ):
            yield record

    async def purge_dead_letters(self, records: Iterable[DeadLetterRecord]) -> int:
        """Acknowledge `records` off ``{prefix}.dead-letter``; how many were there."""
        removed = 0
        async for _ in take_from_queue(
            self._ready,
            self.dead_letter_queue,
            [record.id for record in records],
            timeout=self.connect_timeout,
            record=self._record,
        ):
            removed += 1
        return removed

    def _record(self, message: DeliveredMessage) -> DeadLetterRecord:
        channel = self._layout.channel(message.routing_key or "")
        properties = message.header.properties
        return record_of(properties.headers or {}, message.body, channel, properties.message_id)

    def _unroutable_record(self, message: DeliveredMessage) -> DeadLetterRecord:
        key = message.routing_key or ""
        return unroutable_record(
            message.body,
            key,
            self._layout.channel(key),
            self.exchange,
            message.header.properties.message_id,
        )

    # -- lifecycle -----------------------------------------------------------

    async def _close(self) -> None:
        await self._publisher.close()

    async def _close_client(self) -> None:
        connection, self._connection = self._connection, None
        self._topology.forget()
        if connection is not None:
            await connection.close()


def _safe(url: str) -> str:
    """`url` with its password masked, for an error message."""
    parsed = URL(url)
    return str(parsed.with_password("***") if parsed.password else parsed)
