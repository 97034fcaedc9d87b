"""RabbitMQ: the subscriptions of each consumer group in one broker.

All subscriptions of a group share its queue, so a delivery can reach one
whose glob does not match it: this bookkeeping says which other member takes
it, and whether any binding of the group's members here brought it at all
(docs/rabbitmq.md, "Groups and their patterns"). Pure, with no client.
"""

from __future__ import annotations

import logging
from typing import Generic, Protocol, TypeVar

from brokers.rabbitmq._naming import Layout, covers
from mediator.transport import quote

__all__ = ["Groups", "Member"]

logger = logging.getLogger("mediator.brokers.rabbitmq")

_WARNED_LIMIT = 1024
"""How many (group, routing key) pairs the unmatched WARNING is remembered for."""


class Member(Protocol):
    """What the bookkeeping reads of a subscription."""

    @property
    def pattern(self) -> str: ...

    @property
    def group(self) -> str | None: ...

    @property
    def binding_key(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    def matches(self, channel: str) -> bool: ...


M = TypeVar("M", bound=Member)


class Groups(Generic[M]):
    """The live members of each group, in the order they subscribed."""

    def __init__(self, layout: Layout) -> None:
        self._layout = layout
        self._members: dict[str, list[M]] = {}
        self._warned: set[tuple[str, str]] = set()

    def join(self, member: M, group: str) -> None:
        """Make `member` one of `group`: what another member receives for it waits for it."""
        self._members.setdefault(group, []).append(member)

    def leave(self, member: M) -> None:
        members = self._members.get(member.group or "")
        if members is not None and member in members:
            members.remove(member)
            if not members:
                del self._members[member.group or ""]

    def member_for(self, receiver: M, channel: str) -> M | None:
        """Another live subscription of `receiver`'s group whose glob matches."""
        if receiver.group is None:
            return None
        for member in self._members.get(receiver.group, ()):
            if member is not receiver and not member.closed and member.matches(channel):
                return member
        return None

    def bound_for(self, group: str, routing_key: str) -> bool:
        """Whether a live subscription of `group` here bound a key matching `routing_key`."""
        return any(
            covers(member.binding_key, routing_key)
            for member in self._members.get(group, ())
            if not member.closed
        )

    def warn_unmatched(self, group: str, routing_key: str) -> None:
        """Say once per routing key that a binding no member here made brought it."""
        if (group, routing_key) in self._warned:
            return
        if len(self._warned) >= _WARNED_LIMIT:  # bounded: routing keys come from producers
            self._warned.clear()
        self._warned.add((group, routing_key))
        logger.warning(
            "%s; its deliveries are acknowledged unhandled (counted in unmatched)",
            self.unmatched_description(group, routing_key),
        )

    def unmatched_description(self, group: str, routing_key: str) -> str:
        members = [m for m in self._members.get(group, ()) if not m.closed]
        patterns = ", ".join(m.pattern for m in members) or "nothing"
        keys = ", ".join(sorted({m.binding_key for m in members})) or "nothing"
        return quote(
            f"routing key {routing_key!r} reached queue {self._layout.group_queue(group)!r} "
            f"through a binding that none of group {group!r}'s subscriptions in this process "
            f"made (patterns: {patterns}; bound with: {keys}): a pattern dropped from the group, "
            "or one that only other members subscribe. If no member subscribes it any more, "
            "unbind it from the queue (see 'Groups and their patterns' in the RabbitMQ docs)"
        )
