"""The Redis example pair works as documented, in either start order."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.examples_runner import assert_handled_the_three_orders, consumer_started_first, run_ok


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A prefix of the test's own; every key starting with it is deleted afterwards."""
    prefix = f"mtk-example-{uuid.uuid4().hex[:8]}"
    yield prefix
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)


def assert_all_acknowledged(redis_url: str, prefix: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        streams = sorted(key.decode() for key in client.smembers(f"{prefix}:streams"))
        assert streams == [
            f"{prefix}:notification_event:NewsletterSigned",
            f"{prefix}:notification_event:OrderCancelled",
            f"{prefix}:notification_event:OrderPlaced",
        ]
        for stream in streams[1:]:
            [group] = client.xinfo_groups(stream)
            assert (group["name"], group["pending"]) == (b"billing", 0)
        assert client.xinfo_groups(streams[0]) == []  # not an Order* stream
        assert not client.exists(f"{prefix}:dead-letter")


def test_the_consumer_reads_what_the_producer_sent_before_it_started(
    redis_url: str, prefix: str
) -> None:
    sent = run_ok("redis_producer.py", REDIS_URL=redis_url, SHOP_PREFIX=prefix)
    assert sent == [
        f"sent 3 commands; their events are in the streams {prefix}:notification_event:*"
    ]

    assert_handled_the_three_orders(
        run_ok("redis_consumer.py", REDIS_URL=redis_url, SHOP_PREFIX=prefix)
    )
    assert_all_acknowledged(redis_url, prefix)


def test_a_consumer_started_first_gets_the_streams_that_appear_later(
    redis_url: str, prefix: str
) -> None:
    # No stream exists when the consumer subscribes: it finds them in the
    # registry once the producer creates them and reads them from the start,
    # so the two processes need no coordination.
    lines = consumer_started_first(
        "redis_consumer.py", "redis_producer.py", REDIS_URL=redis_url, SHOP_PREFIX=prefix
    )
    assert_handled_the_three_orders(lines)
    assert_all_acknowledged(redis_url, prefix)
