"""RabbitMQ: where things are.

The exchanges and queues of a prefix, the routing key of a message and the
channel of a routing key, and the binding key that covers a glob. Pure, with
no client; docs/rabbitmq.md gives the layout and the glob mapping.
"""

from __future__ import annotations

import json
import re
from typing import Any

from mediator.transport import Message, glob_after_prefix, quote

__all__ = ["MANDATORY_KEY", "Layout", "binding_key", "covers", "routing_key_of"]

MANDATORY_KEY = "mediator:mandatory"
"""The routing key a mandatory publish adds in a ``BCC`` header (stripped by
RabbitMQ before delivery): the alternate exchange binds it to itself, which
leads to no queue, so RabbitMQ returns such a message. One word holding ``:``,
so no key `binding_key` makes matches it but ``#``, which matches the message anyway."""

_CHANNEL_CACHE = 4096
"""How many routing keys `Layout.channel` remembers the channel of."""


class Layout:
    """The names one prefix uses on RabbitMQ: a topic exchange named by the
    prefix, ``{prefix}.{group}`` queues, and the dead-letter and unroutable
    exchanges and queues."""

    __slots__ = ("_channels", "prefix")

    def __init__(self, prefix: str) -> None:
        if not prefix or prefix.startswith("amq."):
            raise ValueError(
                f"channel_prefix {prefix!r} cannot name a RabbitMQ exchange: it must be "
                "non-empty and not start with 'amq.' (reserved by RabbitMQ)"
            )
        if len(f"{prefix}.unroutable.keep".encode()) > 255:
            raise ValueError(
                f"channel_prefix {quote(prefix, 100)} is too long: RabbitMQ names are at "
                "most 255 bytes, and the broker adds '.unroutable.keep' and group names to it"
            )
        self.prefix = prefix
        self._channels: dict[str, str] = {}

    @property
    def exchange(self) -> str:
        """The durable topic exchange every message is published to: the prefix."""
        return self.prefix

    @property
    def dead_letter_exchange(self) -> str:
        """The fanout exchange dead letters go through: ``{prefix}.dead-letter``."""
        return f"{self.prefix}.dead-letter"

    @property
    def dead_letter_queue(self) -> str:
        """The durable queue that keeps dead letters: ``{prefix}.dead-letter``."""
        return f"{self.prefix}.dead-letter"

    @property
    def unroutable_exchange(self) -> str:
        """The exchange's alternate exchange: ``{prefix}.unroutable``."""
        return f"{self.prefix}.unroutable"

    @property
    def unroutable_queue(self) -> str:
        """The durable queue that keeps messages no queue was bound for: ``{prefix}.unroutable``."""
        return f"{self.prefix}.unroutable"

    @property
    def kept_exchange(self) -> str:
        """The fanout exchange into `unroutable_queue`, the alternate exchange's own."""
        return f"{self.prefix}.unroutable.keep"

    def group_queue(self, group: str) -> str:
        """The durable quorum queue of consumer group `group`: ``{prefix}.{group}``."""
        return f"{self.prefix}.{group}"

    def check_group(self, group: str) -> None:
        """Raise ValueError when `group` cannot name a group queue of its own."""
        if not group or group in ("dead-letter", "unroutable"):
            raise ValueError(
                f"group {group!r} cannot name a queue: it must be non-empty and neither "
                "'dead-letter' nor 'unroutable', which name the broker's own queues"
            )
        if len(self.group_queue(group).encode()) > 255:
            raise ValueError(
                f"group {quote(group, 100)} is too long: the queue name "
                "'{prefix}.{group}' must be at most 255 bytes"
            )

    def group_queue_arguments(self) -> dict[str, Any]:
        """The arguments a group queue is declared with: quorum, dead-lettering."""
        return {"x-queue-type": "quorum", "x-dead-letter-exchange": self.dead_letter_exchange}

    def channel(self, routing_key: str) -> str:
        """The logical channel of a routing key on this prefix's exchange: the
        part before the first dot is the type, the rest the name."""
        name = self._channels.get(routing_key)
        if name is None:
            kind, dot, rest = routing_key.partition(".")
            name = f"{self.prefix}:{kind}:{rest}" if dot else f"{self.prefix}:{kind}"
            if len(self._channels) >= _CHANNEL_CACHE:
                self._channels.clear()
            self._channels[routing_key] = name
        return name

    def alternate_exchange_policy(self) -> str:
        """The command giving an exchange declared without one its alternate exchange."""
        definition = json.dumps(
            {"alternate-exchange": self.unroutable_exchange}, separators=(",", ":")
        )
        return (
            f"rabbitmqctl set_policy {self.exchange}-unroutable "
            f"'^{_regex_literal(self.exchange)}$' '{definition}' "
            "--apply-to exchanges"
        )


def routing_key_of(message: Message) -> str:
    """The routing key of `message`: ``{message_type}.{message_name}``."""
    return f"{message.message_type}.{message.message_name}"


def _regex_literal(name: str) -> str:
    return re.sub(r"[.^$*+?{}\[\]|()\\]", lambda m: f"\\{m.group()}", name)


# -- patterns --------------------------------------------------------------------


def _plain_words(text: str) -> bool:
    # A word that is exactly "*" or "#" would be a wildcard in a binding key.
    return all(word not in ("*", "#") for word in text.split("."))


def binding_key(pattern: str, prefix: str) -> str:
    """The narrowest AMQP topic binding key that covers every routing key
    whose logical channel `pattern` can match on the exchange of `prefix`;
    the broker filters deliveries by the glob in process.

    ```python
    assert binding_key("shop:notification_event:OrderPlaced", "shop") == (
        "notification_event.OrderPlaced"
    )
    assert binding_key("shop:notification_event:Order*", "shop") == "notification_event.#"
    assert binding_key("shop:*:Order?", "shop") == "#"
    ```

    Raises ValueError when `pattern` can match no channel of `prefix`.
    """
    rest = glob_after_prefix(pattern, prefix)
    if rest is None:
        return "#"  # a wildcard within the prefix: this exchange holds only its channels
    if ":" not in rest or None in rest[: rest.index(":")]:
        return "#"  # the type part is not pinned down
    colon = rest.index(":")
    kind = "".join(t for t in rest[:colon] if t is not None)
    name = rest[colon + 1 :]
    if not kind or "." in kind or not _plain_words(kind):
        return "#"
    if None not in name:
        literal = "".join(t for t in name if t is not None)
        return f"{kind}.{literal}" if _plain_words(literal) else f"{kind}.#"
    # Whole words before the first wildcard pin the key down further; the
    # rest may hold dots, so it is "#", never "*".
    literal_head = "".join(t for t in name[: name.index(None)] if t is not None)
    words = literal_head.split(".")[:-1]
    if not _plain_words(".".join(words)):
        words = []
    return ".".join([kind, *words, "#"])


def covers(key: str, routing_key: str) -> bool:
    """Whether a key that `binding_key` made matches `routing_key` in AMQP."""
    if key == "#":
        return True
    if key.endswith(".#"):
        head = key[:-2]
        return routing_key == head or routing_key.startswith(f"{head}.")
    return key == routing_key
