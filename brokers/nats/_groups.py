"""NATS: the subscriptions of each consumer group in one broker.

A group is one durable consumer filtered by ``{prefix}.*.>``, pulled by
every subscription of the group, so a subscription can pull a message whose
channel only another one's glob matches: this bookkeeping says which other
member takes it (docs/nats.md, "Groups"). Pure, with no client.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mediator.transport import GroupMembers, quote

if TYPE_CHECKING:
    from brokers.nats._naming import Layout
    from brokers.nats._subscription import NatsSubscription  # noqa: F401 (the base's argument)

__all__ = ["Groups"]

logger = logging.getLogger("mediator.brokers.nats")


class Groups(GroupMembers["NatsSubscription"]):
    """The live subscriptions of each group, in the order they subscribed."""

    def __init__(self, layout: Layout) -> None:
        super().__init__()
        self._layout = layout

    def warn_unmatched(self, group: str, channel: str) -> None:
        """Say once per channel that the group took a message none of its
        subscriptions here matches: at INFO, since the group's filter takes
        every channel of the prefix and most such channels are simply not
        the group's."""
        if self.first_time(group, channel):
            logger.info(
                "%s; its messages are acknowledged unhandled (counted in unmatched)",
                self.unmatched_description(group, channel),
            )

    def unmatched_description(self, group: str, channel: str) -> str:
        patterns = ", ".join(m.pattern for m in self.live(group))
        return quote(
            f"a message of {channel!r} reached consumer {self._layout.durable(group)!r}, which "
            f"takes every channel of the prefix for group {group!r}, and matches none of the "
            f"group's subscriptions in this process (patterns: {patterns or 'nothing'}). "
            "Expected for a channel the group does not subscribe; if another member of the "
            "group subscribes a pattern that matches it, give every member the same patterns, "
            "or that member loses what this one takes (see 'Groups' in the NATS docs)"
        )
