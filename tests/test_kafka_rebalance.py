"""A group subscription's offsets (brokers/kafka/_rebalance.py and the
commits of brokers/kafka/_subscription.py), with stand-ins for aiokafka's
consumer and admin client: where a partition without a commit starts, a
partition kept across a rebalance, and commits that never pass a record in
work."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka import errors as aiokafka_errors

from brokers.kafka import KafkaDelivery, KafkaMessageBroker, KafkaSubscription
from brokers.kafka._rebalance import Rebalance

OLD = TopicPartition("shop.notification_event.Old", 0)
"""A partition of a topic that existed when the subscription first connected."""
LATER = TopicPartition("shop.notification_event.Later", 0)
"""A partition of a topic that appeared afterwards."""


class Consumer:
    """aiokafka's consumer, as far as rebalances and commits use it: ten
    records in every partition, and commits kept (or refused with `refusal`)."""

    def __init__(self) -> None:
        self.positions: dict[Any, int] = {}
        self.commits: list[dict[Any, int]] = []
        self.refusal: BaseException | None = None

    def seek(self, tp: Any, offset: int) -> None:
        self.positions[tp] = offset

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return dict.fromkeys(tps, 10)

    async def beginning_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return dict.fromkeys(tps, 0)

    async def commit(self, offsets: dict[Any, int]) -> None:
        if self.refusal is not None:
            raise self.refusal
        self.commits.append(dict(offsets))


class Admin:
    """The group's committed offsets, as the admin client lists them."""

    def __init__(self, committed: dict[Any, int]) -> None:
        self.committed = committed

    async def list_consumer_group_offsets(self, group: str, partitions: list[Any]) -> Any:
        return {
            tp: SimpleNamespace(offset=self.committed.get(tp, -1), metadata="") for tp in partitions
        }


def subscription_of(
    committed: dict[Any, int] | None = None, group: str | None = "billing", **options: Any
) -> tuple[KafkaSubscription, Consumer]:
    broker = KafkaMessageBroker(["127.0.0.1:1"], channel_prefix="shop", **options)
    admin = Admin(committed or {})

    async def started_admin() -> Admin:
        return admin

    broker._admin = started_admin  # type: ignore[method-assign]
    subscription = KafkaSubscription(broker, "shop:*", group)
    subscription._initial = {OLD.topic: [0]}
    consumer = Consumer()
    subscription._consumer = consumer
    return subscription, consumer


def fetched(tp: TopicPartition, *offsets: int) -> dict[Any, list[Any]]:
    return {
        tp: [SimpleNamespace(topic=tp.topic, partition=0, offset=o, value=b"{}") for o in offsets]
    }


# -- where a partition starts ------------------------------------------------------


async def test_a_new_group_starts_at_the_end_of_old_topics_and_the_start_of_later_ones() -> None:
    subscription, consumer = subscription_of()
    await Rebalance(subscription).on_partitions_assigned({OLD, LATER})

    assert consumer.positions == {OLD: 10, LATER: 0}
    assert consumer.commits == [{OLD: 10, LATER: 0}], "committed before any record is handled"


async def test_a_group_told_to_start_from_the_beginning_reads_every_topic_from_its_start() -> None:
    subscription, consumer = subscription_of(start_from="beginning")
    await Rebalance(subscription).on_partitions_assigned({OLD, LATER})
    assert consumer.positions == {OLD: 0, LATER: 0}


async def test_a_group_that_committed_before_starts_an_uncommitted_partition_at_its_start() -> None:
    # A member killed before the group committed OLD: the group is not new,
    # so OLD is not skipped to its end.
    subscription, consumer = subscription_of(committed={LATER: 4})
    await Rebalance(subscription).on_partitions_assigned({OLD, LATER})
    assert consumer.positions == {OLD: 0}
    assert consumer.commits == [{OLD: 0}]


# -- rebalances ------------------------------------------------------------------


async def test_a_partition_kept_across_a_rebalance_goes_on_from_what_was_fetched() -> None:
    subscription, consumer = subscription_of(committed={OLD: 0})
    listener = Rebalance(subscription)
    await listener.on_partitions_assigned({OLD})
    subscription._fetcher._take_in(fetched(OLD, 0, 1, 2))
    [first] = subscription._take()
    first.ack_nowait()

    await listener.on_partitions_revoked({OLD})
    assert consumer.commits == [{OLD: 1}], "what was handled, before another member reads it"
    assert subscription._take() == [], "a revoked partition hands out nothing"

    await listener.on_partitions_assigned({OLD})
    assert consumer.positions[OLD] == 3
    [second] = subscription._take()
    assert second.record.offset == 1


async def test_a_partition_given_to_another_member_forgets_its_records() -> None:
    subscription, _ = subscription_of(committed={OLD: 0, LATER: 0})
    listener = Rebalance(subscription)
    await listener.on_partitions_assigned({OLD, LATER})
    subscription._fetcher._take_in(fetched(OLD, 0, 1))
    await listener.on_partitions_revoked({OLD, LATER})
    await listener.on_partitions_assigned({LATER})
    assert subscription._take() == []
    assert set(subscription._partitions) == {LATER}


# -- commits ---------------------------------------------------------------------


async def test_a_commit_never_passes_a_record_in_work() -> None:
    subscription, consumer = subscription_of(committed={OLD: 0}, ordered=False)
    await Rebalance(subscription).on_partitions_assigned({OLD})
    subscription._fetcher._take_in(fetched(OLD, 0, 1, 2, 3, 4))
    deliveries: list[KafkaDelivery] = subscription._take()
    for delivery in (deliveries[0], deliveries[1], deliveries[3]):
        delivery.ack_nowait()

    await subscription._commit(consumer)
    assert consumer.commits == [{OLD: 2}]
    await subscription._commit(consumer)
    assert consumer.commits == [{OLD: 2}], "nothing new to commit"


async def test_a_commit_a_rebalance_overtook_is_logged_and_tried_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mediator.brokers.kafka")
    subscription, consumer = subscription_of(committed={OLD: 0})
    await Rebalance(subscription).on_partitions_assigned({OLD})
    subscription._fetcher._take_in(fetched(OLD, 0))
    [delivery] = subscription._take()
    delivery.ack_nowait()

    consumer.refusal = aiokafka_errors.RebalanceInProgressError()
    await subscription._commit(consumer)
    assert any("a rebalance overtook a commit" in r.getMessage() for r in caplog.records)
    consumer.refusal = aiokafka_errors.KafkaConnectionError("gone")
    await subscription._commit(consumer)
    assert any(
        r.levelno == logging.WARNING and "commit failed, retrying later" in r.getMessage()
        for r in caplog.records
    )

    consumer.refusal = None
    await subscription._commit(consumer)
    assert consumer.commits == [{OLD: 1}]


async def test_without_a_group_nothing_is_committed() -> None:
    subscription, consumer = subscription_of(group=None)
    subscription._partitions = {OLD: subscription._new_partition(OLD)}
    subscription._fetcher._take_in(fetched(OLD, 0))
    subscription._take()[0].ack_nowait()
    await subscription._commit(consumer)
    assert consumer.commits == []
