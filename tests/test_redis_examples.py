"""The Redis example pair works as documented, in either start order."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 45  # seconds per process; the consumer gives up by itself after 30

EXPECTED = [
    re.compile(r"billing order 101: 4200 cents \(checkout-1\)"),
    re.compile(r"billing order 102: 990 cents \([0-9a-f]{32}\)"),  # a fresh correlation id
    re.compile(r"refunding order 101"),
]


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A prefix of the test's own; every key starting with it is deleted afterwards."""
    prefix = f"mtk-example-{uuid.uuid4().hex[:8]}"
    yield prefix
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)


def example_command(name: str, redis_url: str, prefix: str) -> tuple[list[str], dict[str, str]]:
    command = [sys.executable, str(ROOT / "examples" / name)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": redis_url, "SHOP_PREFIX": prefix}
    return command, env


def run(name: str, redis_url: str, prefix: str) -> list[str]:
    command, env = example_command(name, redis_url, prefix)
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def assert_handled_the_three_orders(lines: list[str]) -> None:
    assert len(lines) == 3, lines
    # Each event name is its own stream: order holds within a name only.
    bills = [line for line in lines if line.startswith("billing")]
    assert bills == sorted(bills), "order 101 was placed before order 102"
    for pattern in EXPECTED:
        assert any(pattern.fullmatch(line) for line in lines), (pattern.pattern, lines)


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
    sent = run("redis_producer.py", redis_url, prefix)
    assert sent == [
        f"sent 3 commands; their events are in the streams {prefix}:notification_event:*"
    ]

    assert_handled_the_three_orders(run("redis_consumer.py", redis_url, prefix))
    assert_all_acknowledged(redis_url, prefix)


def test_a_consumer_started_first_gets_the_streams_that_appear_later(
    redis_url: str, prefix: str
) -> None:
    # No stream exists when the consumer subscribes: it finds them in the
    # registry once the producer creates them and reads them from the start,
    # so the two processes need no coordination.
    command, env = example_command("redis_consumer.py", redis_url, prefix)
    consumer = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        run("redis_producer.py", redis_url, prefix)
        stdout, stderr = consumer.communicate(timeout=TIMEOUT)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.communicate()
    assert consumer.returncode == 0, stderr
    assert_handled_the_three_orders(stdout.splitlines())
    assert_all_acknowledged(redis_url, prefix)
