"""The wire envelope and its codec: the one place events become bytes and back.

```json
{"message_type": "notification_event", "message_name": "UserJoined",
 "message_id": "9f62e977-…", "payload": {"event_id": "9f62e977-…", ...},
 "headers": {"correlation_id": "…"}}
```
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC
from typing import Any

import attrs
import msgspec
import orjson

from mediator._events import Event, as_utc, event_name, message_type_of
from mediator._exceptions import DecodeFailure, MessageDecodeError

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MESSAGE_TYPES",
    "Message",
    "MessageCodec",
    "channel_for",
    "encode_message",
]

MESSAGE_TYPES = frozenset({"notification_event", "ecst_event"})
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
"""Messages larger than this (bytes) are refused by decoders: 1 MiB."""

_REQUIRED = ("message_type", "message_name", "message_id", "payload")


class _Envelope(msgspec.Struct):
    message_type: str
    message_name: str
    message_id: uuid.UUID
    payload: dict[str, Any]
    headers: dict[str, str] | None = None


_ENVELOPE = msgspec.json.Decoder(_Envelope)
_EVENT_KEYS = ("event_id", "event_timestamp")


class _RawEnvelope(msgspec.Struct):
    message_type: str
    message_name: str
    message_id: uuid.UUID
    payload: msgspec.Raw
    headers: dict[str, str] | None = None


_RAW_ENVELOPE = msgspec.json.Decoder(_RawEnvelope)


class RawPayload(Mapping[str, Any]):
    """A received payload kept as its JSON bytes, parsed on first access:
    the consumer builds the event straight from the bytes, so most messages
    never need the dict."""

    __slots__ = ("_data", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._data: dict[str, Any] | None = None

    def _parsed(self) -> dict[str, Any]:
        if self._data is None:
            self._data = orjson.loads(self.raw)
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

    On the producing side `payload` holds the event's field values (UUIDs and
    datetimes as Python objects); on the consuming side it is a `RawPayload`,
    a read-only mapping of the JSON parsed on first access. Either way
    `encode_message` writes the same bytes.
    """

    message_type: str
    message_name: str
    message_id: uuid.UUID
    payload: Mapping[str, Any]
    headers: Mapping[str, str] = attrs.field(factory=dict)


def channel_for(prefix: str, message: Message) -> str:
    """The logical channel of `message`: ``{prefix}:{message_type}:{message_name}``."""
    return f"{prefix}:{message.message_type}:{message.message_name}"


_FIELDS: dict[type[Any], tuple[str, ...]] = {}


def _field_names(cls: type[Any]) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = tuple(a.name for a in attrs.fields(cls))
        _FIELDS[cls] = names
    return names


def _fields_of(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in _field_names(type(obj))}


def _default(obj: Any) -> Any:
    # orjson calls this for what it cannot write itself: nested attrs classes.
    if attrs.has(type(obj)):
        return _fields_of(obj)
    if isinstance(obj, RawPayload):
        return orjson.Fragment(obj.raw)
    if isinstance(obj, frozenset | set):
        return list(obj)
    raise TypeError(f"cannot serialize {type(obj).__qualname__} in an event payload")


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


class MessageCodec:
    """Turns events into envelopes and received bytes back into events.

    Decoding builds only classes that `event_class` (usually
    `EventMap.event_class`) returns for a name; a message never names code to
    import. It is strict about what it builds (a missing field or a value of
    the wrong JSON type is refused; no coercion) and tolerant about extra
    fields, which it ignores. Every failure is a `MessageDecodeError`.
    """

    __slots__ = ("_decoders", "_event_class", "max_size")

    def __init__(
        self,
        event_class: Callable[[str], type[Event] | None],
        *,
        max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self._event_class = event_class
        self.max_size = max_size
        self._decoders: dict[type[Event], msgspec.json.Decoder[Any]] = {}

    @staticmethod
    def to_message(event: Event, headers: Mapping[str, str] | None = None) -> Message:
        """The envelope of a NotificationEvent or ECSTEvent."""
        message_type = message_type_of(type(event))
        if message_type is None:
            raise TypeError(
                f"{type(event).__qualname__} is not a NotificationEvent or ECSTEvent; "
                "only those travel through a broker"
            )
        return Message(
            message_type=message_type,
            message_name=event_name(type(event)),
            message_id=event.event_id,
            payload=_fields_of(event),
            headers=dict(headers) if headers else {},
        )

    def decode(self, data: bytes | str) -> tuple[Message, Event]:
        """Parse and validate `data`, returning the envelope and its event."""
        fast = self._decode_fast(data)
        if fast is not None:
            return fast
        message = self.decode_message(data)
        return message, self.to_event(message)

    def _decode_fast(self, data: bytes | str) -> tuple[Message, Event] | None:
        """The common case in two typed parses straight from the bytes; None
        sends anything unusual through the checks that name the reason."""
        if len(data) > self.max_size:
            return None
        try:
            envelope = _RAW_ENVELOPE.decode(data)
        except msgspec.DecodeError:
            return None
        raw = bytes(envelope.payload)
        # A typed decode fills defaults, so presence of the required keys is
        # checked on the bytes (a miss goes to the slow path for its reason).
        if b'"event_timestamp"' not in raw or envelope.message_type not in MESSAGE_TYPES:
            return None
        event_type = self._event_class(envelope.message_name)
        if event_type is None or message_type_of(event_type) != envelope.message_type:
            return None
        decoder = self._decoders.get(event_type)
        if decoder is None:
            decoder = self._decoders[event_type] = msgspec.json.Decoder(event_type)
        try:
            event: Event = decoder.decode(raw)
        except msgspec.DecodeError:
            return None
        if event.event_id != envelope.message_id or event.event_timestamp.tzinfo is not UTC:
            return None
        message = Message(
            message_type=envelope.message_type,
            message_name=envelope.message_name,
            message_id=envelope.message_id,
            payload=RawPayload(raw),
            headers=envelope.headers or {},
        )
        return message, event

    def decode_message(self, data: bytes | str) -> Message:
        """Parse and validate the envelope only."""
        size = len(data) if isinstance(data, bytes) else len(data.encode())
        if size > self.max_size:
            raise MessageDecodeError(
                DecodeFailure.TOO_LARGE,
                f"{size} bytes exceeds the limit of {self.max_size} bytes",
            )
        # Fast path for well-formed envelopes: one typed parse in C. Anything
        # it refuses goes through the checks below, which name the reason.
        try:
            envelope = _ENVELOPE.decode(data)
        except msgspec.DecodeError:
            pass
        else:
            if envelope.message_type in MESSAGE_TYPES:
                return Message(
                    message_type=envelope.message_type,
                    message_name=envelope.message_name,
                    message_id=envelope.message_id,
                    payload=envelope.payload,
                    headers=envelope.headers or {},
                )
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise MessageDecodeError(DecodeFailure.NOT_JSON, str(exc)) from None
        if not isinstance(obj, dict):
            raise MessageDecodeError(
                DecodeFailure.NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}"
            )
        raw_id = obj.get("message_id")
        message_id = raw_id if isinstance(raw_id, str) else None
        missing = [key for key in _REQUIRED if key not in obj]
        if missing:
            raise MessageDecodeError(
                DecodeFailure.MISSING_KEY, f"missing {', '.join(missing)}", message_id
            )
        message_type, name, payload = obj["message_type"], obj["message_name"], obj["payload"]
        headers = obj.get("headers") or {}
        problem = None
        if not isinstance(message_type, str) or message_type not in MESSAGE_TYPES:
            problem = f"message_type {message_type!r} is not one of {sorted(MESSAGE_TYPES)}"
        elif not isinstance(name, str):
            problem = "message_name must be a string"
        elif not isinstance(payload, dict):
            problem = "payload must be a JSON object"
        elif not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            problem = "headers must be an object of strings"
        if problem is None:
            try:
                parsed_id = msgspec.convert(message_id, uuid.UUID)
            except msgspec.ValidationError:
                problem = f"message_id {raw_id!r} is not a UUID"
        if problem is not None:
            raise MessageDecodeError(DecodeFailure.BAD_ENVELOPE, problem, message_id)
        return Message(
            message_type=message_type,
            message_name=name,
            message_id=parsed_id,
            payload=payload,
            headers=headers,
        )

    def to_event(self, message: Message) -> Event:
        """Build the registered event class that `message` names."""
        message_id = message.message_id
        event_type = self._event_class(message.message_name)
        if event_type is None:
            raise MessageDecodeError(
                DecodeFailure.UNKNOWN_NAME,
                f"no event class registered under {message.message_name!r}; bind a handler for it "
                "or call EventMap.register(...)",
                str(message_id),
            )
        expected_type = message_type_of(event_type)
        if expected_type != message.message_type:
            raise MessageDecodeError(
                DecodeFailure.BAD_ENVELOPE,
                f"{message.message_name} is a {expected_type}, the message says "
                f"{message.message_type}",
                str(message_id),
            )
        missing = [key for key in _EVENT_KEYS if key not in message.payload]
        if missing:
            raise MessageDecodeError(
                DecodeFailure.INVALID_PAYLOAD,
                f"payload is missing {', '.join(missing)}",
                str(message_id),
            )
        try:
            event = msgspec.convert(message.payload, event_type)
        except msgspec.ValidationError as exc:
            raise MessageDecodeError(
                DecodeFailure.INVALID_PAYLOAD, str(exc), str(message_id)
            ) from None
        stamp = event.event_timestamp
        if stamp.tzinfo is not UTC:
            # msgspec builds attrs classes without running converters.
            try:
                event = attrs.evolve(event, event_timestamp=as_utc(stamp))
            except ValueError:
                raise MessageDecodeError(
                    DecodeFailure.INVALID_PAYLOAD,
                    "event_timestamp has no UTC offset; timestamps must be timezone-aware",
                    str(message_id),
                ) from None
        if event.event_id != message.message_id:
            raise MessageDecodeError(
                DecodeFailure.ID_MISMATCH,
                f"payload.event_id {event.event_id} differs from message_id",
                str(message_id),
            )
        return event
