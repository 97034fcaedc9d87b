"""Service Bus names without a server (brokers/azure/_naming.py): entity paths,
the channel read from a received message, and the SQL rule that lets through
what a subscription's pattern matches."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator

import pytest

from mediator.transport import GlobPattern

try:
    from brokers.azure import sql_filter
    from brokers.azure._naming import channel_of, dead_letter_path, subscription_path
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise
    pytest.skip(f"azure-servicebus missing: {exc}", allow_module_level=True)


def test_entity_paths_are_the_ones_the_portal_shows() -> None:
    assert subscription_path("orders", "billing") == "orders/Subscriptions/billing"
    assert dead_letter_path("orders", "billing") == "orders/Subscriptions/billing/$DeadLetterQueue"


@pytest.mark.parametrize(
    ("properties", "channel"),
    [
        # As received: the SDK hands keys and string values over as bytes.
        ({b"channel": b"shop:ecst_event:Stock"}, "shop:ecst_event:Stock"),
        ({"channel": "shop:ecst_event:Stock"}, "shop:ecst_event:Stock"),
        ({b"channel": b"shop:ecst_event:Caf\xe9"}, "shop:ecst_event:Caf\ufffd"),
        # Another producer's message: no channel, so no pattern is applied to it.
        (None, None),
        ({}, None),
        ({b"message_name": b"OrderPlaced"}, None),
        ({b"channel": 7}, None),
    ],
)
def test_the_channel_is_read_from_the_application_properties(
    properties: dict[str | bytes, object] | None, channel: str | None
) -> None:
    assert channel_of(properties) == channel


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (
            "shop:notification_event:Order*",
            "channel LIKE 'shop:notification!_event:Order%' ESCAPE '!'",
        ),
        ("shop:*:User?", "channel LIKE 'shop:%:User_' ESCAPE '!'"),
        ("shop:100\\%:*", "channel LIKE 'shop:100!%:%' ESCAPE '!'"),
        ("it's:*", "channel LIKE 'it''s:%' ESCAPE '!'"),
        ("shop:[ab]*", None),
    ],
)
def test_sql_filter_translates_what_sql_like_can_express(
    pattern: str, expected: str | None
) -> None:
    assert sql_filter(pattern) == expected


def test_sql_filter_can_name_another_property() -> None:
    assert sql_filter("shop:*", "origin") == "origin LIKE 'shop:%' ESCAPE '!'"


@pytest.fixture
def sql() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:")
    connection.execute("PRAGMA case_sensitive_like = ON")
    try:
        yield connection
    finally:
        connection.close()


PATTERNS = [
    "shop:notification_event:Order*",
    "shop:*:Order?laced",
    "shop:*",
    "*:ecst_event:*",
    "shop:notification_event:OrderPlaced",
    "shop:100\\%:*",
    "it's:*",
    "a!b:*",
]
CHANNELS = [
    "shop:notification_event:OrderPlaced",
    "shop:notification_event:OrderPaid",
    "shop:notificationXevent:OrderPlaced",
    "shop:ecst_event:OrderPlaced",
    "shop:ecst_event:OrderXlaced",
    "billing:ecst_event:Invoice",
    "shop:100%:Sale",
    "shop:1000:Sale",
    "it's:on",
    "its:on",
    "a!b:c",
    "ab:c",
]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_the_rule_lets_through_what_the_pattern_matches(
    sql: sqlite3.Connection, pattern: str
) -> None:
    """Service Bus then delivers only what the consumer would keep (on ASCII
    channels), and the client-side match completes nothing."""
    rule = sql_filter(pattern)
    assert rule is not None
    glob = GlobPattern(pattern)
    for channel in CHANNELS:
        [(passes,)] = sql.execute(f"SELECT {rule} FROM (SELECT ? AS channel)", (channel,))
        assert bool(passes) == glob.matches(channel), channel
