"""Kafka names: the topic of a channel and back, topic regexes from channel
globs, group ids, and the servers of a ``kafka://`` URL."""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from mediator.transport import PublishError, quote

__all__ = [
    "channel_of_topic",
    "check_prefix",
    "consumer_group",
    "dead_letter_topic",
    "servers_of",
    "servers_of_url",
    "topic_name",
    "topic_pattern",
]

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_KINDS = re.compile(r"\.(notification_event|ecst_event)\.")


def check_prefix(prefix: str) -> None:
    """Refuse a channel prefix that cannot start a topic name, with a ValueError."""
    if not _TOPIC.fullmatch(prefix) or len(prefix) > 200:
        raise ValueError(
            f"channel_prefix {quote(prefix, 200)} cannot start a Kafka topic name: "
            "use letters, digits, '.', '_' and '-' only (no ':'), at most 200 of them"
        )


def topic_name(prefix: str, message_type: str, message_name: str) -> str:
    """The topic of channel ``{prefix}:{message_type}:{message_name}``:
    ``{prefix}.{message_type}.{message_name}``; a name Kafka refuses raises
    PublishError."""
    topic = f"{prefix}.{message_type}.{message_name}"
    if not _TOPIC.fullmatch(topic):
        raise PublishError(
            f"{quote(repr(message_name), 200)} makes the topic name "
            f"{quote(topic, 300)}, which "
            "Kafka refuses: topic names hold letters, digits, '.', '_' and '-' only, at "
            "most 249 of them; give the event class a name= that fits"
        )
    return topic


def dead_letter_topic(prefix: str) -> str:
    """The topic dead letters go to, which no subscription reads."""
    return f"{prefix}.dead-letter"


def consumer_group(prefix: str, group: str) -> str:
    """The Kafka consumer group of a subscription's `group`, under the prefix."""
    return f"{prefix}.{group}"


def topic_pattern(pattern: str) -> str:
    """A regex over topic names matching at least the topics of the channels
    that the glob `pattern` matches (``:`` becomes ``.``, a ``[...]`` set any
    one character), and only topics of channels; the glob itself then
    decides, in process, on each topic's channel.

    ```python
    assert topic_pattern("shop:notification_event:Order*").endswith(
        r"shop\\.notification_event\\.Order.*\\Z"
    )
    ```
    """
    out: list[str] = []
    i, size = 0, len(pattern)
    while i < size:
        char = pattern[i]
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            # The set ends at the first unescaped "]" (or the pattern's end),
            # as Redis reads it; here it stands for one character.
            i += 1
            while i < size and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
            out.append(".")
        else:
            if char == "\\" and i + 1 < size:
                i += 1
                char = pattern[i]
            out.append(r"\." if char in ".:" else re.escape(char))
        i += 1
    return r"(?=.*\.(?:notification_event|ecst_event)\.)" + "".join(out) + r"\Z"


def channel_of_topic(topic: str) -> str | None:
    """The logical channel a topic holds, or None for a topic that is not
    one (the dead-letter topic, another application's).

    ```python
    assert channel_of_topic("shop.notification_event.OrderPlaced") == (
        "shop:notification_event:OrderPlaced"
    )
    assert channel_of_topic("shop.dead-letter") is None
    ```
    """
    found = _KINDS.search(topic)
    if found is None:
        return None
    return f"{topic[: found.start()]}:{found.group(1)}:{topic[found.end() :]}"


def servers_of(servers: str | Sequence[str]) -> list[str]:
    """The bootstrap servers of ``"host:port,host:port"`` or of a list of them."""
    return [s.strip() for s in servers.split(",")] if isinstance(servers, str) else list(servers)


def servers_of_url(url: str) -> list[str]:
    """The bootstrap servers of ``kafka://host:port[,host:port]`` (port 9092
    when left out); any other URL raises ValueError."""
    parts = urlsplit(url)
    hosts = [host.strip() for host in (parts.netloc or "").split(",")]
    if parts.scheme != "kafka" or not all(hosts) or parts.path not in ("", "/"):
        raise ValueError(
            f"expected a URL of the form kafka://host:port[,host:port], got {quote(url, 200)}; "
            "security settings go in client_options"
        )
    return [host if ":" in host else f"{host}:9092" for host in hosts]
