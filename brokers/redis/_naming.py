"""Redis: the names of keys, channels, groups and group members.

Pure: no client. docs/redis-pubsub.md and docs/redis-streams.md say what
each key holds; every key starts with the broker's `channel_prefix`.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Literal

from mediator.transport import Message

ChannelLayout = Literal["name", "diator"]
"""What the last part of a Pub/Sub channel is: the message's name, or its id as diator had it."""

PRIVATE_GROUP_PREFIX = "solo:"
"""The group name prefix of an ungrouped Streams subscription's private group."""


def channel_name(prefix: str, message: Message, layout: ChannelLayout = "name") -> str:
    """The Pub/Sub channel, or the stream key, `message` goes to:
    ``{prefix}:{message_type}:{message_name}``, or with `layout` ``"diator"``
    ``{prefix}:{message_type}:{message_id}``."""
    last = str(message.message_id) if layout == "diator" else message.message_name
    return f"{prefix}:{message.message_type}:{last}"


def dead_letter_key(prefix: str) -> str:
    """The stream both Redis brokers append dead letters to."""
    return f"{prefix}:dead-letter"


def registry_key(prefix: str) -> str:
    """The set of every stream key that producers published to."""
    return f"{prefix}:streams"


def private_group() -> str:
    """A new private group's name (``solo:`` and a random id)."""
    return f"{PRIVATE_GROUP_PREFIX}{uuid.uuid4().hex}"


def consumer_name() -> str:
    """A new group member's name: host, process id and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
