"""Service Bus entity paths, the ``channel`` property, and SQL rules from channel patterns."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "REPLAY_FOR",
    "channel_of",
    "dead_letter_path",
    "replayed_for",
    "sql_filter",
    "subscription_path",
]

REPLAY_FOR = "replay_for"
"""The application property of a replayed dead letter: the subscription it
is replayed for. A replay goes to the topic; the receivers of every other
subscription complete it without handling it."""


def subscription_path(topic: str, subscription: str) -> str:
    """The Service Bus path of a topic subscription: ``orders/Subscriptions/billing``."""
    return f"{topic}/Subscriptions/{subscription}"


def dead_letter_path(topic: str, subscription: str) -> str:
    """The path of a topic subscription's dead-letter sub-queue."""
    return f"{subscription_path(topic, subscription)}/$DeadLetterQueue"


def channel_of(properties: Mapping[str | bytes, object] | None) -> str | None:
    """The logical channel in a received message's application properties,
    or None when it has none (a message from another producer)."""
    properties = properties or {}
    value = properties.get(b"channel", properties.get("channel"))
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def replayed_for(properties: Mapping[str | bytes, object] | None) -> str | None:
    """The subscription a replayed message is for (`REPLAY_FOR`), or None."""
    if not properties:
        return None
    value = properties.get(b"replay_for", properties.get(REPLAY_FOR))
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def sql_filter(pattern: str, property_name: str = "channel") -> str | None:
    """A Service Bus SQL rule matching what `pattern` matches, or None when
    the glob has a ``[...]`` set, which SQL ``LIKE`` cannot express (the
    client-side match still applies). ``?`` becomes ``_``, one character,
    where the glob's ``?`` is one byte: the two agree on ASCII channels.

    ```python
    assert sql_filter("shop:notification_event:Order*") == (
        "channel LIKE 'shop:notification!_event:Order%' ESCAPE '!'"
    )
    ```
    """
    out: list[str] = []
    chars = iter(pattern)
    for char in chars:
        if char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        elif char == "[":
            return None
        else:
            if char == "\\":
                char = next(chars, "\\")
            if char in "%_!":
                out.append("!")
            out.append("''" if char == "'" else char)
    return f"{property_name} LIKE '{''.join(out)}' ESCAPE '!'"
