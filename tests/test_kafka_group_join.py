"""Joining a Kafka consumer group: what a join that does not complete says,
and that a subscription in a rebalance is not reported connected. A stand-in
for aiokafka's consumer plays the group (no server needed)."""

from __future__ import annotations

from typing import Any

import pytest

from brokers.kafka import KafkaMessageBroker, KafkaSubscription
from brokers.kafka._rebalance import Rebalance
from mediator import BrokerUnavailableError


class GroupThatNeverSettles:
    """aiokafka's consumer, as far as a subscription uses it, in a group
    whose rebalance never ends: started, subscribed, never assigned."""

    def __init__(self) -> None:
        self.listener: Any = None
        self.stopped = False

    async def start(self) -> None:
        return None

    def subscribe(self, *, pattern: str, listener: Any) -> None:
        self.listener = listener

    async def stop(self) -> None:
        self.stopped = True


@pytest.fixture(autouse=True)
def no_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    async def matching_topics(self: KafkaSubscription) -> dict[str, list[int]]:
        return {}

    monkeypatch.setattr(KafkaSubscription, "_matching_topics", matching_topics)


def broker_with(consumer: GroupThatNeverSettles, **options: Any) -> KafkaMessageBroker:
    broker = KafkaMessageBroker(["127.0.0.1:1"], channel_prefix="join", **options)
    broker._new_consumer = lambda group: consumer  # type: ignore[method-assign]
    return broker


async def test_a_group_join_that_does_not_complete_says_so_not_check_the_servers() -> None:
    consumer = GroupThatNeverSettles()
    broker = broker_with(consumer, timeout=0.2, consumer_options={"session_timeout_ms": 45_000})
    subscription = KafkaSubscription(broker, "join:*", "billing")

    with pytest.raises(BrokerUnavailableError) as refused:
        await subscription.open()

    text = str(refused.value)
    assert "the join of consumer group 'join.billing' did not complete in 0.2 s" in text
    assert "session_timeout_ms, 45 s here" in text
    assert "bootstrap_servers" not in text
    assert consumer.stopped


async def test_a_subscription_in_a_rebalance_is_not_connected_until_assigned() -> None:
    consumer = GroupThatNeverSettles()
    broker = broker_with(consumer, timeout=5)
    subscription = KafkaSubscription(broker, "join:*", "billing")
    subscription._connected = True  # as open() leaves it once the first join completed
    listener = Rebalance(subscription)  # what aiokafka calls as the group rebalances
    await listener.on_partitions_assigned(set())
    assert subscription.connected

    await listener.on_partitions_revoked(set())  # a member joined or left
    assert not subscription.connected

    await listener.on_partitions_assigned(set())
    assert subscription.connected
