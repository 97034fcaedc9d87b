"""The subscriptions of a consumer group in one RabbitMQ broker
(brokers/rabbitmq/_groups.py), without a server: which member takes a
delivery its receiver's glob does not match, and when a delivery no binding
here brought is said."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest

from brokers.rabbitmq import binding_key
from brokers.rabbitmq._groups import Groups
from brokers.rabbitmq._naming import Layout
from mediator.transport import GlobPattern


@dataclass(eq=False)  # identity, as subscriptions compare
class Member:
    """A subscription as the bookkeeping sees it."""

    pattern: str
    group: str | None = "billing"
    closed: bool = False
    binding_key: str = field(init=False)

    def __post_init__(self) -> None:
        self.binding_key = binding_key(self.pattern, "shop")

    def matches(self, channel: str) -> bool:
        return GlobPattern(self.pattern).matches(channel)


def groups(*members: Member) -> Groups[Member]:
    kept: Groups[Member] = Groups(Layout("shop"))
    for member in members:
        assert member.group is not None
        kept.join(member, member.group)
    return kept


ORDERS = "shop:notification_event:Order*"
USERS = "shop:notification_event:User*"


def test_a_delivery_goes_to_the_member_whose_glob_matches_it() -> None:
    orders, users = Member(ORDERS), Member(USERS)
    kept = groups(orders, users)

    assert kept.member_for(orders, "shop:notification_event:UserJoined") is users
    assert kept.member_for(users, "shop:notification_event:OrderPlaced") is orders
    assert kept.member_for(orders, "shop:notification_event:Shipped") is None


def test_a_receiver_whose_glob_matches_keeps_its_delivery() -> None:
    orders, other_orders = Member(ORDERS), Member(ORDERS)
    kept = groups(orders, other_orders)
    assert kept.member_for(orders, "shop:notification_event:OrderPlaced") is orders
    assert kept.member_for(other_orders, "shop:notification_event:OrderPlaced") is other_orders


def test_closed_and_departed_members_take_nothing() -> None:
    orders, users, other_users = Member(ORDERS), Member(USERS, closed=True), Member(USERS)
    kept = groups(orders, users, other_users)
    assert kept.member_for(orders, "shop:notification_event:UserJoined") is other_users

    kept.leave(other_users)
    assert kept.member_for(orders, "shop:notification_event:UserJoined") is None


def test_members_of_other_groups_and_subscriptions_without_one_take_nothing() -> None:
    orders, audit = Member(ORDERS), Member(USERS, group="audit")
    alone = Member(USERS, group=None)
    kept = groups(orders, audit)

    assert kept.member_for(orders, "shop:notification_event:UserJoined") is None
    assert kept.member_for(alone, "shop:notification_event:OrderPlaced") is None


def test_a_routing_key_is_bound_for_when_a_live_member_s_key_covers_it() -> None:
    placed = Member("shop:notification_event:OrderPlaced")
    shipped = Member("shop:notification_event:OrderShipped", closed=True)
    kept = groups(placed, shipped)

    assert kept.bound_for("billing", "notification_event.OrderPlaced")
    assert not kept.bound_for("billing", "notification_event.OrderShipped")
    assert not kept.bound_for("audit", "notification_event.OrderPlaced")


def test_an_unbound_routing_key_is_said_once_with_how_to_remove_its_binding(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kept = groups(Member("shop:notification_event:OrderPlaced"), Member(ORDERS))
    with caplog.at_level(logging.WARNING, logger="mediator.brokers.rabbitmq"):
        for _ in range(3):
            kept.warn_unmatched("billing", "notification_event.UserJoined")
        kept.warn_unmatched("billing", "notification_event.UserLeft")

    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2
    first = said[0]
    assert "routing key 'notification_event.UserJoined' reached queue 'shop.billing'" in first
    assert f"patterns: shop:notification_event:OrderPlaced, {ORDERS}" in first
    assert "bound with: notification_event.#, notification_event.OrderPlaced" in first
    assert "unbind it from the queue" in first
    assert first.endswith("acknowledged unhandled (counted in unmatched)")


def test_a_group_with_no_live_member_here_is_described_as_binding_nothing() -> None:
    description = groups().unmatched_description("billing", "notification_event.UserJoined")
    assert "(patterns: nothing; bound with: nothing)" in description
