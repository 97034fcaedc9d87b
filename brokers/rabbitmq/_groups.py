"""RabbitMQ: the subscriptions of each consumer group in one broker.

All subscriptions of a group share its queue, so a delivery can reach one
whose glob does not match it: this bookkeeping says which other member takes
it, and whether any binding of the group's members here brought it at all
(docs/rabbitmq.md, "Groups and their patterns"). Pure, with no client.
"""

from __future__ import annotations

import logging
from typing import Protocol, TypeVar

from brokers.rabbitmq._naming import Layout, covers
from mediator.transport import GroupMember, GroupMembers, quote

__all__ = ["Groups", "Member"]

logger = logging.getLogger("mediator.brokers.rabbitmq")


class Member(GroupMember, Protocol):
    """What the bookkeeping reads of a subscription: a group member's, and
    the key its pattern is bound with."""

    @property
    def binding_key(self) -> str: ...


M = TypeVar("M", bound=Member)


class Groups(GroupMembers[M]):
    """The live members of each group, and what their bindings bring."""

    def __init__(self, layout: Layout) -> None:
        super().__init__()
        self._layout = layout

    def bound_for(self, group: str, routing_key: str) -> bool:
        """Whether a live subscription of `group` here bound a key matching `routing_key`."""
        return any(covers(member.binding_key, routing_key) for member in self.live(group))

    def warn_unmatched(self, group: str, routing_key: str) -> None:
        """Say once per routing key that a binding no member here made brought it."""
        if self.first_time(group, routing_key):
            logger.warning(
                "%s; its deliveries are acknowledged unhandled (counted in unmatched)",
                self.unmatched_description(group, routing_key),
            )

    def unmatched_description(self, group: str, routing_key: str) -> str:
        members = self.live(group)
        patterns = ", ".join(m.pattern for m in members) or "nothing"
        keys = ", ".join(sorted({m.binding_key for m in members})) or "nothing"
        return quote(
            f"routing key {routing_key!r} reached queue {self._layout.group_queue(group)!r} "
            f"through a binding that none of group {group!r}'s subscriptions in this process "
            f"made (patterns: {patterns}; bound with: {keys}): a pattern dropped from the group, "
            "or one that only other members subscribe. If no member subscribes it any more, "
            "unbind it from the queue (see 'Groups and their patterns' in the RabbitMQ docs)"
        )
