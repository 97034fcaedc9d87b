"""The NATS example pair works as documented, in either start order.

Both scripts run as processes of their own against the tests' NATS (see
tests/nats_support.py); the test then checks what the billing group
acknowledged, and deletes the prefix's stream.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from tests.examples_runner import assert_handled_the_three_orders, consumer_started_first, run_ok
from tests.nats_support import delete_stream, nats_url


@pytest.fixture
def url(request: pytest.FixtureRequest) -> str:
    return nats_url(request)


@pytest.fixture
def prefix(url: str) -> Iterator[str]:
    """A prefix of the test's own; its stream is deleted afterwards."""
    prefix = f"mtk-example-{uuid.uuid4().hex[:8]}"
    yield prefix
    asyncio.run(delete_stream(url, prefix))


async def _state(url: str, prefix: str) -> tuple[list[str], int, int]:
    """The stream's subjects, and the billing consumers' acknowledged and pending counts."""
    import nats

    client = await nats.connect(url)
    try:
        js = client.jetstream()
        info = await js.stream_info(prefix, subjects_filter=">")
        consumers = await js.consumers_info(prefix)
        assert [c.name for c in consumers if c.name.startswith("billing-")], consumers
        acked = sum(c.ack_floor.stream_seq > 0 for c in consumers)  # type: ignore[union-attr]
        pending = sum(c.num_pending + c.num_ack_pending for c in consumers)  # type: ignore[operator]
        return sorted(info.state.subjects or {}), acked, pending
    finally:
        await client.close()


def assert_all_acknowledged(url: str, prefix: str) -> None:
    subjects, acked, pending = asyncio.run(_state(url, prefix))
    assert subjects == [
        f"{prefix}.notification_event.NewsletterSigned",
        f"{prefix}.notification_event.OrderCancelled",
        f"{prefix}.notification_event.OrderPlaced",
    ], "no dead letters, and one subject per event name"
    assert (acked, pending) == (1, 0)


def test_the_consumer_reads_what_the_producer_sent_before_it_started(url: str, prefix: str) -> None:
    env = {"NATS_URL": url, "SHOP_PREFIX": prefix}
    sent = run_ok("nats_producer.py", **env)
    assert sent == [f"sent 3 commands; their events are in the stream {prefix}"]
    assert_handled_the_three_orders(run_ok("nats_consumer.py", **env))
    assert_all_acknowledged(url, prefix)


def test_a_consumer_started_first_reads_what_is_published_later(url: str, prefix: str) -> None:
    lines = consumer_started_first(
        "nats_consumer.py", "nats_producer.py", NATS_URL=url, SHOP_PREFIX=prefix
    )
    assert_handled_the_three_orders(lines)
    assert_all_acknowledged(url, prefix)
