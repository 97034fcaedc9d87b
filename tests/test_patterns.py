"""`glob_match` and `GlobPattern` have exactly Redis's PSUBSCRIBE semantics.

`CASES` is the specification. The in-memory test runs every row through the matcher;
the Redis test runs every row (and every pattern against every channel) through a real
server with PSUBSCRIBE/PUBLISH, so the table's expectations are what Redis does.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, Final

import pytest
import redis.asyncio
from redis.asyncio.client import PubSub

from mediator._patterns import GlobPattern, glob_match, is_glob

# (pattern, channel, does Redis match it). Matching is bytewise on UTF-8.
#
# Portable semantics only: ranges use ASCII bounds (Redis compares `char`s, whose
# signedness depends on the platform), and patterns nest fewer than 1000 stars.
# No channel is empty: see `test_redis_psubscribe_agrees` for why.
CASES: Final[tuple[tuple[str, str, bool], ...]] = (
    # Literal text; matching is case-sensitive.
    ("app:orders", "app:orders", True),
    ("app:orders", "app:Orders", False),
    ("app:Order*", "app:order:1", False),
    ("[A-Z]1", "a1", False),
    # `*`: any run of bytes, including the empty run.
    ("a*b", "ab", True),
    ("a*b", "axyzb", True),
    ("*", "x", True),
    ("*:orders", "app:orders", True),
    ("*:orders", "app:orders:1", False),
    ("app:*", "app:", True),
    ("app:*", "app", False),
    ("a*b*c", "abc", True),
    ("a*b*c", "a-b-c-b-c", True),
    ("a*b*c", "acb", False),
    ("a**b", "ab", True),
    ("*b*", "aaa", False),
    # `?`: exactly one byte.
    ("a?c", "abc", True),
    ("a?c", "ac", False),
    ("a?c", "abbc", False),
    # Sets, negated sets and ranges; a reversed range is swapped.
    ("[abc]1", "b1", True),
    ("[abc]1", "d1", False),
    ("[^a]1", "b1", True),
    ("[^a]1", "a1", False),
    ("[a-z]1", "q1", True),
    ("[a-z]1", "Q1", False),
    ("[z-a]1", "q1", True),
    ("[-a]", "-", True),
    ("[a-]", "-", False),  # `a-]` is the range `]`..`a`, and the set is left open ...
    ("[a-]", "_", True),  # ... so it holds `_` (0x5F), which lies between them.
    # Backslash escapes, outside and inside sets.
    ("a\\*b", "a*b", True),
    ("a\\*b", "axb", False),
    ("a\\?b", "a?b", True),
    ("a\\?b", "axb", False),
    ("\\[a]", "[a]", True),
    ("\\[a]", "a", False),
    ("[\\]]", "]", True),
    ("[\\]]", "\\", False),
    ("\\a", "a", True),
    # A trailing lone backslash is a literal backslash.
    ("a\\", "a\\", True),
    ("a\\", "a", False),
    # An unterminated set ends with the pattern; a `[` last in the pattern matches nothing.
    ("[abc", "b", True),
    ("[abc", "[abc", False),
    ("a[", "a[", False),
    # `[]` is an empty set (a `]` right after `[` closes it); `[^]` matches any byte.
    ("[]", "]", False),
    ("[]a]", "a", False),
    ("[^]", "x", True),
    ("[^]]", "x]", True),
    # Channel-shaped patterns.
    ("app:notification_event:*", "app:notification_event:OrderPlaced", True),
    ("app:notification_event:*", "app:domain_event:OrderPlaced", False),
    ("app:*:Order*", "app:notification_event:OrderPlaced", True),
    ("app:*:Order*", "app:notification_event:orderPlaced", False),
    ("app:*:Order*", "app:OrderPlaced", False),
    ("app:???:x", "app:eu1:x", True),
    ("app:???:x", "app:eu:x", False),
    # Non-ASCII: UTF-8 bytes, so `?` and a set match one byte of a multi-byte character.
    ("caf?", "café", False),
    ("caf??", "café", True),
    ("caf[é]", "café", False),
    ("caf[é]?", "café", True),
    ("[^ü]x", "üx", False),
    ("über:*", "über:1", True),
    ("Über:*", "über:1", False),
)

_PATTERNS: Final = tuple(sorted({pattern for pattern, _, _ in CASES}))
_CHANNELS: Final = tuple(sorted({channel for _, channel, _ in CASES}))
_READ_TIMEOUT: Final = 10.0  # seconds, for all confirmations or all messages to arrive


def _case_id(pattern: str, channel: str, expected: bool) -> str:
    return f"{pattern}~{channel}~{'match' if expected else 'no'}"


def test_cases_are_unique_and_channels_non_empty() -> None:
    assert len(set(CASES)) == len(CASES)
    assert len({(pattern, channel) for pattern, channel, _ in CASES}) == len(CASES)
    assert all(channel for _, channel, _ in CASES)


@pytest.mark.parametrize(
    ("pattern", "channel", "expected"),
    [pytest.param(*case, id=_case_id(*case)) for case in CASES],
)
def test_in_memory_matcher(pattern: str, channel: str, expected: bool) -> None:
    assert glob_match(pattern, channel) is expected
    compiled = GlobPattern(pattern)
    assert compiled.matches(channel) is expected
    assert compiled.matches(channel) is expected  # the cached answer too


async def _read_until_psubscribed(pubsub: PubSub, count: int) -> None:
    """Wait for the confirmation of the `count`th pattern subscription."""
    async with asyncio.timeout(_READ_TIMEOUT):
        while True:
            message: dict[str, Any] | None = await pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "psubscribe" and message["data"] == count:
                return


async def _read_until_channel(pubsub: PubSub, channel: bytes) -> list[dict[str, Any]]:
    """Every pmessage up to and including the first one published on `channel`."""
    received: list[dict[str, Any]] = []
    async with asyncio.timeout(_READ_TIMEOUT):
        while True:
            message: dict[str, Any] | None = await pubsub.get_message(timeout=1.0)
            if message is None or message["type"] != "pmessage":
                continue
            received.append(message)
            if message["channel"] == channel:
                return received


async def test_redis_psubscribe_agrees(redis_client: redis.asyncio.Redis, key_prefix: str) -> None:
    # Prefixing: every pattern and every channel gets the same literal prefix `base`. It
    # holds no metacharacter, so Redis's matcher (stringmatchlen) consumes it byte by
    # byte and then stands exactly where an unprefixed match starts: prefixing keeps the
    # semantics and keeps this test clear of other clients' channels. The one exception
    # is an empty channel: unprefixed, `*` does not match "" in Redis, but `<base>*`
    # matches `<base>`. Hence no row has an empty channel (checked above).
    base = f"{key_prefix}:"
    assert not is_glob(base)
    payload = key_prefix.encode()
    # Published last, on a channel that no table pattern can match (they all start with
    # `base`), and matched by a literal pattern subscribed last. Redis delivers one
    # connection's messages in order, so once the sentinel arrives, everything has.
    sentinel = f"{key_prefix}.sentinel"
    pattern_of = {(base + pattern).encode(): pattern for pattern in _PATTERNS}

    async with redis_client.pubsub() as pubsub:
        await pubsub.psubscribe(*(base + pattern for pattern in _PATTERNS), sentinel)
        await _read_until_psubscribed(pubsub, len(_PATTERNS) + 1)
        receivers: dict[str, int] = {}
        for channel in _CHANNELS:
            receivers[channel] = await redis_client.publish(base + channel, payload)
        numpat: int = await redis_client.pubsub_numpat()
        await redis_client.publish(sentinel, payload)
        received = await _read_until_channel(pubsub, sentinel.encode())

    matched: set[tuple[str, str]] = set()
    for message in received[:-1]:
        assert message["data"] == payload
        channel_bytes: bytes = message["channel"]
        assert channel_bytes.startswith(base.encode())
        pair = (pattern_of[message["pattern"]], channel_bytes[len(base) :].decode())
        assert pair not in matched, f"{pair} delivered twice"
        matched.add(pair)

    # Redis against the table.
    wrong_rows = [
        (pattern, channel, expected)
        for pattern, channel, expected in CASES
        if ((pattern, channel) in matched) is not expected
    ]
    assert not wrong_rows, f"Redis disagrees with these (pattern, channel, expected): {wrong_rows}"

    # Redis against the in-memory matcher, for every pattern against every channel.
    disagreements = [
        (pattern, channel, (pattern, channel) in matched)
        for pattern in _PATTERNS
        for channel in _CHANNELS
        if glob_match(pattern, channel) is not ((pattern, channel) in matched)
        or GlobPattern(pattern).matches(channel) is not ((pattern, channel) in matched)
    ]
    assert not disagreements, (
        f"glob_match disagrees with Redis on these (pattern, channel, Redis's answer): "
        f"{disagreements}"
    )

    # PUBLISH's own count of receivers: every pattern of ours that Redis matched, plus
    # any other client's pattern matching it. Exact when ours are the only patterns on
    # the server (NUMPAT counts every client's pattern subscriptions), else a floor.
    ours = Counter(channel for _, channel in matched)
    alone = numpat == len(_PATTERNS) + 1
    for channel in _CHANNELS:
        if alone:
            assert receivers[channel] == ours[channel], channel
        else:
            assert receivers[channel] >= ours[channel], channel
