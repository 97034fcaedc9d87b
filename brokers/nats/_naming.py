"""NATS: where things are.

The stream of a prefix, the subject of a message and the channel of a
subject, the subject filter that covers a glob, the durable consumer of a
group, and the servers of a ``nats://`` URL. Pure, with no client;
docs/nats.md gives the layout and the glob mapping.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from mediator.transport import Message, PublishError, glob_after_prefix, quote

__all__ = ["Layout", "check_options", "headers_of", "servers_of_url", "subject_filter"]

_PREFIX = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_GROUP = re.compile(r"[A-Za-z0-9_-]{1,200}")
_BAD_TOKEN = re.compile(r"[\s\x00]")
_CHANNEL_CACHE = 4096
DEAD_LETTER = "dead-letter"


class Layout:
    """The names one prefix uses on NATS: a stream named by the prefix
    (``.`` as ``_``) capturing ``{prefix}.>``, subjects
    ``{prefix}.{message_type}.{message_name}``, dead letters on
    ``{prefix}.dead-letter``, and a durable consumer per group."""

    __slots__ = ("_channels", "_subjects", "prefix", "stream")

    def __init__(self, prefix: str) -> None:
        if not _PREFIX.fullmatch(prefix) or len(prefix) > 200:
            raise ValueError(
                f"channel_prefix {quote(prefix, 200)} cannot start a NATS subject: use letters, "
                "digits, '_' and '-' in words separated by single '.' (no ':'), at most 200"
            )
        self.prefix = prefix
        self.stream = prefix.replace(".", "_")
        self._channels: dict[str, str | None] = {}
        self._subjects: dict[tuple[str, str], str] = {}

    @property
    def subjects(self) -> str:
        """What the stream captures: ``{prefix}.>``."""
        return f"{self.prefix}.>"

    @property
    def dead_letter_subject(self) -> str:
        """Where dead letters go, inside the stream: ``{prefix}.dead-letter``
        (two tokens, so no subscription's filter covers it)."""
        return f"{self.prefix}.{DEAD_LETTER}"

    @property
    def widest_filter(self) -> str:
        """The filter of a group's consumer, and of a subscription whose glob
        pins nothing down: ``{prefix}.*.>``, every message subject and not
        the dead letters."""
        return f"{self.prefix}.*.>"

    def subject_of(self, message: Message) -> str:
        """The subject of `message`: ``{prefix}.{message_type}.{message_name}``;
        a name NATS refuses raises PublishError."""
        key = (message.message_type, message.message_name)
        subject = self._subjects.get(key)
        if subject is None:
            subject = self.subject(*key)
            if len(self._subjects) >= _CHANNEL_CACHE:
                self._subjects.clear()
            self._subjects[key] = subject
        return subject

    def subject(self, message_type: str, message_name: str) -> str:
        subject = f"{self.prefix}.{message_type}.{message_name}".replace(":", ".")
        tokens = subject.split(".")
        if any(not t or t in ("*", ">") or _BAD_TOKEN.search(t) for t in tokens):
            raise PublishError(
                f"{quote(repr(message_name), 200)} of type {quote(repr(message_type), 100)} "
                f"makes the subject {quote(subject, 300)}, which NATS refuses: no empty word "
                "('..'), no whitespace, no word that is '*' or '>'; give the event class a "
                "name= that fits"
            )
        return subject

    def channel(self, subject: str) -> str | None:
        """The logical channel of a subject of this prefix: the word after
        the prefix is the type, the rest the name; None for a subject that
        holds no channel (the dead letters)."""
        try:
            return self._channels[subject]
        except KeyError:
            pass
        head = f"{self.prefix}."
        rest = subject[len(head) :] if subject.startswith(head) else ""
        kind, dot, name = rest.partition(".")
        channel = f"{self.prefix}:{kind}:{name}" if dot and kind and name else None
        if len(self._channels) >= _CHANNEL_CACHE:
            self._channels.clear()
        self._channels[subject] = channel
        return channel

    def check_group(self, group: str) -> None:
        """Raise ValueError when `group` cannot name a durable consumer."""
        if not _GROUP.fullmatch(group):
            raise ValueError(
                f"group {quote(repr(group), 200)} cannot name a NATS durable consumer: use "
                "letters, digits, '_' and '-' only (no '.', '*', '>' or whitespace), 1 to 200"
            )

    def durable(self, group: str) -> str:
        """The durable pull consumer of `group`: ``{group}-group``, filtered
        by `widest_filter` and shared by every member and pattern of the group."""
        return f"{group}-group"

    def filter_of(self, pattern: str) -> str:
        """The narrowest subject filter covering what `pattern` matches here."""
        return subject_filter(pattern, self.prefix)


def subject_filter(pattern: str, prefix: str) -> str:
    """The narrowest NATS subject filter that covers every subject whose
    logical channel `pattern` can match under `prefix`; the glob itself
    then decides, in process, on each message's channel.

    ```python
    assert subject_filter("shop:notification_event:OrderPlaced", "shop") == (
        "shop.notification_event.OrderPlaced"
    )
    assert subject_filter("shop:notification_event:Order*", "shop") == "shop.notification_event.>"
    assert subject_filter("shop:*", "shop") == "shop.*.>"
    ```

    Raises ValueError when `pattern` can match no channel of `prefix`.
    """
    widest = f"{prefix}.*.>"
    rest = glob_after_prefix(pattern, prefix)
    if rest is None:
        return widest  # a wildcard within the prefix: the stream holds only its own
    if None not in rest:
        literal = "".join(c for c in rest if c is not None)
        kind, colon, name = literal.partition(":")
        if not colon:
            return widest  # matches no channel (no name part); harmless
        try:
            return Layout(prefix).subject(kind, name)
        except PublishError:
            return widest
    # Whole words before the first wildcard pin the filter down; the rest
    # may hold dots, so it is ">", never "*".
    literal_head = "".join(c for c in rest[: rest.index(None)] if c is not None)
    words = literal_head.replace(":", ".").split(".")[:-1]
    if not words or any(not w or w in ("*", ">") or _BAD_TOKEN.search(w) for w in words):
        return widest
    return ".".join([prefix, *words, ">"])


def servers_of_url(url: str) -> list[str]:
    """The servers of ``nats://[user:password@]host[:port][,host[:port]]``
    (``tls://`` for TLS; port 4222 when left out), each a URL nats-py takes,
    with the credentials on every one; any other URL raises ValueError."""
    parts = urlsplit(url)
    userinfo, at, hosts = (parts.netloc or "").rpartition("@")
    servers = [host.strip() for host in hosts.split(",")]
    if (
        parts.scheme not in ("nats", "tls")
        or not all(servers)
        or parts.path not in ("", "/")
        or parts.query
    ):
        raise ValueError(
            f"expected a URL of the form nats://[user:password@]host:port[,host:port] (or "
            f"tls://...), got {quote(url, 200)}; TLS contexts and credentials files go in the "
            "broker's tls= and user_credentials= keywords"
        )
    credentials = f"{userinfo}@" if at else ""
    return [
        f"{parts.scheme}://{credentials}{host if ':' in host else f'{host}:4222'}"
        for host in servers
    ]


def check_options(
    choices: dict[str, tuple[Any, tuple[str, ...]]],
    *,
    counts: dict[str, int],
    seconds: dict[str, float],
) -> None:
    """Refuse a broker keyword out of its range with a ValueError naming it."""
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"{name} must be {' or '.join(map(repr, allowed))}, got {value!r}")
    for name, count in counts.items():
        if count < 1:
            raise ValueError(f"NatsMessageBroker({name}={count}): must be at least 1")
    for name, value in seconds.items():
        if not value > 0:
            raise ValueError(f"NatsMessageBroker({name}={value}): must be above 0 seconds")


def headers_of(message: Message) -> dict[str, str]:
    """The NATS headers of `message`: ``Nats-Msg-Id`` (its message id, for
    JetStream's duplicate window), then its own headers; one NATS cannot
    carry raises PublishError."""
    headers = {"Nats-Msg-Id": str(message.message_id)}
    for name, value in message.headers.items():
        if "\r" in value or "\n" in value or not name or ":" in name or " " in name:
            raise PublishError(
                f"header {quote(repr(name), 100)} of message {message.message_id} cannot "
                "be a NATS header: a name holds no ':' or space, a value no line break"
            )
        headers[name] = value
    return headers
