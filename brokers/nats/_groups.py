"""NATS: the subscriptions of each consumer group in one broker.

A group is one durable consumer filtered by ``{prefix}.*.>``, pulled by
every subscription of the group, so a subscription can pull a message whose
channel only another one's glob matches: this bookkeeping says which other
member takes it (docs/nats.md, "Groups"). Pure, with no client.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mediator.transport import quote

if TYPE_CHECKING:
    from brokers.nats._naming import Layout
    from brokers.nats._subscription import NatsSubscription

__all__ = ["Groups"]

logger = logging.getLogger("mediator.brokers.nats")

_WARNED_LIMIT = 1024
"""How many (group, channel) pairs the unmatched line is remembered for."""


class Groups:
    """The live subscriptions of each group, in the order they subscribed."""

    def __init__(self, layout: Layout) -> None:
        self._layout = layout
        self._members: dict[str, list[NatsSubscription]] = {}
        self._warned: set[tuple[str, str]] = set()

    def join(self, member: NatsSubscription, group: str) -> None:
        self._members.setdefault(group, []).append(member)

    def leave(self, member: NatsSubscription) -> None:
        members = self._members.get(member.group or "")
        if members is not None and member in members:
            members.remove(member)
            if not members:
                del self._members[member.group or ""]

    def member_for(self, receiver: NatsSubscription, channel: str) -> NatsSubscription | None:
        """`receiver` when its glob matches `channel`, else another live
        subscription of its group whose glob does; None when none does."""
        if receiver.matches(channel):
            return receiver
        if receiver.group is None:
            return None
        for member in self._members.get(receiver.group, ()):
            if member is not receiver and not member.closed and member.matches(channel):
                return member
        return None

    def warn_unmatched(self, group: str, channel: str) -> None:
        """Say once per channel that the group took a message none of its
        subscriptions here matches: at INFO, since the group's filter takes
        every channel of the prefix and most such channels are simply not
        the group's."""
        if (group, channel) in self._warned:
            return
        if len(self._warned) >= _WARNED_LIMIT:  # bounded: channels come from producers
            self._warned.clear()
        self._warned.add((group, channel))
        logger.info(
            "%s; its messages are acknowledged unhandled (counted in unmatched)",
            self.unmatched_description(group, channel),
        )

    def unmatched_description(self, group: str, channel: str) -> str:
        patterns = ", ".join(m.pattern for m in self._members.get(group, ()) if not m.closed)
        return quote(
            f"a message of {channel!r} reached consumer {self._layout.durable(group)!r}, which "
            f"takes every channel of the prefix for group {group!r}, and matches none of the "
            f"group's subscriptions in this process (patterns: {patterns or 'nothing'}). "
            "Expected for a channel the group does not subscribe; if another member of the "
            "group subscribes a pattern that matches it, give every member the same patterns, "
            "or that member loses what this one takes (see 'Groups' in the NATS docs)"
        )
