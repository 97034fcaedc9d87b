"""The RabbitMQ example pair works as documented: messages wait in the
group's queue while the consumer is down, and a consumer started first gets
what is published afterwards."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.examples_runner import (
    TIMEOUT,
    assert_handled_the_three_orders,
    example_command,
    run,
    run_ok,
)
from tests.rabbitmq_support import amqp_url, connect, delete_everything


@pytest.fixture
def prefix() -> Iterator[str]:
    """A prefix of the test's own; its exchanges and queues are deleted afterwards."""
    prefix = f"mtk-example-{uuid.uuid4().hex[:8]}"
    yield prefix
    asyncio.run(_delete(prefix))


async def _delete(prefix: str) -> None:
    connection = await connect(f"{prefix}-cleanup")
    try:
        await delete_everything(
            connection,
            exchanges=[prefix, f"{prefix}.dead-letter"],
            queues=[f"{prefix}.billing", f"{prefix}.dead-letter"],
        )
    finally:
        await connection.close()


async def _ready_messages(prefix: str) -> dict[str, int]:
    connection = await connect(f"{prefix}-check")
    try:
        async with connection.channel() as channel:
            counts = {}
            for queue in (f"{prefix}.billing", f"{prefix}.dead-letter"):
                declared = await channel.declare_queue(queue, passive=True, robust=False)
                counts[queue] = declared.declaration_result.message_count or 0
            return counts
    finally:
        await connection.close()


def assert_all_acknowledged(prefix: str) -> None:
    # The billing queue is empty (NewsletterSigned, bound by
    # notification_event.# but not an Order* event, was acknowledged
    # unmatched) and nothing was dead-lettered.
    assert asyncio.run(_ready_messages(prefix)) == {
        f"{prefix}.billing": 0,
        f"{prefix}.dead-letter": 0,
    }


def test_the_producer_refuses_events_no_queue_is_bound_for(prefix: str) -> None:
    result = run("rabbitmq_producer.py", AMQP_URL=amqp_url(), SHOP_PREFIX=prefix)
    assert result.returncode != 0
    assert "not sent" in result.stderr
    assert "no queue is bound" in result.stderr
    assert "Start a consumer of it first" in result.stderr


def test_events_wait_in_the_group_queue_while_the_consumer_is_down(prefix: str) -> None:
    url = amqp_url()
    # A first run declares the queue and stops.
    assert run_ok("rabbitmq_consumer.py", AMQP_URL=url, SHOP_PREFIX=prefix, SHOP_COUNT="0") == []
    sent = run_ok("rabbitmq_producer.py", AMQP_URL=url, SHOP_PREFIX=prefix)
    assert sent == [f"sent 3 commands; their events are on the exchange {prefix}"]

    assert_handled_the_three_orders(
        run_ok("rabbitmq_consumer.py", AMQP_URL=url, SHOP_PREFIX=prefix)
    )
    assert_all_acknowledged(prefix)


def test_a_consumer_started_first_gets_what_is_published_next(prefix: str) -> None:
    url = amqp_url()
    command, env = example_command("rabbitmq_consumer.py", AMQP_URL=url, SHOP_PREFIX=prefix)
    consumer = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert consumer.stderr is not None
        # The consumer says when its queue is bound; the producer may start then.
        assert consumer.stderr.readline() == f"billing reads {prefix}.billing\n"
        run_ok("rabbitmq_producer.py", AMQP_URL=url, SHOP_PREFIX=prefix)
        stdout, stderr = consumer.communicate(timeout=TIMEOUT)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.communicate()
    assert consumer.returncode == 0, stderr
    assert_handled_the_three_orders(stdout.splitlines())
    assert_all_acknowledged(prefix)
