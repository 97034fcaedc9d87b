"""Kafka: what a subscription knows of one partition it reads.

Pure bookkeeping, with no client: the records fetched and not handed out
yet, the offsets not settled yet, and the rules between them (what to hand
out next, what may be committed, when to fetch again). The subscription
keeps one per partition and does the fetching, waking and committing;
docs/kafka.md, "How partition state is kept", says how the two meet.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["AssignedPartition", "Partition", "PartitionState", "Record"]

Partition = tuple[str, int]
"""A topic partition, as aiokafka's ``TopicPartition`` (a named tuple)."""


class Record(Protocol):
    """What the bookkeeping reads of a fetched record: its offset."""

    @property
    def offset(self) -> int: ...


R = TypeVar("R", bound=Record)


class PartitionState(Generic[R]):
    """One partition's records between fetching and committing.

    ```python
    part = PartitionState(prefetch=100, ordered=True)
    part.add(records)  # offsets 0, 1, 2
    [first] = part.hand_out()  # offset 0, now in flight
    part.settle(0)
    assert part.take_next().offset == 1
    assert part.committable() == 1
    ```
    """

    __slots__ = (
        "committed",
        "done",
        "full",
        "in_flight",
        "matches",
        "next_offset",
        "ordered",
        "owned",
        "prefetch",
        "reopen_at",
        "revoked",
        "unsettled",
        "waiting",
    )

    def __init__(self, prefetch: int, *, ordered: bool, matches: bool = True) -> None:
        self.prefetch = prefetch
        """Records held (waiting or in flight) at which it is full: fetched from no more."""
        self.reopen_at = prefetch // 2
        """Records held at which a full partition is fetched from again."""
        self.ordered = ordered
        """One record in flight at a time, in offset order."""
        self.matches = matches
        """False for a topic the glob refuses: nothing handed out, every offset handled."""
        self.waiting: deque[R] = deque()
        """Records fetched and not handed out yet, in order; given-back ones first."""
        self.unsettled: deque[int] = deque()
        """Offsets fetched and not settled yet, lowest first."""
        self.done: set[int] = set()
        """Offsets settled while a lower one was still unsettled."""
        self.next_offset = -1
        """The offset after the last record fetched (where to fetch from); -1 before the first."""
        self.committed: int | None = None
        """The offset last committed."""
        self.in_flight = 0
        self.owned = True
        """False once another reader may have it: settling it changes nothing."""
        self.revoked = False
        """In a rebalance: nothing handed out until it is ours again or dropped."""
        self.full = False
        """Holding `prefetch` records: not fetched from until half of them are gone."""

    # -- fetching -----------------------------------------------------------

    def add(self, records: Sequence[R]) -> bool:
        """Take in `records` fetched in offset order, skipping those held
        already (fetched again after a seek); True when they are to be handed out."""
        if not self.owned or not records:
            return False
        after = self.next_offset
        if not self.matches:
            self.next_offset = max(after, records[-1].offset + 1)
            return False
        waiting, unsettled = self.waiting, self.unsettled
        if records[0].offset >= after:
            # The usual fetch, all of it new: taken in whole, not record by record.
            waiting.extend(records)
            unsettled.extend([record.offset for record in records])
            after = records[-1].offset + 1
        else:
            for record in records:
                offset = record.offset
                if offset < after:
                    continue
                unsettled.append(offset)
                waiting.append(record)
                after = offset + 1
        self.next_offset = after
        if len(waiting) + self.in_flight >= self.prefetch:
            self.full = True
        return True

    def reopen(self) -> bool:
        """Make a full partition fetchable again once it holds at most half
        of `prefetch`; True when it did."""
        if self.full and len(self.waiting) + self.in_flight <= self.reopen_at:
            self.full = False
            return True
        return False

    # -- handing out --------------------------------------------------------

    def can_hand_out(self) -> bool:
        """Whether `hand_out` would give something now."""
        return bool(self.waiting) and not self.revoked and not (self.ordered and self.in_flight > 0)

    def hand_out(self) -> list[R]:
        """What a reader may take now: in order the next record unless one
        is in flight, otherwise every waiting record."""
        if not self.can_hand_out():
            return []
        waiting = self.waiting
        if self.ordered:
            self.in_flight = 1
            return [waiting.popleft()]
        taken = list(waiting)
        waiting.clear()
        self.in_flight += len(taken)
        return taken

    def take_next(self) -> R | None:
        """In order, the record after the one just settled, for the task
        that handled that one; None when there is none to take now."""
        if self.in_flight or not self.waiting or not self.ordered or self.revoked:
            return None
        self.in_flight = 1
        return self.waiting.popleft()

    # -- settling -----------------------------------------------------------

    def settle(self, offset: int) -> bool:
        """The record at `offset` was handled (acked or dead-lettered); False
        when the partition is not ours any more and nothing changed."""
        if not self.owned:
            return False
        self.in_flight -= 1
        unsettled = self.unsettled
        if unsettled and unsettled[0] == offset:
            unsettled.popleft()
            done = self.done
            while done and unsettled and unsettled[0] in done:
                done.discard(unsettled.popleft())
        else:
            self.done.add(offset)
        return True

    def give_back(self, record: R) -> bool:
        """A released record, handed out again ahead of the waiting ones
        (its offset stays unsettled); False when the partition is not ours any more."""
        if not self.owned:
            return False
        self.in_flight -= 1
        self.waiting.appendleft(record)
        return True

    # -- committing ---------------------------------------------------------

    def position(self) -> int | None:
        """The offset below which every record fetched was handled; None before the first fetch."""
        if self.unsettled:
            return self.unsettled[0]
        return self.next_offset if self.next_offset >= 0 else None

    def committable(self) -> int | None:
        """The offset to commit now, or None when there is nothing new to
        commit or the partition is not ours to commit."""
        position = self.position()
        if not self.owned or position == self.committed:
            return None
        return position

    # -- rebalancing --------------------------------------------------------

    def revoke(self) -> None:
        """Taken away in a rebalance: hand out nothing more until it is
        restored or dropped (what is in flight still settles)."""
        self.revoked = True

    def restore(self) -> None:
        """Assigned to us again: go on from where it stood."""
        self.revoked = False

    def drop(self) -> None:
        """Another reader's now: forget the waiting records; settling or
        committing changes nothing more (its next reader starts at the commit)."""
        self.owned = False
        self.waiting.clear()


class AssignedPartition(PartitionState[Any]):
    """A partition a subscription reads: its bookkeeping (holding aiokafka's
    records and the deliveries given back), which one it is, and its place
    in the subscription's queue of partitions to hand out."""

    __slots__ = ("channel", "queued", "recheck", "tp")

    def __init__(
        self, tp: Partition, channel: str | None, matches: bool, prefetch: int, ordered: bool
    ) -> None:
        super().__init__(prefetch, ordered=ordered, matches=matches)
        self.tp = tp
        self.channel = channel or tp[0]
        self.queued = False
        """In the subscription's queue of partitions with a record to hand out."""
        self.recheck = False
        """A look at whether to queue it is due at the loop's next turn."""
