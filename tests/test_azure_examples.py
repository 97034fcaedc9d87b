"""The Azure Service Bus example pair works as documented, in either start order.

Both scripts run as separate processes and talk, through the real
azure-servicebus SDK, to the loopback AMQP peer this test starts. The peer
emulates no subscription rules, so the consumer's subscription receives every
message and the client-side pattern match has to drop the newsletter event.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import orjson
import pytest

try:
    import azure.servicebus  # noqa: F401  # the examples import it through brokers.azure

    from tests.azure_peer import AmqpPeer
    from tests.examples_runner import (
        assert_handled_the_three_orders,
        consumer_started_first,
        run,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise
    pytest.skip(f"azure-servicebus or python-qpid-proton missing: {exc}", allow_module_level=True)


@pytest.fixture
def peer() -> Iterator[AmqpPeer]:
    with AmqpPeer() as amqp_peer:
        yield amqp_peer


def assert_all_completed(peer: AmqpPeer, topic: str, subscription: str) -> None:
    sent = peer.received(topic)
    channels = [m.application_properties["channel"] for m in sent]
    assert [c.decode() if isinstance(c, bytes) else c for c in channels] == [
        f"{topic}:notification_event:OrderPlaced",
        f"{topic}:notification_event:NewsletterSigned",
        f"{topic}:notification_event:OrderPlaced",
        f"{topic}:notification_event:NewsletterSigned",
        f"{topic}:notification_event:OrderCancelled",
    ]
    assert [orjson.loads(m.body)["message_name"] for m in sent][-1] == "OrderCancelled"
    # Three handled, two newsletters completed unhandled: nothing left, nothing dead. (The SDK
    # may also release a message it read between receive calls; that one comes back.)
    outcomes = [s.outcome for s in peer.settlements() if s.outcome != "released"]
    assert outcomes == ["completed"] * 5
    assert peer.message_count(topic, subscription) == 0
    assert peer.message_count(topic, subscription, dead_letter=True) == 0


def test_the_consumer_reads_what_the_producer_sent_before_it_started(peer: AmqpPeer) -> None:
    peer.add_subscription("orders", "billing")  # the defaults of both scripts

    sent = run("azure_producer.py", SERVICEBUS_CONNECTION_STRING=peer.connection_string)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.splitlines() == ["sent 3 commands; their events are on topic orders"]

    consumed = run("azure_consumer.py", SERVICEBUS_CONNECTION_STRING=peer.connection_string)
    assert consumed.returncode == 0, consumed.stderr
    assert_handled_the_three_orders(consumed.stdout.splitlines())
    assert_all_completed(peer, "orders", "billing")


def test_a_consumer_started_first_gets_what_is_sent_later(peer: AmqpPeer) -> None:
    peer.add_subscription("shop", "invoicing")
    env = {
        "SERVICEBUS_CONNECTION_STRING": peer.connection_string,
        "SERVICEBUS_TOPIC": "shop",
        "SERVICEBUS_SUBSCRIPTION": "invoicing",
    }
    lines = consumer_started_first("azure_consumer.py", "azure_producer.py", **env)
    assert_handled_the_three_orders(lines)
    assert_all_completed(peer, "shop", "invoicing")


@pytest.mark.parametrize("name", ["azure_producer.py", "azure_consumer.py"])
def test_a_missing_connection_string_is_a_clear_error(name: str) -> None:
    result = run(name)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "SERVICEBUS_CONNECTION_STRING is not set" in result.stderr
    assert "Traceback" not in result.stderr
