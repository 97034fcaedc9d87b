"""NATS JetStream: what the transport-parametrized suites do not show.

The wire layout a raw nats-py client reads, the duplicate window, the
delivery limit (term and a copy to the dead letters, replayed and purged),
in-progress acks under a slow handler, a consumer deleted under a live
subscription, a consumer process and a server killed mid-stream, and an
outbox relay killed between its publish and marking the rows sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest

import brokers
from brokers.nats import NatsMessageBroker, subject_filter
from brokers.nats._naming import Layout, servers_of_url
from mediator import (
    DomainEvent,
    EventConsumer,
    EventEmitter,
    EventMap,
    FailFast,
    MessageCodec,
    NotificationEvent,
    correlation_scope,
)
from mediator.outbox import SENT, OutboxRelay
from mediator.testing import wait_until
from mediator.transport import (
    BrokerUnavailableError,
    EntityNotFoundError,
    GlobPattern,
    PublishError,
    encode_message,
)
from tests.nats_support import (
    RELAY_LEASE,
    Numbered,
    PrivateNats,
    ProcessSettings,
    nats_url,
)
from tests.outbox_support import ROOT, open_database, relayed
from tests.seen import Seen
from tests.transports_nats import NatsTransport


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class Audited(DomainEvent):
    n: int


@attrs.frozen(kw_only=True)
class OrderTaken(NotificationEvent):
    n: int


@attrs.frozen(kw_only=True)
class PaymentTaken(NotificationEvent):
    n: int


@pytest.fixture
async def nats(request: pytest.FixtureRequest) -> AsyncIterator[NatsTransport]:
    transport = NatsTransport(f"mtk-n{uuid.uuid4().hex[:8]}", nats_url(request))
    try:
        yield transport
    finally:
        await transport.close()


# -- names, URLs, refusals (no server) ------------------------------------------------


def test_globs_become_the_narrowest_subject_filter() -> None:
    assert subject_filter("shop:notification_event:OrderPlaced", "shop") == (
        "shop.notification_event.OrderPlaced"
    )
    assert subject_filter("shop:notification_event:Order*", "shop") == "shop.notification_event.>"
    assert subject_filter("shop:notification_event:a.b*", "shop") == "shop.notification_event.a.>"
    assert subject_filter("shop:*", "shop") == "shop.*.>"
    assert subject_filter("sh?p:*", "shop") == "shop.*.>"
    assert subject_filter("shop:*:Order?", "shop") == "shop.*.>"
    assert subject_filter("my.app:ecst_event:*", "my.app") == "my.app.ecst_event.>"
    with pytest.raises(ValueError, match="can match no channel of prefix 'shop'"):
        subject_filter("other:*", "shop")


def _covers(filter_subject: str, subject: str) -> bool:
    """Whether a NATS subject filter matches `subject` (``*`` a word, ``>`` the rest)."""
    wanted, words = filter_subject.split("."), subject.split(".")
    for index, word in enumerate(wanted):
        if word == ">":
            return len(words) > index
        if index >= len(words) or (word != "*" and word != words[index]):
            return False
    return len(words) == len(wanted)


def test_every_channel_a_glob_matches_passes_its_subject_filter() -> None:
    # The rows of the glob specification (tests/test_patterns.py) whose
    # channel is one a NATS broker publishes: the filter never loses one.
    from tests.test_patterns import CASES

    patterns = [
        "shop:notification_event:Order*",
        "shop:notification_event:OrderPlaced",
        "shop:*",
        "shop:*:Order?",
        "shop:notification_event:[OP]*",
        "shop:notification_event:[^O]*",
        "sh?p:*",
        "shop:notification_event:a.b*",
        "shop:ecst_event:*",
        "shop:notification_*:*",
        "shop:notification_event:Order\\*",
    ]
    channels = [
        "shop:notification_event:OrderPlaced",
        "shop:notification_event:Order*",
        "shop:notification_event:PaymentTaken",
        "shop:notification_event:a.b.c",
        "shop:notification_event:a.bc",
        "shop:ecst_event:Customer",
        "shop:notification_event:OrderX",
    ]
    rows = [(p, c, GlobPattern(p).matches(c)) for p in patterns for c in channels]
    assert sum(expected for _, _, expected in rows) >= 15
    checked = 0
    for pattern, channel, expected in [*CASES, *rows]:
        prefix, *rest = channel.split(":", 2)
        if not expected or len(rest) != 2 or not all(rest):
            continue
        try:
            layout = Layout(prefix)
            subject = layout.subject(*rest)
        except (ValueError, PublishError):
            continue
        assert _covers(layout.filter_of(pattern), subject), (pattern, channel)
        checked += 1
    assert checked >= 18


def test_the_layout_maps_channels_to_subjects_and_back() -> None:
    layout = Layout("my.app")
    assert layout.stream == "my_app"
    assert layout.subjects == "my.app.>"
    assert layout.dead_letter_subject == "my.app.dead-letter"
    assert layout.channel("my.app.notification_event.OrderPlaced") == (
        "my.app:notification_event:OrderPlaced"
    )
    assert layout.channel("my.app.dead-letter") is None
    assert layout.durable("billing") == "billing-group"
    with pytest.raises(ValueError, match="cannot start a NATS subject"):
        Layout("shop:eu")
    with pytest.raises(ValueError, match="cannot name a NATS durable consumer"):
        layout.check_group("bill.ing")


def test_from_url_reads_every_server_with_its_credentials() -> None:
    assert servers_of_url("nats://u:p@n1,n2:4223") == ["nats://u:p@n1:4222", "nats://u:p@n2:4223"]
    assert servers_of_url("tls://n1:4443") == ["tls://n1:4443"]
    broker = brokers.from_url(
        "nats://n1:4222,n2:4222?ack_wait=5&duplicate_window=600&name=billing",
        channel_prefix="shop",
    )
    assert isinstance(broker, NatsMessageBroker)
    assert (broker.ack_wait, broker.duplicate_window) == (5.0, 600.0)
    assert broker._connect_options["name"] == "billing"
    assert broker.owns_client
    with pytest.raises(ValueError, match="nats://"):
        servers_of_url("http://n1:4222")


async def test_an_unreachable_server_fails_start_with_the_address() -> None:
    broker = NatsMessageBroker.from_url("nats://127.0.0.1:1", "shop", timeout=1.0)
    with pytest.raises(BrokerUnavailableError, match=r"connecting to NATS at 127\.0\.0\.1:1") as e:
        await broker.start()
    assert "ConnectionRefusedError" in str(e.value)
    assert "check that nats-server runs there" in str(e.value)
    await broker.stop()


# -- the wire --------------------------------------------------------------------------


async def test_a_raw_subscriber_reads_the_envelope_bytes_subject_and_headers(
    nats: NatsTransport,
) -> None:
    from nats.js import api

    broker = nats.broker
    event = OrderPlaced(order_id=7)
    message = MessageCodec.to_message(event)
    with correlation_scope("corr-1"):
        await EventEmitter(message_broker=broker).emit(event)
    js = (await nats.raw()).jetstream()
    info = await js.stream_info(nats.prefix)
    assert info.config.subjects == [f"{nats.prefix}.>"]
    assert info.config.duplicate_window == 120.0
    assert info.config.storage == api.StorageType.FILE
    pull = await js.pull_subscribe(f"{nats.prefix}.>", stream=nats.prefix)
    [got] = await pull.fetch(1, timeout=5)
    assert got.subject == f"{nats.prefix}.notification_event.OrderPlaced"
    assert got.headers == {"Nats-Msg-Id": str(event.event_id), "correlation_id": "corr-1"}
    envelope = attrs.evolve(message, headers={"correlation_id": "corr-1"})
    assert got.data == encode_message(envelope)


async def test_the_duplicate_window_drops_a_second_publish_of_the_same_message(
    nats: NatsTransport,
) -> None:
    seen = Seen()
    events = EventMap()
    events.bind(Numbered, seen)
    consumer = EventConsumer(broker=nats.broker, event_map=events)
    await consumer.subscribe(f"{nats.prefix}:notification_event:*", group="billing")
    message = MessageCodec.to_message(Numbered(n=1))
    publisher = nats.new_broker()
    async with consumer:
        await publisher.send_message(message)
        await publisher.send_messages([message, MessageCodec.to_message(Numbered(n=2))])
        await seen.until({1, 2})
    info = await (await nats.raw()).jetstream().stream_info(nats.prefix)
    assert info.state.messages == 2
    assert seen.counts == {1: 1, 2: 1}


# -- settlement ------------------------------------------------------------------------


async def test_past_the_delivery_limit_a_message_is_terminated_and_copied_to_the_dead_letters(
    nats: NatsTransport,
) -> None:
    calls: list[int] = []

    async def handle(event: Numbered) -> list[Audited]:
        return [Audited(n=event.n)]

    async def audit(event: Audited) -> None:
        calls.append(event.n)
        if len(calls) <= 2:
            raise RuntimeError("the ledger is locked")

    events = EventMap()
    events.bind(Numbered, handle)
    events.bind(Audited, audit, policy=FailFast())  # fails the send: released
    consumer = EventConsumer(broker=nats.broker, event_map=events, max_deliveries=2)
    await consumer.subscribe(f"{nats.prefix}:notification_event:*", group="billing")
    async with consumer:
        await nats.new_broker().send_message(MessageCodec.to_message(Numbered(n=3)))
        await wait_until(consumer, lambda s: s.dead_lettered >= 1, timeout=30)
    assert consumer.stats.released == 1
    [record] = await nats.broker.dead_letters()
    assert (record.reason, record.delivery_count) == ("too_many_deliveries", 2)
    assert record.channel == f"{nats.prefix}:notification_event:Numbered"
    js = (await nats.raw()).jetstream()
    stored = await js.get_msg(nats.prefix, int(record.id))
    assert stored.subject == f"{nats.prefix}.dead-letter"
    durable = nats.broker.durable_for("billing")
    info = await js.consumer_info(nats.prefix, durable)
    assert (info.num_ack_pending, info.num_pending) == (0, 0), "terminated, not redelivered"

    # Replayed: handled (the third call succeeds) and gone from the dead letters.
    consumer = EventConsumer(broker=nats.broker, event_map=events)
    await consumer.subscribe(f"{nats.prefix}:notification_event:*", group="billing")
    async with consumer:
        assert [r.id async for r in nats.broker.replay_dead_letters([record])] == [record.id]
        await wait_until(consumer, lambda s: s.handled >= 1)
    assert calls == [3, 3, 3]
    assert await nats.broker.dead_letters() == []
    assert await nats.broker.purge_dead_letters([record]) == 0


async def test_a_message_whose_handlers_died_past_the_limit_is_dead_lettered_by_its_count(
    nats: NatsTransport,
) -> None:
    # A raw member of the group takes the message and dies without a word:
    # JetStream redelivers it after the ack wait with num_delivered 2.
    glob = f"{nats.prefix}:notification_event:*"
    seen = Seen()
    events = EventMap()
    events.bind(Numbered, seen)
    consumer = EventConsumer(broker=nats.broker, event_map=events, max_deliveries=1)
    await consumer.subscribe(glob, group="billing")
    await (await nats.broker.subscribe(glob, group="billing")).close()  # the durable exists
    js = (await nats.raw()).jetstream()
    thief = await js.pull_subscribe_bind(
        consumer=nats.broker.durable_for("billing"), stream=nats.prefix
    )
    await nats.new_broker().send_message(MessageCodec.to_message(Numbered(n=1)))
    [taken] = await thief.fetch(1, timeout=5)  # before the consumer runs: its to take
    assert taken.metadata.num_delivered == 1
    async with consumer:
        await wait_until(consumer, lambda s: s.dead_lettered >= 1, timeout=30)
    assert seen.counts == {}
    [record] = await nats.broker.dead_letters()
    assert (record.reason, record.delivery_count) == ("too_many_deliveries", 2)


async def test_in_progress_acks_keep_a_slow_handlers_message_from_redelivery(
    nats: NatsTransport,
) -> None:
    ack_wait = nats.broker.ack_wait
    seen = Seen()

    async def slow(event: Numbered) -> None:
        await asyncio.sleep(ack_wait * 3)  # the slowness under test, not a wait
        await seen(event)

    events = EventMap()
    events.bind(Numbered, slow)
    consumer = EventConsumer(broker=nats.broker, event_map=events)
    glob = f"{nats.prefix}:notification_event:*"
    await consumer.subscribe(glob, group="billing")
    async with consumer:
        await nats.new_broker().send_message(MessageCodec.to_message(Numbered(n=1)))
        await seen.until({1})
        await wait_until(consumer, lambda s: s.handled >= 1)
    info = (
        await (await nats.raw())
        .jetstream()
        .consumer_info(nats.prefix, nats.broker.durable_for("billing"))
    )
    assert info.num_redelivered == 0
    assert seen.counts == {1: 1}
    assert consumer.stats.received == 1


# -- groups ----------------------------------------------------------------------------


async def _settled(nats: NatsTransport, group: str) -> None:
    """Wait until the group's consumer has nothing pending or unacknowledged."""
    js = (await nats.raw()).jetstream()
    async with asyncio.timeout(30):
        while True:
            info = await js.consumer_info(nats.prefix, nats.broker.durable_for(group))
            if (info.num_pending, info.num_ack_pending) == (0, 0):
                return
            await asyncio.sleep(0.05)


async def test_a_group_is_one_durable_consumer_shared_by_its_members_and_patterns(
    nats: NatsTransport,
) -> None:
    orders, payments = Seen(), Seen()

    async def order(event: OrderTaken) -> None:
        await orders(Numbered(n=event.n))

    async def payment(event: PaymentTaken) -> None:
        await payments(Numbered(n=event.n))

    events = EventMap()
    events.bind(OrderTaken, order)
    events.bind(PaymentTaken, payment)
    members = [
        EventConsumer(broker=broker, event_map=events)
        for broker in (nats.broker, nats.new_broker())
    ]
    for member in members:
        for name in ("Order*", "Payment*"):
            await member.subscribe(f"{nats.prefix}:notification_event:{name}", group="billing")
    total = 200
    async with members[0], members[1]:
        # Interleaved: each subscription pulls the other pattern's messages
        # too, and hands them over in process.
        await EventEmitter(message_broker=nats.new_broker()).emit_all(
            [OrderTaken(n=n) if n % 2 else PaymentTaken(n=n) for n in range(total)]
        )
        await orders.until(set(range(1, total, 2)))
        await payments.until(set(range(0, total, 2)))
        await _settled(nats, "billing")
    assert orders.counts == dict.fromkeys(range(1, total, 2), 1)
    assert payments.counts == dict.fromkeys(range(0, total, 2), 1)
    assert sum(member.broker.unmatched for member in members) == 0  # type: ignore[attr-defined]
    [info] = await (await nats.raw()).jetstream().consumers_info(nats.prefix)
    assert info.name == nats.broker.durable_for("billing") == "billing-group"
    assert info.config.durable_name == info.name
    assert info.config.filter_subject == f"{nats.prefix}.*.>"
    assert info.num_redelivered == 0


async def test_a_message_no_pattern_of_the_group_matches_is_acknowledged_and_counted(
    nats: NatsTransport, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mediator.brokers.nats")
    orders = Seen()

    async def order(event: OrderTaken) -> None:
        await orders(Numbered(n=event.n))

    events = EventMap()
    events.bind(OrderTaken, order)
    consumer = EventConsumer(broker=nats.broker, event_map=events)
    await consumer.subscribe(f"{nats.prefix}:notification_event:Order*", group="billing")
    async with consumer:
        await EventEmitter(message_broker=nats.new_broker()).emit_all(
            [PaymentTaken(n=1), PaymentTaken(n=2), OrderTaken(n=3)]
        )
        await orders.until({3})
        await _settled(nats, "billing")
        await asyncio.sleep(nats.broker.ack_wait * 1.5)  # past the ack wait: still settled
    info = (
        await (await nats.raw())
        .jetstream()
        .consumer_info(nats.prefix, nats.broker.durable_for("billing"))
    )
    assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (0, 0, 0)
    assert nats.broker.unmatched == 2
    assert consumer.stats.received == 1
    assert await nats.broker.dead_letters() == []
    lines = [r.getMessage() for r in caplog.records if "acknowledged unhandled" in r.getMessage()]
    assert len(lines) == 1, lines  # once per channel
    assert f"{nats.prefix}:notification_event:PaymentTaken" in lines[0]
    assert "group 'billing'" in lines[0]


# -- faults ----------------------------------------------------------------------------


@pytest.mark.parametrize("group", ["billing", None])
async def test_a_consumer_deleted_under_a_live_subscription_is_made_again_losing_nothing(
    nats: NatsTransport, group: str | None
) -> None:
    seen = Seen()
    events = EventMap()
    events.bind(Numbered, seen)
    consumer = EventConsumer(broker=nats.broker, event_map=events)
    await consumer.subscribe(f"{nats.prefix}:notification_event:*", group=group)
    publisher = EventEmitter(message_broker=nats.new_broker())
    async with consumer:
        await publisher.emit(Numbered(n=0))
        await seen.until({0})
        [subscription] = nats.broker._subscriptions
        name = subscription.consumer  # type: ignore[attr-defined]
        await (await nats.raw()).jetstream().delete_consumer(nats.prefix, name)
        # Published while it is gone: read once it is made again, from
        # where the subscription stopped.
        await publisher.emit_all([Numbered(n=n) for n in range(1, 11)])
        await seen.until(set(range(11)))
        assert consumer.running
    assert max(seen.counts.values()) == 1


async def test_a_server_killed_and_restarted_on_its_file_store_loses_nothing(
    tmp_path: Path,
) -> None:
    server = PrivateNats(tmp_path)
    await server.start()
    own = NatsTransport(f"mtk-n{uuid.uuid4().hex[:8]}", server.url)
    try:
        seen = Seen()
        restarted = asyncio.Event()

        async def handle(event: Numbered) -> None:
            if event.n >= 100:
                await restarted.wait()  # in flight while the server dies
            await seen(event)

        events = EventMap()
        events.bind(Numbered, handle)
        members = [
            EventConsumer(broker=broker, event_map=events)
            for broker in (own.broker, own.new_broker())
        ]
        for member in members:
            await member.subscribe(f"{own.prefix}:notification_event:*", group="billing")
        emitter = EventEmitter(message_broker=own.new_broker())
        async with members[0], members[1]:
            await emitter.emit_all([Numbered(n=n) for n in range(200)])
            await seen.until(set(range(100)))
            await server.restart(kill=True)  # SIGKILL: no shutdown of the store
            restarted.set()
            async with asyncio.timeout(30):
                while True:
                    try:
                        await emitter.emit_all([Numbered(n=n) for n in range(200, 300)])
                        break
                    except ConnectionError:
                        await asyncio.sleep(0.05)  # the producer's own retry pause
            await seen.until(set(range(300)), timeout=60)
            assert all(member.running for member in members)
        assert set(range(300)) - seen.counts.keys() == set()
    finally:
        await own.close()
        await server.stop()


async def test_a_group_member_process_killed_mid_stream_loses_nothing(
    nats: NatsTransport, tmp_path: Path
) -> None:
    total = 2_000
    path = tmp_path / "handled.txt"
    settings = ProcessSettings(nats.url, nats.prefix, "killed", str(path), total)
    command = [sys.executable, "-m", "tests.nats_support", "consumer"]

    async def start() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *command,
            json.dumps(attrs.asdict(settings)),
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )

    async def until(process: asyncio.subprocess.Process, wanted: str) -> None:
        assert process.stdout is not None
        async with asyncio.timeout(60):
            while (line := await process.stdout.readline()) and not line.startswith(
                wanted.encode()
            ):
                pass
        assert line, f"the consumer exited before {wanted!r}"

    first = await start()
    try:
        await until(first, "ready")
        await EventEmitter(message_broker=nats.broker).emit_all(
            [Numbered(n=n) for n in range(total)]
        )
        await until(first, "handled")  # mid-stream
        first.kill()  # SIGKILL: no drain, no last ack
        await first.wait()
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
    before = set(map(int, path.read_bytes().split()))
    assert len(before) < total, "killed after the end of the stream"
    second = await start()
    try:
        await until(second, "done")
    finally:
        second.kill()
        await second.wait()
    handled = list(map(int, path.read_bytes().split()))
    assert set(range(total)) - set(handled) == set(), "lost"


async def test_an_outbox_relay_killed_between_publish_and_marking_sent_delivers_once(
    nats: NatsTransport, tmp_path: Path
) -> None:
    db = await open_database("sqlite", tmp_path)
    try:
        seen = Seen()
        events = EventMap()
        events.bind(Numbered, seen)
        consumer = EventConsumer(broker=nats.broker, event_map=events)
        await consumer.subscribe(f"{nats.prefix}:notification_event:*", group="billing")
        emitter = EventEmitter(event_map=EventMap(), message_broker=db.outbox)
        for n in range(5):
            async with db.outbox.unit_of_work():
                await emitter.emit(Numbered(n=n))
        async with consumer:
            dying = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.nats_support", "relay",
                db.url, db.prefix, nats.url, nats.prefix, cwd=ROOT,
            )  # fmt: skip
            assert await asyncio.wait_for(dying.wait(), 60) == -9
            published = set(seen.counts)  # what it published before it died
            await seen.until({0})
            heir = OutboxRelay(db.outbox, nats.new_broker(), lease=RELAY_LEASE, poll_interval=0.05)
            async with heir:
                await relayed(heir, lambda stats: stats.published == 5, timeout=30)
            # The heir published the rows again: JetStream dropped the copies.
            await EventEmitter(message_broker=nats.broker).emit(Numbered(n=99))  # a marker
            await seen.until({*range(5), 99})
        assert await db.outbox.counts() == {"pending": 0, SENT: 5, "dead": 0}
        duplicates = sum(count - 1 for count in seen.counts.values())
        assert duplicates == 0, f"{duplicates} duplicates within the window ({published})"
    finally:
        await db.close()


async def test_publish_failures_say_what_to_check(nats: NatsTransport) -> None:
    strict = nats.new_broker(create_stream=False)
    with pytest.raises(EntityNotFoundError, match="create_stream is False"):
        await strict.start()
    await nats.broker.start()  # makes the stream
    await strict.start()
    await nats.delete_stream()
    message = MessageCodec.to_message(Numbered(n=1))
    with pytest.raises(PublishError, match="no stream captures the subject: check that stream "):
        await strict.send_message(message)
    # The broker that may make the stream makes it again, and publishes.
    await nats.broker.send_message(message)
    bad = attrs.evolve(message, headers={"note": "two\nlines"})
    with pytest.raises(PublishError, match="a value no line break"):
        await nats.broker.send_messages([message, bad])
