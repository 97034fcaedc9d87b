"""Delivery counts of a RabbitMQ subscription without a group
(brokers/rabbitmq/_subscription.py), without a server: a classic queue
counts no deliveries, so the subscription counts its own releases."""

from __future__ import annotations

from brokers.rabbitmq._subscription import ReleaseCounts


def test_a_released_message_comes_back_one_delivery_later() -> None:
    counts = ReleaseCounts()
    counts.released("id-1", b"{}", 1)
    assert counts.redelivered("id-1", b"{}") == 2
    counts.released("id-1", b"{}", 2)
    assert counts.redelivered("id-1", b"{}") == 3


def test_a_redelivery_the_subscription_did_not_release_counts_as_the_second() -> None:
    # Unsettled when a channel closed: it was delivered once at least.
    assert ReleaseCounts().redelivered("id-1", b"{}") == 2


def test_a_message_without_an_id_is_known_by_its_body() -> None:
    counts = ReleaseCounts()
    counts.released(None, b'{"order_id": 1}', 4)
    counts.released("", b'{"order_id": 2}', 1)
    assert counts.redelivered(None, b'{"order_id": 2}') == 2
    assert counts.redelivered("", b'{"order_id": 1}') == 5


def test_each_release_is_counted_once() -> None:
    counts = ReleaseCounts()
    counts.released("id-1", b"{}", 3)
    assert counts.redelivered("id-1", b"{}") == 4
    assert counts.redelivered("id-1", b"{}") == 2, "a second redelivery was not released again"


def test_past_the_limit_the_oldest_releases_are_forgotten() -> None:
    counts = ReleaseCounts(limit=2)
    for n in (1, 2, 3):
        counts.released(f"id-{n}", b"{}", 5)
    assert counts.redelivered("id-1", b"{}") == 2
    assert counts.redelivered("id-2", b"{}") == 6
    assert counts.redelivered("id-3", b"{}") == 6
