"""What a Redis Streams subscription sends and reads back, without a server
(brokers/redis/_streams_replies.py). The replies are the shapes redis-py
hands over, RESP2 and RESP3, as recorded from Redis 7."""

from __future__ import annotations

import os
from typing import Any

import pytest

try:
    from redis import exceptions as redis_errors

    from brokers.redis._streams_replies import (
        claimed_entries,
        delivery_counts,
        group_lost,
        idle_members,
        read_entries,
        refused_acks,
        script_args,
        script_entries,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise
    pytest.skip(f"redis-py missing: {exc}", allow_module_level=True)

ENTRIES = [(b"1-0", {b"data": b'{"a":1}'}), (b"2-0", {b"data": b'{"a":2}'})]


def test_the_read_script_acknowledges_each_stream_s_own_entries() -> None:
    # Per key, in KEYS order: how many ids, then the ids. A stream without
    # acknowledgements says 0, so the next stream's ids stay its own.
    args = script_args(
        "billing", "host:1:ab", 100, ["s:a", "s:b", "s:c"], {"s:c": [b"5-0", b"6-0"]}
    )
    assert args == ["billing", "host:1:ab", 100, 0, 0, 2, b"5-0", b"6-0"]


def test_the_read_script_s_flat_reply_gives_each_stream_its_entries_in_order() -> None:
    flat = [b"s:a", 2, b"1-0", b"x", b"2-0", b"y", b"s:b", 0, b"s:c", 1, b"9-0", b""]
    assert list(script_entries(flat)) == [
        ("s:a", [b"1-0", b"2-0"], [b"x", b"y"]),
        ("s:b", [], []),
        ("s:c", [b"9-0"], [b""]),
    ]
    assert list(script_entries([])) == []  # nothing new (the script's empty table)


@pytest.mark.parametrize(
    "reply",
    [
        [[b"s:a", ENTRIES]],  # RESP2
        {b"s:a": [ENTRIES]},  # RESP3
    ],
    ids=["resp2", "resp3"],
)
def test_a_plain_read_gives_the_same_entries_under_either_protocol(reply: Any) -> None:
    assert list(read_entries(reply)) == [("s:a", [b"1-0", b"2-0"], [b'{"a":1}', b'{"a":2}'])]


@pytest.mark.parametrize("empty", [None, [], {}])
def test_a_read_that_timed_out_gives_nothing(empty: Any) -> None:
    assert list(read_entries(empty)) == []


def test_an_entry_without_a_data_field_reads_as_empty_data() -> None:
    # Another producer's entry: delivered, and then dead-lettered as bad input.
    reply = [[b"s:a", [(b"1-0", {b"other": b"y"}), (b"2-0", {})]]]
    assert list(read_entries(reply)) == [("s:a", [b"1-0", b"2-0"], [b"", b""])]


def test_a_stream_key_that_is_not_utf8_is_still_named() -> None:
    [(key, _, _)] = read_entries([[b"s:caf\xe9", ENTRIES]])
    assert key == "s:caf\ufffd"


def test_a_claim_returns_the_cursor_and_skips_entries_deleted_meanwhile() -> None:
    # Redis 7 lists deleted ids third; Redis 6.2 gives them as nil entries.
    assert claimed_entries([b"0-0", ENTRIES[:1], [b"2-0"]]) == ("0-0", ENTRIES[:1])
    assert claimed_entries([b"7-0", [ENTRIES[0], (None, None)]]) == ("7-0", ENTRIES[:1])


def test_a_claim_that_claimed_nothing_still_moves_the_cursor() -> None:
    # Idle entries behind live ones: the next call goes on from the cursor.
    assert claimed_entries([b"12-0", []]) == ("12-0", [])


def test_delivery_counts_come_from_the_pending_list() -> None:
    pending = [
        {"message_id": b"1-0", "consumer": b"n", "time_since_delivered": 1, "times_delivered": 2},
        {"message_id": b"3-0", "consumer": b"n", "time_since_delivered": 1, "times_delivered": 7},
    ]
    assert delivery_counts(pending) == {b"1-0": 2, b"3-0": 7}


def test_only_other_members_idle_too_long_with_nothing_pending_are_removed() -> None:
    members = [
        {"name": b"me", "pending": 0, "idle": 9_000_000},  # never oneself
        {"name": b"busy", "pending": 3, "idle": 9_000_000},  # its entries are claimed first
        {"name": b"recent", "pending": 0, "idle": 3_600_000},  # not past the limit
        {"name": b"gone", "pending": 0, "idle": 3_600_001},
    ]
    assert list(idle_members(members, "me", 3600.0)) == [("gone", 3600.001)]


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        (redis_errors.ResponseError("NOGROUP No such key 's:a' or consumer group 'g'"), True),
        (redis_errors.ResponseError("UNBLOCKED the stream key no longer exists"), True),
        (redis_errors.ResponseError("UNBLOCKED force unblock from blocking operation"), False),
        (redis_errors.ResponseError("WRONGTYPE Operation against a key holding the wrong"), False),
        (redis_errors.ReadOnlyError("You can't write against a read only replica."), False),
    ],
)
def test_a_group_is_made_again_only_when_it_or_its_stream_is_gone(
    error: Exception, lost: bool
) -> None:
    assert group_lost(error) is lost


def test_refused_acknowledgements_are_kept_unless_the_group_is_gone() -> None:
    acks = {"s:a": [b"1-0"], "s:b": [b"2-0", b"3-0"], "s:c": [b"4-0"]}
    results = [
        1,
        redis_errors.ReadOnlyError("You can't write against a read only replica."),
        redis_errors.ResponseError("NOGROUP No such key 's:c' or consumer group 'g'"),
        [],  # the read that followed in the same pipeline
    ]
    assert refused_acks(acks, results) == {"s:b": [b"2-0", b"3-0"]}
