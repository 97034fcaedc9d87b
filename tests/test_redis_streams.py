"""Redis Streams specifics: handover of pending entries, poison messages,
lost connections, trimming and where a new group starts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import attrs
import pytest
from redis.asyncio import Redis

from brokers.redis import RedisStreamBroker, RedisStreamDelivery
from mediator import EventConsumer, EventEmitter, EventMap, NotificationEvent


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int


@pytest.fixture
async def client(redis_url: str, key_prefix: str) -> AsyncIterator[Redis]:
    # Named, so a test can find and kill exactly its own connections.
    redis = Redis.from_url(redis_url, client_name=key_prefix)
    yield redis
    await redis.aclose()


def stream_broker(client: Redis, prefix: str, **options: object) -> RedisStreamBroker:
    settings: dict[str, object] = {
        "discovery_interval": 0.05,
        "claim_interval": 0.1,
        "claim_idle": 0.3,
        "block_ms": 50,
    }
    settings.update(options)
    return RedisStreamBroker(client, prefix, **settings)  # type: ignore[arg-type]


async def publish(broker: RedisStreamBroker, *order_ids: int) -> None:
    await EventEmitter(message_broker=broker).emit_all([OrderPlaced(order_id=n) for n in order_ids])


async def test_a_stopped_members_pending_entries_are_claimed_by_another(
    client: Redis, key_prefix: str
) -> None:
    started_by_first: list[int] = []
    finished_by_first: list[int] = []
    handled_by_second: list[int] = []
    two_stuck = asyncio.Event()

    async def first_handler(event: OrderPlaced) -> None:
        started_by_first.append(event.order_id)
        if event.order_id >= 5:
            if len([n for n in started_by_first if n >= 5]) == 2:
                two_stuck.set()
            await asyncio.Event().wait()  # never finishes: this member "crashes"
        finished_by_first.append(event.order_id)

    async def second_handler(event: OrderPlaced) -> None:
        handled_by_second.append(event.order_id)

    first_events, second_events = EventMap(), EventMap()
    first_events.bind(OrderPlaced, first_handler)
    second_events.bind(OrderPlaced, second_handler)
    pattern = f"{key_prefix}:notification_event:*"

    first = EventConsumer(
        broker=stream_broker(client, key_prefix),
        event_map=first_events,
        max_concurrency=2,
        drain_timeout=0.05,
    )
    await first.subscribe(pattern, group="billing")
    producer = stream_broker(client, key_prefix)
    async with first:
        await publish(producer, *range(10))
        await asyncio.wait_for(two_stuck.wait(), timeout=10)
    # Stopped with two entries in flight and more read but never handled.
    assert first.stats.released == 2

    second = EventConsumer(broker=stream_broker(client, key_prefix), event_map=second_events)
    await second.subscribe(pattern, group="billing")
    async with second:
        await second.wait_until(lambda s: s.handled >= 10 - len(finished_by_first), timeout=10)

    assert sorted(finished_by_first + handled_by_second) == list(range(10))  # nothing lost
    duplicates = set(started_by_first) & set(handled_by_second)
    # At-least-once: only what the first member started and never acknowledged runs twice.
    assert duplicates == set(started_by_first) - set(finished_by_first)
    assert len(duplicates) == 2


async def test_a_poison_message_ends_in_the_dead_letter_stream(
    client: Redis, key_prefix: str
) -> None:
    broker = stream_broker(client, key_prefix, max_deliveries=3, claim_idle=0.05)
    subscription = await broker.subscribe(f"{key_prefix}:*", group="workers")
    await publish(broker, 1)
    counts: list[int] = []

    async def take_without_settling() -> None:
        # Each round is a member that dies mid-message: it never settles.
        delivery: RedisStreamDelivery
        async for delivery in subscription:
            counts.append(delivery.delivery_count)

    reader = asyncio.create_task(take_without_settling())
    # Redis itself waits for the dead-letter entry (XREAD BLOCK), no polling.
    arrived = await client.xread({broker.dead_letter_key: "0"}, block=10_000)
    assert arrived, "nothing reached the dead-letter stream"
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    await subscription.close()

    assert counts[:3] == [1, 2, 3]
    [dead] = await broker.dead_letters()
    assert dead["reason"] == "too_many_deliveries"
    assert dead["stream"] == f"{key_prefix}:notification_event:OrderPlaced"
    assert '"order_id":1' in dead["data"]
    pending = await client.xpending(dead["stream"], "workers")
    assert pending["pending"] == 0  # acknowledged once dead-lettered


async def test_the_consumer_resumes_after_its_connection_is_killed(
    client: Redis, key_prefix: str, redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    handled: list[int] = []
    events = EventMap()

    @events.bind(OrderPlaced)
    async def record(event: OrderPlaced) -> None:
        handled.append(event.order_id)

    broker = stream_broker(client, key_prefix)
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe(f"{key_prefix}:notification_event:*", group="g")
    with caplog.at_level(logging.WARNING, logger="mediator.brokers.redis"):
        async with consumer:
            await publish(broker, 1)
            await consumer.wait_until(lambda s: s.handled >= 1)
            killed = 0
            for entry in await redis_client.client_list():
                if entry.get("name") == key_prefix and entry.get("cmd") == "xreadgroup":
                    await redis_client.client_kill_filter(_id=entry["id"])
                    killed += 1
            # Published while (possibly) disconnected: at-least-once keeps them.
            await publish(broker, 2, 3, 4)
            await consumer.wait_until(lambda s: s.handled >= 4, timeout=10)
    assert killed >= 1
    assert sorted(handled) == [1, 2, 3, 4]
    assert any("retrying" in r.getMessage() for r in caplog.records)


async def test_maxlen_trims_streams_approximately(client: Redis, key_prefix: str) -> None:
    broker = stream_broker(client, key_prefix, maxlen=10)
    for start in range(0, 1000, 100):
        await publish(broker, *range(start, start + 100))
    length = await client.xlen(f"{key_prefix}:notification_event:OrderPlaced")
    assert 10 <= length < 1000


@pytest.mark.parametrize(("start_from", "expected"), [("new", [2]), ("beginning", [1, 2])])
async def test_a_new_group_starts_where_it_is_told(
    client: Redis, key_prefix: str, start_from: str, expected: list[int]
) -> None:
    broker = stream_broker(client, key_prefix, start_from=start_from)
    await publish(broker, 1)  # the stream exists before the group
    handled: list[int] = []
    events = EventMap()

    @events.bind(OrderPlaced)
    async def record(event: OrderPlaced) -> None:
        handled.append(event.order_id)

    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe(f"{key_prefix}:notification_event:*", group=f"from-{start_from}")
    async with consumer:
        await publish(broker, 2)
        await consumer.wait_until(lambda s: s.handled >= len(expected))
    assert handled == expected


async def test_an_ungrouped_subscription_removes_its_private_group(
    client: Redis, key_prefix: str
) -> None:
    broker = stream_broker(client, key_prefix)
    await publish(broker, 1)
    subscription = await broker.subscribe(f"{key_prefix}:*")
    stream = f"{key_prefix}:notification_event:OrderPlaced"
    assert len(await client.xinfo_groups(stream)) == 1
    await subscription.close()
    assert await client.xinfo_groups(stream) == []


async def test_publishing_without_redis_raises_a_publish_error() -> None:
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from mediator import PublishError

    dead = Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    broker = RedisStreamBroker(dead, "nowhere")
    with pytest.raises(PublishError, match="could not append OrderPlaced"):
        await publish(broker, 1)
    await dead.aclose()


async def test_an_entry_without_our_field_is_dead_lettered_and_reading_goes_on(
    client: Redis, key_prefix: str
) -> None:
    handled: list[int] = []
    events = EventMap()

    @events.bind(OrderPlaced)
    async def record(event: OrderPlaced) -> None:
        handled.append(event.order_id)

    broker = stream_broker(client, key_prefix)
    stream = f"{key_prefix}:notification_event:OrderPlaced"
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe(f"{key_prefix}:notification_event:*")
    async with consumer:
        await client.xadd(stream, {"something": "else"})  # another producer's entry
        await client.sadd(broker.registry_key, stream)
        await publish(broker, 7)
        await consumer.wait_until(lambda s: s.handled >= 1 and s.dead_lettered >= 1)
    assert handled == [7]
    assert consumer.stats.dead_lettered_by_reason == {"not_json": 1}


async def test_a_lost_registry_is_rebuilt_by_the_next_publish(
    client: Redis, key_prefix: str
) -> None:
    broker = stream_broker(client, key_prefix)
    await publish(broker, 1)
    await client.delete(broker.registry_key)  # e.g. a restart without persistence
    await publish(broker, 2)
    assert await client.smembers(broker.registry_key) == {
        f"{key_prefix}:notification_event:OrderPlaced".encode()
    }


def test_a_client_that_decodes_to_str_is_refused(redis_url: str) -> None:
    from brokers.redis import RedisMessageBroker

    text_client = Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisStreamBroker(text_client)
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisMessageBroker(text_client)


async def test_a_broker_from_url_closes_its_own_client(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = RedisStreamBroker.from_url(redis_url, key_prefix)
    closed: list[bool] = []
    close = broker.client.aclose

    async def recording_close() -> None:
        closed.append(True)
        await close()

    monkeypatch.setattr(broker.client, "aclose", recording_close)
    async with broker:
        await publish(broker, 1)
        assert await broker.client.xlen(f"{key_prefix}:notification_event:OrderPlaced") == 1
        await broker.client.delete(
            f"{key_prefix}:notification_event:OrderPlaced", broker.registry_key
        )
    assert closed == [True]
