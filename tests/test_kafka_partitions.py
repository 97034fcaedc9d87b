"""What a Kafka subscription knows of one partition (brokers/kafka/_partitions.py),
without a server: hand-out order, settling, commits, redelivery, rebalances
and the prefetch bound."""

from __future__ import annotations

from dataclasses import dataclass

from brokers.kafka._partitions import PartitionState


@dataclass(frozen=True)
class Fetched:
    """A fetched record as the bookkeeping sees it."""

    offset: int
    delivery: int = 1


def fetched(*offsets: int) -> list[Fetched]:
    return [Fetched(offset) for offset in offsets]


def offsets(items: list[Fetched]) -> list[int]:
    return [item.offset for item in items]


def following(part: PartitionState[Fetched]) -> Fetched:
    """The record `take_next` gives, which there must be."""
    record = part.take_next()
    assert record is not None
    return record


def state(prefetch: int = 100, *, ordered: bool = True) -> PartitionState[Fetched]:
    return PartitionState(prefetch, ordered=ordered)


def test_nothing_fetched_means_nothing_to_hand_out_or_commit() -> None:
    part = state()
    assert part.hand_out() == []
    assert part.take_next() is None
    assert part.position() is None
    assert part.committable() is None


def test_in_order_a_partition_hands_out_its_records_one_at_a_time_in_offset_order() -> None:
    part = state()
    assert part.add(fetched(0, 1, 2, 3))
    assert offsets(part.hand_out()) == [0]
    assert part.hand_out() == [], "the next waits for the one in flight"
    assert part.take_next() is None
    assert not part.can_hand_out()
    handed = [0]
    while True:
        assert part.settle(handed[-1])
        following = part.take_next()  # as the task that handled the last one does
        if following is None:
            break
        handed.append(following.offset)
    assert handed == [0, 1, 2, 3]
    assert part.committable() == 4


def test_unordered_a_partition_hands_out_every_waiting_record_at_once() -> None:
    part = state(ordered=False)
    part.add(fetched(0, 1, 2))
    assert offsets(part.hand_out()) == [0, 1, 2]
    assert part.in_flight == 3
    assert part.take_next() is None, "no chaining without order"
    part.add(fetched(3))
    assert part.can_hand_out(), "records in flight do not hold the next back"
    assert offsets(part.hand_out()) == [3]


def test_records_fetched_again_after_a_seek_are_held_once() -> None:
    part = state(ordered=False)
    part.add(fetched(0, 1, 2))
    part.add(fetched(1, 2, 3, 4))
    assert offsets(part.hand_out()) == [0, 1, 2, 3, 4]
    assert part.next_offset == 5


def test_offsets_missing_from_a_fetch_are_skipped_not_waited_for() -> None:
    # Compaction and transaction markers leave gaps in a partition's offsets.
    part = state(ordered=True)
    part.add(fetched(0, 2, 5))
    assert part.next_offset == 6
    part.settle(part.hand_out()[0].offset)
    assert part.committable() == 2
    part.settle(following(part).offset)
    part.settle(following(part).offset)
    assert part.committable() == 6


def test_out_of_order_settlement_commits_only_below_the_lowest_unsettled_offset() -> None:
    part = state(ordered=False)
    part.add(fetched(0, 1, 2, 3, 4, 5))
    part.hand_out()
    for offset, committable in [(3, 0), (1, 0), (4, 0), (0, 2), (2, 5), (5, 6)]:
        part.settle(offset)
        assert part.committable() == committable, f"after settling {offset}"
    assert not part.done, "nothing left over once every offset is settled"


def test_what_was_committed_is_not_committable_again() -> None:
    part = state()
    part.add(fetched(0, 1))
    part.settle(part.hand_out()[0].offset)
    assert part.committable() == 1
    part.committed = 1
    assert part.committable() is None
    part.settle(following(part).offset)
    assert part.committable() == 2


def test_a_released_record_is_handed_out_again_before_the_later_ones() -> None:
    part = state()
    part.add(fetched(0, 1, 2))
    [first] = part.hand_out()
    part.settle(first.offset)
    second = part.take_next()
    assert second == Fetched(1)
    assert part.give_back(Fetched(1, delivery=2))
    assert part.committable() == 1, "a released record holds the commit"
    assert part.take_next() == Fetched(1, delivery=2), "ahead of offset 2"
    part.settle(1)
    assert part.take_next() == Fetched(2)
    part.settle(2)
    assert part.committable() == 3


def test_unordered_a_released_record_comes_first_among_the_waiting_ones() -> None:
    part = state(ordered=False)
    part.add(fetched(0, 1))
    [_, second] = part.hand_out()
    part.add(fetched(2, 3))
    part.settle(second.offset)
    part.give_back(Fetched(0, delivery=2))
    assert part.hand_out() == [Fetched(0, delivery=2), Fetched(2), Fetched(3)]
    assert part.committable() == 0


def test_a_revoked_partition_hands_out_nothing_until_it_is_assigned_again() -> None:
    part = state()
    part.add(fetched(0, 1, 2, 3))
    [first] = part.hand_out()
    part.revoke()
    assert part.settle(first.offset), "still ours: what was handled counts"
    assert part.take_next() is None
    assert part.hand_out() == []
    assert part.committable() == 1, "commit what was handled before another reader starts"

    part.restore()  # assigned to us again: go on from where it stood
    assert offsets(part.hand_out()) == [1]
    assert part.next_offset == 4, "where to fetch from, not the commit"


def test_a_dropped_partition_forgets_its_records_and_commits_nothing_more() -> None:
    part = state(ordered=False)
    part.add(fetched(0, 1, 2, 3))
    handed = part.hand_out()[:2]  # 0 and 1 in flight; the rest as if not handed out yet
    part.revoke()
    part.drop()  # assigned to another member
    assert part.hand_out() == []
    assert part.committable() is None, "its next reader commits it"
    assert not part.settle(handed[1].offset), "settling it changes nothing"
    assert not part.give_back(handed[0])
    assert not part.add(fetched(4))
    assert part.hand_out() == []


def test_a_partition_is_full_at_prefetch_and_fetched_from_again_at_half() -> None:
    part = state(prefetch=4)
    part.add(fetched(0, 1, 2))
    full = [part.full]
    part.add(fetched(3, 4))  # one fetch may bring more than prefetch
    full.append(part.full)
    assert full == [False, True]
    handed = part.hand_out()[0].offset
    assert not part.reopen(), "handed out but in flight: still held"
    for _ in range(2):
        part.settle(handed)
        handed = following(part).offset
        assert part.full
        assert not part.reopen()
    part.settle(handed)  # 2 held: half of prefetch
    assert part.reopen()
    assert not part.full
    assert not part.reopen(), "once"


def test_a_partition_the_glob_refuses_hands_out_nothing_and_commits_past_it() -> None:
    part = PartitionState[Fetched](100, ordered=True, matches=False)
    assert not part.add(fetched(0, 1, 2))
    assert part.hand_out() == []
    assert part.committable() == 3
