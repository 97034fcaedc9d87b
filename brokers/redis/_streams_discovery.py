"""Redis Streams: which streams a subscription reads, without a client.

A subscription finds streams in the broker's registry and joins its group
on those matching its glob; this keeps what came of each: read, waiting for
its group to be made (again), or skipped as a key of another type until it
is a stream again (docs/redis-streams.md, "Connections").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from brokers.redis._streams_replies import text


class StreamSet:
    """The streams of one subscription's group, by what came of joining them."""

    __slots__ = ("joined", "misfits", "missing", "reading")

    def __init__(self) -> None:
        self.reading: dict[str, str] = {}
        """Streams with the group, as XREADGROUP takes them (key -> ">")."""
        self.joined: set[str] = set()
        """Every stream the group was created or found on (for cleaning up)."""
        self.missing: set[str] = set()
        """Streams whose group must be made (again) before they are read."""
        self.misfits: set[str] = set()
        """Registered keys that hold another type than a stream."""

    def to_join(
        self, registered: Iterable[bytes | str], matches: Callable[[str], bool]
    ) -> list[str]:
        """The keys to join, in order: the `registered` ones that `matches`
        and that were not joined yet, and every missing one."""
        found = {key for key in map(text, registered) if key not in self.joined}
        return sorted({key for key in found if matches(key)} | self.missing)

    def to_mend(self) -> list[str]:
        """The keys to join again once the group was lost: all it should read."""
        return sorted(self.missing.union(self.reading))

    def join(self, key: str) -> bool:
        """The group is on `key`: read it. True if it was a misfit until now."""
        was_misfit = key in self.misfits
        self.misfits.discard(key)
        self.missing.discard(key)
        self.joined.add(key)
        self.reading[key] = ">"
        return was_misfit

    def miss(self, key: str) -> bool:
        """The group could not be made on `key`: retry it, without reading it
        meanwhile. True the first time."""
        first = key not in self.missing
        self.missing.add(key)
        self.reading.pop(key, None)
        return first

    def misfit(self, key: str) -> bool:
        """`key` holds another type: skip it until discovery finds it again,
        a stream. True the first time."""
        self.reading.pop(key, None)
        self.missing.discard(key)
        self.joined.discard(key)
        first = key not in self.misfits
        self.misfits.add(key)
        return first
