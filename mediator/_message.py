"""The wire envelope: `Message`, its bytes and its logical channel.

```json
{"message_type": "notification_event", "message_name": "UserJoined",
 "message_id": "9f62e977-…", "payload": {"event_id": "9f62e977-…", ...},
 "headers": {"correlation_id": "…"}}
```

`mediator._codec` turns received bytes back into envelopes and events.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import msgspec
import orjson

from mediator._models import jsonable

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MESSAGE_TYPES",
    "Message",
    "RawPayload",
    "channel_for",
    "encode_message",
]

MESSAGE_TYPES = frozenset({"notification_event", "ecst_event"})
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
"""Messages larger than this (bytes) are refused by decoders: 1 MiB."""

_JSON: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


class RawPayload(Mapping[str, Any]):
    """A received payload: its JSON bytes, which `encode_message` writes back
    unchanged, and a read-only mapping of the decoded JSON, parsed on first
    access unless the codec hands over the dict it parsed already."""

    __slots__ = ("_data", "_raw")

    def __init__(self, raw: bytes | None, data: dict[str, Any] | None = None) -> None:
        if raw is None and data is None:
            raise ValueError("a RawPayload needs its bytes, its parsed dict, or both")
        self._raw = raw
        self._data = data

    @property
    def raw(self) -> bytes:
        """The payload's JSON text. Given only the dict (parsed from text
        that orjson writes back byte for byte), it is that dict written again."""
        raw = self._raw
        if raw is None:
            raw = self._raw = orjson.dumps(self._data)
        return raw

    def _parsed(self) -> dict[str, Any]:
        if self._data is None:
            self._data = _JSON.decode(self.raw)
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._parsed()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parsed())

    def __len__(self) -> int:
        return len(self._parsed())

    def __repr__(self) -> str:
        return repr(self._parsed())


@attrs.frozen(kw_only=True)
class Message:
    """One envelope as it travels through a broker.

    `payload` holds the event's field values when producing and a read-only
    `RawPayload` when consuming; `encode_message` writes the same bytes
    either way. `partition_key` is the value of the event's ``partition_key=``
    field, the record key where a transport partitions; it is not in the
    JSON, so a received message has None.
    """

    message_type: str
    message_name: str
    message_id: uuid.UUID = attrs.field(factory=uuid.uuid4)
    payload: Mapping[str, Any]
    headers: Mapping[str, str] = attrs.field(factory=dict)
    partition_key: str | None = None


def channel_for(prefix: str, message: Message) -> str:
    """The logical channel of `message`: ``{prefix}:{message_type}:{message_name}``."""
    return f"{prefix}:{message.message_type}:{message.message_name}"


def _default(obj: Any) -> Any:
    # orjson calls this for what it cannot write itself: nested models, sets,
    # a received payload (written back as its bytes).
    if isinstance(obj, RawPayload):
        return orjson.Fragment(obj.raw)
    return jsonable(obj)


def encode_message(message: Message) -> bytes:
    """The envelope as UTF-8 JSON bytes, written with orjson."""
    return orjson.dumps(
        {
            "message_type": message.message_type,
            "message_name": message.message_name,
            "message_id": message.message_id,
            "payload": message.payload,
            "headers": message.headers,
        },
        default=_default,
    )
