"""RabbitMQMessageBroker against the real server: the wire layout other
programs see, patterns as the glob means them, faults, publish errors.

The transport-independent behaviour (consumer, compliance) runs on RabbitMQ
through tests/transports.py; this file holds what is RabbitMQ's own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiormq
import attrs
import orjson
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aiormq.exceptions import ChannelInvalidStateError

from brokers.rabbitmq import RabbitMQMessageBroker
from mediator import (
    BrokerUnavailableError,
    CredentialError,
    DomainEvent,
    EventConsumer,
    EventEmitter,
    EventMap,
    FailFast,
    MessageCodec,
    NotificationEvent,
    PublishError,
    SubscriptionLostError,
    correlation_scope,
    event_name,
)
from mediator.testing import wait_until
from mediator.transport import GlobPattern, encode_message
from tests.rabbitmq_support import (
    amqp_url,
    close_connections,
    connect,
    delete_everything,
    policy,
    watching_reconnects,
)


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class OrderPaid(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class OrderX(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class UserJoined(NotificationEvent):
    user_id: int


@attrs.frozen(kw_only=True)
class OrderShipped(NotificationEvent, name="Order.Shipped"):
    order_id: int


@attrs.frozen(kw_only=True)
class CustomerState(NotificationEvent):
    customer_id: int


@attrs.frozen(kw_only=True)
class Audited(DomainEvent):
    order_id: int


ALL_EVENTS = [
    OrderPlaced(order_id=1),
    OrderPaid(order_id=2),
    OrderX(order_id=3),
    UserJoined(user_id=4),
    OrderShipped(order_id=5),
]


class Names:
    """The exchanges and queues a test declares, deleted afterwards."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.groups: set[str] = set()

    def queues(self) -> list[str]:
        return [f"{self.prefix}.{g}" for g in sorted(self.groups)] + [f"{self.prefix}.dead-letter"]

    def exchanges(self) -> list[str]:
        return [self.prefix, f"{self.prefix}.dead-letter"]


@pytest.fixture
async def names() -> AsyncIterator[Names]:
    names = Names(f"mtk-r{uuid.uuid4().hex[:8]}")
    yield names
    connection = await connect(f"{names.prefix}-cleanup")
    try:
        await delete_everything(connection, names.exchanges(), names.queues())
    finally:
        await connection.close()


@pytest.fixture
async def connection(names: Names) -> AsyncIterator[AbstractRobustConnection]:
    connection = await connect(names.prefix)
    yield connection
    await connection.close()


def new_broker(connection: AbstractRobustConnection, names: Names) -> RabbitMQMessageBroker:
    return RabbitMQMessageBroker(connection, channel_prefix=names.prefix, connect_timeout=30)


# -- what other programs see -------------------------------------------------------


async def test_a_raw_consumer_bound_with_hash_receives_the_envelope_and_its_properties(
    connection: AbstractRobustConnection, names: Names
) -> None:
    async with new_broker(connection, names) as broker:
        channel = await connection.channel()
        exchange = await channel.get_exchange(names.prefix)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, "#")
        received: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        await queue.consume(received.put, no_ack=True)

        event = OrderPlaced(order_id=7)
        with correlation_scope("checkout-7"):
            await EventEmitter(message_broker=broker).emit(event)
        async with asyncio.timeout(10):
            message = await received.get()
        await channel.close()

    expected = MessageCodec.to_message(event, {"correlation_id": "checkout-7"})
    assert message.body == encode_message(expected)
    assert orjson.loads(message.body) == {
        "message_type": "notification_event",
        "message_name": "OrderPlaced",
        "message_id": str(event.event_id),
        "payload": {
            "event_id": str(event.event_id),
            "event_timestamp": event.event_timestamp.isoformat(),
            "order_id": 7,
        },
        "headers": {"correlation_id": "checkout-7"},
    }
    assert message.exchange == names.prefix
    assert message.routing_key == "notification_event.OrderPlaced"
    assert message.message_id == str(event.event_id)
    assert message.content_type == "application/json"
    assert message.type == "OrderPlaced"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.headers == {"correlation_id": "checkout-7"}


async def test_a_group_queue_is_a_durable_quorum_queue_that_keeps_messages_while_nobody_reads(
    connection: AbstractRobustConnection, names: Names
) -> None:
    names.groups.add("billing")
    seen: list[int] = []
    events = EventMap()

    @events.bind(OrderPlaced)
    async def record(event: OrderPlaced) -> None:
        seen.append(event.order_id)

    glob = f"{names.prefix}:notification_event:Order*"
    async with new_broker(connection, names) as broker:
        first = EventConsumer(broker=broker, event_map=events)
        await first.subscribe(glob, group="billing")
        async with first:
            pass  # declared, bound; then the service stops
        await EventEmitter(message_broker=broker).emit_all(
            [OrderPlaced(order_id=n) for n in (1, 2)]
        )
        again = EventConsumer(broker=broker, event_map=events)
        await again.subscribe(glob, group="billing")
        async with again:
            await wait_until(again, lambda s: s.handled >= 2, timeout=10)

    assert sorted(seen) == [1, 2]
    queue, arguments = (
        f"{names.prefix}.billing",
        {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": f"{names.prefix}.dead-letter",
        },
    )
    async with connection.channel() as channel:
        # Declaring it again with the same settings is accepted: it is that queue.
        await channel.declare_queue(queue, durable=True, arguments=arguments, robust=False)
    async with connection.channel() as channel:
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed, match="x-queue-type"):
            await channel.declare_queue(
                queue,
                durable=True,
                arguments={**arguments, "x-queue-type": "classic"},
                robust=False,
            )


# -- patterns (binding keys without a server: test_rabbitmq_naming.py) ------------

GLOBS = [
    "{p}:notification_event:Order*",
    "{p}:notification_event:Order?",
    "{p}:*:Order?",
    "{p}:notification_event:OrderPlaced",
    "{p}:notification_event:Order.*",
    "{p}:notification_event:[OU]*[dr]",
    "{p}:*",
]


async def settle(consumer: EventConsumer, count: int) -> None:
    await wait_until(consumer, lambda stats: stats.settled >= count, timeout=10)


async def test_each_glob_means_on_rabbitmq_what_it_means_on_redis(
    connection: AbstractRobustConnection, names: Names
) -> None:
    events = EventMap()
    for event_type in {type(e) for e in ALL_EVENTS}:
        events.register(event_type)
    channels = [f"{names.prefix}:notification_event:{event_name(type(e))}" for e in ALL_EVENTS]
    patterns = [glob.format(p=names.prefix) for glob in GLOBS]
    expected = {p: [c for c in channels if GlobPattern(p).matches(c)] for p in patterns}
    received: dict[str, list[str]] = {p: [] for p in patterns}
    async with new_broker(connection, names) as broker:
        consumers = {p: EventConsumer(broker=broker, event_map=events) for p in patterns}
        for pattern, consumer in consumers.items():
            consumer.add_listener(
                lambda settled, into=received[pattern]: into.append(settled.channel)
            )
            await consumer.subscribe(pattern)
            await consumer.start()
        try:
            # Twice: whatever the first batch put on a subscription's queue was
            # taken before the last of the second, so nothing extra hides.
            emitter = EventEmitter(message_broker=broker)
            await emitter.emit_all(ALL_EVENTS)
            await emitter.emit_all(ALL_EVENTS)
            for pattern, consumer in consumers.items():
                await settle(consumer, 2 * len(expected[pattern]))
        finally:
            for consumer in consumers.values():
                await consumer.stop()
        assert await broker.dead_letters() == []
    for pattern in patterns:
        assert Counter(received[pattern]) == Counter(expected[pattern] * 2), pattern
    order = f"{names.prefix}:notification_event:Order"
    assert expected[patterns[0]] == [
        f"{order}Placed",
        f"{order}Paid",
        f"{order}X",
        f"{order}.Shipped",
    ]
    assert expected[patterns[2]] == [f"{order}X"]  # {p}:*:Order?
    # Bound as "notification_event.#" or "#", the rest were delivered and
    # acknowledged without a handler: counted, never dead-lettered.
    assert broker.unmatched > 0


async def test_the_subscriptions_of_a_group_share_its_queue_and_split_it_by_glob(
    connection: AbstractRobustConnection, names: Names
) -> None:
    names.groups.add("billing")
    orders: list[int] = []
    users: list[int] = []
    events = EventMap()

    @events.bind(OrderPlaced)
    async def order(event: OrderPlaced) -> None:
        orders.append(event.order_id)

    @events.bind(UserJoined)
    async def user(event: UserJoined) -> None:
        users.append(event.user_id)

    async with new_broker(connection, names) as broker:
        consumer = EventConsumer(broker=broker, event_map=events)
        await consumer.subscribe(f"{names.prefix}:notification_event:Order*", group="billing")
        await consumer.subscribe(f"{names.prefix}:notification_event:User*", group="billing")
        async with consumer:
            await EventEmitter(message_broker=broker).emit_all(
                [
                    CustomerState(customer_id=1),  # bound by notification_event.#, matches neither
                    *(OrderPlaced(order_id=n) for n in range(20)),
                    *(UserJoined(user_id=n) for n in range(20)),
                ]
            )
            # First in the queue: acknowledged unmatched before anything after it.
            await wait_until(consumer, lambda s: s.handled >= 40, timeout=10)
        dead = await broker.dead_letters()

    assert sorted(orders) == list(range(20))  # each once, whichever channel took it
    assert sorted(users) == list(range(20))
    assert consumer.stats.handled == 40
    assert broker.unmatched == 1
    assert dead == []


async def test_a_pattern_dropped_from_a_group_is_acknowledged_counted_and_said(
    connection: AbstractRobustConnection, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    """Bindings stay (other members may need them, and AMQP cannot list
    them), so the group's queue still gets a dropped pattern's messages. As
    the design fixes, one that matches no subscription is acknowledged and
    counted, never dead-lettered; it is also said once, with the binding to
    remove, so that it does not vanish unseen."""
    names.groups.add("ledger")
    events = EventMap()
    events.register(OrderPlaced)
    events.register(UserJoined)
    orders = f"{names.prefix}:notification_event:OrderPlaced"
    users = f"{names.prefix}:notification_event:UserJoined"
    said = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "acknowledged unhandled" in record.getMessage():
                said.set()

    watch = Watch(logging.WARNING)
    logging.getLogger("mediator.brokers.rabbitmq").addHandler(watch)
    try:
        async with new_broker(connection, names) as broker:
            first = EventConsumer(broker=broker, event_map=events)
            await first.subscribe(orders, group="ledger")
            await first.subscribe(users, group="ledger")
            async with first:
                pass  # both bound; then the service is deployed again without users
            again = EventConsumer(broker=broker, event_map=events)
            await again.subscribe(orders, group="ledger")
            async with again:
                # Routed to the group's queue by the binding the users pattern left.
                await EventEmitter(message_broker=broker).emit(UserJoined(user_id=7))
                async with asyncio.timeout(10):
                    await said.wait()
            assert await broker.dead_letters() == []
    finally:
        logging.getLogger("mediator.brokers.rabbitmq").removeHandler(watch)
    assert broker.unmatched == 1
    [line] = [r.getMessage() for r in caplog.records if "acknowledged unhandled" in r.getMessage()]
    assert "notification_event.UserJoined" in line
    assert orders in line
    assert "unbind it" in line
    assert again.stats.handled == 0


async def test_a_group_restarted_with_a_backlog_hands_each_pattern_its_messages(
    connection: AbstractRobustConnection, names: Names
) -> None:
    names.groups.add("ledger")
    orders: list[int] = []
    users: list[int] = []
    events = EventMap()

    @events.bind(OrderPlaced)
    async def order(event: OrderPlaced) -> None:
        orders.append(event.order_id)

    @events.bind(UserJoined)
    async def user(event: UserJoined) -> None:
        users.append(event.user_id)

    patterns = [
        f"{names.prefix}:notification_event:OrderPlaced",
        f"{names.prefix}:notification_event:UserJoined",
    ]
    async with new_broker(connection, names) as broker:
        first = EventConsumer(broker=broker, event_map=events)
        for pattern in patterns:
            await first.subscribe(pattern, group="ledger")
        async with first:
            pass
        # Waiting in the queue, the later pattern's first: the first
        # subscription opened must not take them before the second exists.
        await EventEmitter(message_broker=broker).emit_all(
            [
                *(UserJoined(user_id=n) for n in range(20)),
                *(OrderPlaced(order_id=n) for n in range(20)),
            ]
        )
        again = EventConsumer(broker=broker, event_map=events)
        for pattern in patterns:
            await again.subscribe(pattern, group="ledger")
        async with again:
            try:
                await wait_until(again, lambda s: s.handled >= 40, timeout=10)
            except TimeoutError:
                pytest.fail(
                    f"handled {again.stats.handled} of 40; {broker.unmatched} acknowledged "
                    f"unmatched, {again.stats.dead_lettered} dead-lettered"
                )
        dead = await broker.dead_letters()

    assert sorted(users) == list(range(20))
    assert sorted(orders) == list(range(20))
    assert broker.unmatched == 0
    assert dead == []


# -- faults ------------------------------------------------------------------------


async def test_a_connection_closed_by_the_server_mid_stream_loses_nothing_on_a_group_queue(
    connection: AbstractRobustConnection, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    names.groups.add("stream")
    caplog.set_level(logging.WARNING)
    counts: Counter[int] = Counter()
    progressed = asyncio.Event()
    events = EventMap()

    @events.bind(OrderPlaced)
    async def handle(event: OrderPlaced) -> None:
        counts[event.order_id] += 1
        if len(counts) >= 150:
            progressed.set()

    total = 600
    async with new_broker(connection, names) as broker:
        consumer = EventConsumer(broker=broker, event_map=events)
        await consumer.subscribe(f"{names.prefix}:notification_event:*", group="stream")
        async with consumer, watching_reconnects("mediator.brokers.rabbitmq") as back:

            async def produce() -> None:
                emitter = EventEmitter(message_broker=broker)
                for start in range(0, total, 20):
                    await emitter.emit_all(
                        [OrderPlaced(order_id=n) for n in range(start, start + 20)]
                    )

            producer = asyncio.create_task(produce())
            async with asyncio.timeout(30):
                await progressed.wait()
            assert await close_connections(names.prefix) == 1
            async with asyncio.timeout(30):
                await back.wait()
                await producer
            await wait_until(consumer, lambda s: len(counts) >= total, timeout=30)
            assert consumer.running
    lost = set(range(total)) - counts.keys()
    duplicates = sum(n - 1 for n in counts.values())
    print(f"connection closed mid-stream: {total} sent, lost {len(lost)}, duplicates {duplicates}")
    assert lost == set()
    assert any("is back after" in r.getMessage() for r in caplog.records)


async def test_a_delivery_in_flight_when_its_channel_dies_is_not_settled_on_the_new_one(
    connection: AbstractRobustConnection, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    names.groups.add("inflight")
    caplog.set_level(logging.WARNING)
    entered = asyncio.Event()
    gate = asyncio.Event()
    deliveries: list[int] = []
    events = EventMap()

    @events.bind(OrderPlaced)
    async def handle(event: OrderPlaced) -> None:
        deliveries.append(event.order_id)
        if len(deliveries) == 1:
            entered.set()
            await gate.wait()

    async with new_broker(connection, names) as broker:
        consumer = EventConsumer(broker=broker, event_map=events)
        await consumer.subscribe(f"{names.prefix}:notification_event:*", group="inflight")
        async with consumer, watching_reconnects("mediator.brokers.rabbitmq") as back:
            await EventEmitter(message_broker=broker).emit(OrderPlaced(order_id=1))
            async with asyncio.timeout(10):
                await entered.wait()
            await close_connections(names.prefix)
            async with asyncio.timeout(30):
                await back.wait()
            gate.set()  # the handler finishes; its ack belongs to the dead channel
            await wait_until(consumer, lambda s: s.handled >= 2, timeout=30)
            await EventEmitter(message_broker=broker).emit(OrderPlaced(order_id=2))
            await wait_until(consumer, lambda s: s.handled >= 3, timeout=10)
            assert consumer.running
    # Delivered again (RabbitMQ put it back), and the ack on the new channel
    # never took another message's tag: order 2 arrived and was handled once.
    assert deliveries == [1, 1, 2]
    assert any("could not acknowledge" in r.getMessage() for r in caplog.records)


async def test_a_poison_message_reaches_the_dead_letter_queue_with_quorum_delivery_counts(
    connection: AbstractRobustConnection, names: Names
) -> None:
    names.groups.add("audit")

    async def handle(event: OrderPlaced) -> list[Audited]:
        return [Audited(order_id=event.order_id)]

    async def audit(event: Audited) -> None:
        raise RuntimeError("the audit store refuses it every time")

    events = EventMap()
    events.bind(OrderPlaced, handle)
    events.bind(Audited, audit, policy=FailFast())  # the consumer releases the delivery
    async with new_broker(connection, names) as broker:
        consumer = EventConsumer(broker=broker, event_map=events, max_deliveries=4)
        await consumer.subscribe(f"{names.prefix}:notification_event:*", group="audit")
        async with consumer:
            await EventEmitter(message_broker=broker).emit(OrderPlaced(order_id=5))
            await wait_until(consumer, lambda s: s.dead_lettered >= 1, timeout=30)
        [record] = await broker.dead_letters()
        assert await broker.dead_letters() == [record]  # read back, still there

        async with connection.channel() as channel:
            queue = await channel.get_queue(broker.dead_letter_queue)
            raw = await queue.get(no_ack=False)
            assert raw is not None
            headers = dict(raw.headers)
            await raw.nack(requeue=True)

    assert consumer.stats.released == 3
    assert record.reason == "too_many_deliveries"
    assert record.delivery_count == 4  # quorum x-delivery-count, plus the first
    assert record.channel == f"{names.prefix}:notification_event:OrderPlaced"
    assert orjson.loads(record.data)["payload"]["order_id"] == 5
    assert headers["dead_letter_reason"] == "too_many_deliveries"
    assert "audit store refuses" in str(headers["dead_letter_description"])
    assert raw.message_id is not None
    assert raw.type == "OrderPlaced"


# -- settling under cancellation ----------------------------------------------------


class StuckSettlement:
    """Stands in for an aiormq channel command (``basic_ack``, ``basic_nack``,
    ``basic_publish``): holds until it is cancelled, then fails as
    `reported_as` says (aiormq raises the CancelledError, or its channel's
    error when the channel closes under the command)."""

    def __init__(self, reported_as: type[BaseException] = asyncio.CancelledError) -> None:
        self.reported_as = reported_as
        self.entered = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []

    async def __call__(self, *args: object, **kwargs: object) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if self.reported_as is asyncio.CancelledError:
                raise
            raise self.reported_as("the channel closed under the command") from None


@pytest.mark.parametrize("reported_as", [asyncio.CancelledError, ChannelInvalidStateError])
@pytest.mark.parametrize("verb", ["ack", "release", "dead_letter"])
async def test_a_settlement_stuck_past_its_timeout_raises_the_timeout(
    connection: AbstractRobustConnection,
    names: Names,
    monkeypatch: pytest.MonkeyPatch,
    verb: str,
    reported_as: type[BaseException],
) -> None:
    names.groups.add("stuck")
    stuck = StuckSettlement(reported_as)
    async with new_broker(connection, names) as broker:
        subscription = await broker.subscribe(f"{names.prefix}:notification_event:*", group="stuck")
        await EventEmitter(message_broker=broker).emit(OrderPlaced(order_id=1))
        async with asyncio.timeout(10):
            delivery = await anext(aiter(subscription))
        monkeypatch.setattr(delivery.message.channel, "basic_ack", stuck)
        monkeypatch.setattr(delivery.message.channel, "basic_nack", stuck)
        settle = {
            "ack": delivery.ack,
            "release": delivery.release,
            "dead_letter": functools.partial(delivery.dead_letter, "rejected", "refused"),
        }[verb]

        async def expire_once_stuck(timeout: asyncio.Timeout) -> None:
            await stuck.entered.wait()
            timeout.reschedule(asyncio.get_running_loop().time())

        async def settle_within_timeout() -> None:
            # The timeout fires exactly while the settlement hangs.
            async with asyncio.timeout(None) as timeout:
                expiring = asyncio.create_task(expire_once_stuck(timeout))
                try:
                    await settle()
                finally:
                    expiring.cancel()

        with pytest.raises(TimeoutError):
            await settle_within_timeout()
        assert stuck.entered.is_set()


@pytest.mark.parametrize("reported_as", [asyncio.CancelledError, ChannelInvalidStateError])
async def test_a_dead_letter_cancelled_while_publishing_raises_the_cancellation(
    connection: AbstractRobustConnection,
    names: Names,
    monkeypatch: pytest.MonkeyPatch,
    reported_as: type[BaseException],
) -> None:
    names.groups.add("stuck")
    stuck = StuckSettlement(reported_as)
    broker = RabbitMQMessageBroker(
        connection, channel_prefix=names.prefix, connect_timeout=30, publish_timeout=3
    )
    async with broker:
        subscription = await broker.subscribe(f"{names.prefix}:notification_event:*", group="stuck")
        await EventEmitter(message_broker=broker).emit(OrderPlaced(order_id=1))
        async with asyncio.timeout(10):
            delivery = await anext(aiter(subscription))
        monkeypatch.setattr(aiormq.Channel, "basic_publish", stuck)
        dead_letter = asyncio.create_task(delivery.dead_letter("rejected", "refused"))
        async with asyncio.timeout(10):
            await stuck.entered.wait()
        dead_letter.cancel()
        await asyncio.wait([dead_letter])
        assert dead_letter.cancelled()


async def test_a_dead_letter_that_cannot_be_written_raises_and_leaves_the_delivery_releasable(
    connection: AbstractRobustConnection, names: Names
) -> None:
    names.groups.add("refusing")
    async with new_broker(connection, names) as broker:
        subscription = await broker.subscribe(
            f"{names.prefix}:notification_event:*", group="refusing"
        )
        await EventEmitter(message_broker=broker).emit(OrderPlaced(order_id=1))
        async with asyncio.timeout(10):
            delivery = await anext(aiter(subscription))
        # The dead-letter queue refuses every message (basic.nack to the publisher).
        async with policy(
            f"{names.prefix}-refuse",
            f"^{re.escape(broker.dead_letter_queue)}$",
            {"max-length": 0, "overflow": "reject-publish"},
            apply_to="queues",
        ):
            with pytest.raises(PublishError, match="could not dead-letter") as raised:
                await delivery.dead_letter("rejected", "refused by the test")
        assert "nack" in str(raised.value)
        assert delivery.settled is None  # not settled: the consumer releases it itself
        await delivery.release()
        async with asyncio.timeout(10):
            again = await anext(aiter(subscription))
        assert (again.data, again.delivery_count) == (delivery.data, 2)
        await again.ack()
        assert await broker.dead_letters() == []


async def test_a_consumer_stopped_while_an_ack_hangs_does_not_count_it_handled(
    connection: AbstractRobustConnection, names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    names.groups.add("hang")
    stuck = StuckSettlement()
    monkeypatch.setattr(aiormq.Channel, "basic_ack", stuck)
    settled: list[str] = []
    events = EventMap()

    @events.bind(OrderPlaced)
    async def handle(event: OrderPlaced) -> None:
        pass

    async with new_broker(connection, names) as broker:
        consumer = EventConsumer(broker=broker, event_map=events, drain_timeout=0.1)
        consumer.add_listener(lambda s: settled.append(s.outcome))
        await consumer.subscribe(f"{names.prefix}:notification_event:*", group="hang")
        async with consumer:
            await EventEmitter(message_broker=broker).emit(OrderPlaced(order_id=1))
            async with asyncio.timeout(10):
                await stuck.entered.wait()
        # Stopping cancelled the ack: not handled, RabbitMQ delivers it again.
    assert consumer.stats.handled == 0
    assert settled == []


async def test_an_unmatched_delivery_whose_ack_is_cancelled_is_not_counted(
    connection: AbstractRobustConnection, names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    names.groups.add("unmatched")
    stuck = StuckSettlement()
    monkeypatch.setattr(aiormq.Channel, "basic_ack", stuck)
    async with new_broker(connection, names) as broker:
        # Bound as notification_event.#: CustomerState arrives and matches no glob.
        subscription = await broker.subscribe(
            f"{names.prefix}:notification_event:Order*", group="unmatched"
        )
        reading = asyncio.ensure_future(anext(aiter(subscription)))  # consumes from the first read
        await EventEmitter(message_broker=broker).emit(CustomerState(customer_id=1))
        async with asyncio.timeout(10):
            await stuck.entered.wait()
        [acking] = stuck.tasks
        acking.cancel()
        await asyncio.wait([acking])
        assert acking.cancelled()
        assert broker.unmatched == 0
        reading.cancel()
        await asyncio.wait([reading])


# -- publish errors ------------------------------------------------------------------


async def test_a_message_no_queue_is_bound_for_is_kept_in_the_unroutable_queue(
    connection: AbstractRobustConnection, names: Names
) -> None:
    async with new_broker(connection, names) as broker:
        message = MessageCodec.to_message(UserJoined(user_id=1))
        await broker.send_message(message)  # a producer deployed before its consumers
        # Confirmed, so it is in the queue by now.
        assert await broker.unroutable_count() == 1
        [record] = await broker.unroutable()
        assert await broker.unroutable() == [record]  # read back, still there
        assert await broker.dead_letters() == []

    assert record.reason == "unroutable"
    assert record.channel == f"{names.prefix}:notification_event:UserJoined"
    assert record.data == encode_message(message)
    assert "notification_event.UserJoined" in record.description
    assert record.delivery_count == 1


async def test_a_mandatory_publisher_is_told_that_no_queue_is_bound(
    connection: AbstractRobustConnection, names: Names
) -> None:
    message = MessageCodec.to_message(UserJoined(user_id=1))
    async with (
        new_broker(connection, names) as broker,
        RabbitMQMessageBroker(connection, channel_prefix=names.prefix, mandatory=True) as strict,
    ):
        # The same exchange, with its alternate exchange: this publisher still hears.
        with pytest.raises(PublishError, match="no queue is bound") as raised:
            await strict.send_message(message)
        assert "notification_event.UserJoined" in str(raised.value)
        assert "Start a consumer of it first" in str(raised.value)
        assert await broker.unroutable_count() == 0  # returned, not kept

        async with connection.channel() as channel:
            queue = await channel.declare_queue(exclusive=True)
            await queue.bind(names.prefix, "#")
            received: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
            await queue.consume(received.put, no_ack=True)
            await strict.send_message(message)
            async with asyncio.timeout(10):
                delivered = await received.get()
    # What marks it mandatory for RabbitMQ's routing never reaches a consumer.
    assert delivered.headers == {}
    assert delivered.body == encode_message(message)


async def test_an_exchange_declared_without_an_alternate_exchange_is_used_and_says_how_to_add_one(
    connection: AbstractRobustConnection, names: Names
) -> None:
    async with connection.channel() as channel:
        # As an earlier version declared it; RabbitMQ refuses to redeclare it otherwise.
        await channel.declare_exchange(names.prefix, aio_pika.ExchangeType.TOPIC, durable=True)
    message = MessageCodec.to_message(UserJoined(user_id=1))
    async with new_broker(connection, names) as broker:
        with pytest.raises(PublishError, match="no alternate exchange") as raised:
            await broker.send_message(message)
        exchange = re.escape(names.prefix).replace("\\-", "-")
        command = (
            f"rabbitmqctl set_policy {names.prefix}-unroutable '^{exchange}$' "
            f'\'{{"alternate-exchange":"{names.prefix}.unroutable"}}\' --apply-to exchanges'
        )
        assert command in str(raised.value)
        async with policy(
            f"{names.prefix}-unroutable",
            f"^{exchange}$",
            {"alternate-exchange": f"{names.prefix}.unroutable"},
            apply_to="exchanges",
        ):
            await broker.send_message(message)
            [record] = await broker.unroutable()
    assert record.reason == "unroutable"
    assert record.data == encode_message(message)


async def test_an_unroutable_queue_deleted_under_the_broker_is_declared_again(
    connection: AbstractRobustConnection, names: Names
) -> None:
    async with new_broker(connection, names) as broker:
        message = MessageCodec.to_message(UserJoined(user_id=1))
        await broker.send_message(message)
        async with connection.channel() as channel:
            await channel.queue_delete(broker.unroutable_queue)
        # Returned (the alternate exchange leads nowhere now): declared again, sent again.
        await broker.send_message(message)
        assert await broker.unroutable_count() == 1


async def test_a_refused_message_is_a_publish_error(
    connection: AbstractRobustConnection, names: Names
) -> None:
    async with new_broker(connection, names) as broker, connection.channel() as channel:
        full = await channel.declare_queue(
            exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
        )
        await full.bind(names.prefix, "#")
        await broker.send_message(MessageCodec.to_message(UserJoined(user_id=1)))
        with pytest.raises(PublishError, match="nack"):
            await broker.send_messages(
                [MessageCodec.to_message(UserJoined(user_id=n)) for n in (2, 3)]
            )


async def test_publishing_on_a_closed_connection_is_a_publish_error(names: Names) -> None:
    connection = await connect(names.prefix)
    broker = new_broker(connection, names)
    await broker.start()
    await connection.close()
    with pytest.raises(PublishError, match="closed by its owner"):
        await broker.send_message(MessageCodec.to_message(UserJoined(user_id=1)))
    await broker.stop()


# -- lifecycle and bad arguments -------------------------------------------------------


async def test_from_url_owns_its_connection_and_closes_it(names: Names) -> None:
    broker = RabbitMQMessageBroker.from_url(amqp_url(), names.prefix, prefetch=4)
    assert broker.owns_client
    async with broker:
        connection = broker.connection
        assert not connection.is_closed
        assert broker.prefetch == 4
    assert connection.is_closed


@pytest.mark.parametrize(("query", "heartbeat"), [("", 15), ("?heartbeat=5", 5)])
async def test_from_url_notices_a_silent_connection_within_about_45_seconds(
    names: Names, query: str, heartbeat: int
) -> None:
    """A connection that goes silent (a network partition) is noticed by its
    heartbeat: aiormq gives up after 3 x (heartbeat + 1) s without a frame.
    RabbitMQ proposes 60 s (3 minutes to notice); from_url asks for 15 s
    unless the URL names one."""
    broker = RabbitMQMessageBroker.from_url(amqp_url() + query, names.prefix)
    async with broker:
        negotiated = broker.connection.transport.connection.heartbeat_timeout
    assert negotiated == heartbeat


async def test_a_plain_connection_is_refused_with_what_to_use(names: Names) -> None:
    connection = await aio_pika.connect(amqp_url())
    try:
        with pytest.raises(TypeError, match="connect_robust"):
            RabbitMQMessageBroker(connection, channel_prefix=names.prefix)  # type: ignore[arg-type]
    finally:
        await connection.close()


async def test_unreachable_and_refused_servers_are_the_librarys_errors() -> None:
    with pytest.raises(BrokerUnavailableError, match="connecting to RabbitMQ"):
        await RabbitMQMessageBroker.from_url(
            "amqp://guest:guest@127.0.0.1:1/", "mtk-unreachable", connect_timeout=2
        ).start()
    url = amqp_url().replace("guest:guest@", "guest:wrong-password@")
    with pytest.raises(CredentialError, match="user and password"):
        await RabbitMQMessageBroker.from_url(url, "mtk-refused", connect_timeout=5).start()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channel_prefix": ""}, "non-empty"),
        ({"channel_prefix": "amq.shop"}, "reserved"),
        ({"prefetch": 0}, "at least 1"),
        ({"dead_letter_limit": 0}, "at least 1"),
    ],
)
async def test_bad_settings_say_what_to_change(
    connection: AbstractRobustConnection, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        RabbitMQMessageBroker(connection, **kwargs)  # type: ignore[arg-type]


async def test_bad_subscriptions_say_what_to_change(
    connection: AbstractRobustConnection, names: Names
) -> None:
    broker = new_broker(connection, names)
    for own in ("dead-letter", "unroutable"):
        with pytest.raises(ValueError, match="neither 'dead-letter' nor 'unroutable'"):
            await broker.subscribe(f"{names.prefix}:*", group=own)
    with pytest.raises(ValueError, match="can match no channel"):
        await broker.subscribe("elsewhere:*")
    await broker.stop()


async def dead_lettered(consumer: EventConsumer, count: int) -> None:
    await wait_until(consumer, lambda stats: stats.dead_lettered >= count, timeout=10)


async def test_dead_letters_read_back_oldest_first_and_stay(
    connection: AbstractRobustConnection, names: Names
) -> None:
    names.groups.add("intake")
    events = EventMap()
    events.register(OrderPlaced)
    async with new_broker(connection, names) as broker:
        consumer = EventConsumer(broker=broker, event_map=events, max_message_size=1024)
        channel = f"{names.prefix}:notification_event:OrderPlaced"
        await consumer.subscribe(channel, group="intake")
        async with consumer, connection.channel() as amqp:
            exchange = await amqp.get_exchange(names.prefix)
            for count, body in enumerate((b"first", b"[2]", b"x" * 100_000), start=1):
                await exchange.publish(aio_pika.Message(body), "notification_event.OrderPlaced")
                # One at a time: each is dead-lettered before the next arrives.
                await dead_lettered(consumer, count)
        records = await broker.dead_letters()
        again = await broker.dead_letters()

    assert again == records
    assert [r.reason for r in records] == ["not_json", "not_object", "too_large"]
    assert [r.data for r in records[:2]] == [b"first", b"[2]"]
    assert all(r.channel == channel for r in records)
    big = records[2]
    assert (big.size, len(big.data), big.truncated) == (100_000, 65_536, True)


async def test_a_connection_closed_by_its_owner_stops_the_consumer_loudly(
    names: Names,
) -> None:
    connection = await connect(names.prefix)
    events = EventMap()
    events.register(OrderPlaced)
    broker = new_broker(connection, names)
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe(f"{names.prefix}:notification_event:*")
    await consumer.start()
    runner = asyncio.create_task(consumer.run())
    await connection.close()
    with pytest.raises(SubscriptionLostError, match="closed by its owner"):
        async with asyncio.timeout(30):
            await runner
    assert not consumer.running
    await broker.stop()
