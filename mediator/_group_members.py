"""The subscriptions of each consumer group in one broker, for transports
whose group shares one destination (a queue, a durable consumer) among all
its subscriptions: a delivery can reach a subscription whose glob does not
match it, and goes to the one of the same group here whose glob does.
Pure, with no client (docs/writing-a-transport.md)."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

__all__ = ["GroupMember", "GroupMembers"]

_SAID_LIMIT = 1024
"""How many (group, key) pairs `first_time` remembers; keys come from
producers, so the memory is bounded and starts again when full."""


class GroupMember(Protocol):
    """What the bookkeeping reads of a subscription."""

    @property
    def pattern(self) -> str: ...

    @property
    def group(self) -> str | None: ...

    @property
    def closed(self) -> bool: ...

    def matches(self, channel: str) -> bool: ...


M = TypeVar("M", bound=GroupMember)


class GroupMembers(Generic[M]):
    """The live members of each group, in the order they subscribed."""

    def __init__(self) -> None:
        self._members: dict[str, list[M]] = {}
        self._said: set[tuple[str, str]] = set()

    def join(self, member: M, group: str) -> None:
        """Make `member` one of `group`: what another member receives for it goes to it."""
        self._members.setdefault(group, []).append(member)

    def leave(self, member: M) -> None:
        members = self._members.get(member.group or "")
        if members is not None and member in members:
            members.remove(member)
            if not members:
                del self._members[member.group or ""]

    def live(self, group: str) -> list[M]:
        """The members of `group` that are not closed."""
        return [member for member in self._members.get(group, ()) if not member.closed]

    def member_for(self, receiver: M, channel: str) -> M | None:
        """`receiver` when its glob matches `channel`, else another live
        member of its group whose glob does; None when none does."""
        if receiver.matches(channel):
            return receiver
        if receiver.group is None:
            return None
        for member in self._members.get(receiver.group, ()):
            if member is not receiver and not member.closed and member.matches(channel):
                return member
        return None

    def first_time(self, group: str, key: str) -> bool:
        """True the first time it is asked of (`group`, `key`): for saying
        something once per channel or routing key."""
        if (group, key) in self._said:
            return False
        if len(self._said) >= _SAID_LIMIT:
            self._said.clear()
        self._said.add((group, key))
        return True
