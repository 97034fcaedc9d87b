"""Kinds of bad input a consumer must refuse, each with the reason it must give.

The codec tests decode every case directly; a transport compliance suite can
publish the same bytes through a real broker and check that each is refused,
counted and dead-lettered with this reason while the consumer keeps running.
Nothing here depends on a broker.

Each case is a `BadInput`: an `id`, a `build(name)` that returns fresh bytes
(new UUIDs on every call, so a broker that deduplicates by message id never
drops a repeat), and the expected `DecodeFailure` value. `name` is the
`message_name` under which the consumer registered a NotificationEvent with
the fields of `Probe` (``PROBE_NAME`` for `Probe` itself; a suite that needs a
unique name per run can subclass `Probe` with ``name=...``). The consumer's
`EventMap` must also bind `LocalProbe`, a DomainEvent, so that a message
naming a local-only event is refused although the class is known:
`probe_event_map()` builds such a map.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import attrs
import orjson

from mediator import DomainEvent, EventMap, NotificationEvent
from mediator.transport import DEFAULT_MAX_MESSAGE_SIZE

__all__ = [
    "CASES",
    "LOCAL_NAME",
    "PROBE_NAME",
    "BadInput",
    "LocalProbe",
    "Probe",
    "probe_event_map",
    "valid",
]

PROBE_NAME = "BadInputProbe"
LOCAL_NAME = "BadInputLocalProbe"
DEEP = 10_000
"""Nesting depth of the "deep" cases: far beyond any parser's recursion limit."""


@attrs.frozen(kw_only=True)
class Probe(NotificationEvent, name=PROBE_NAME):
    """The event the cases are written against."""

    user_id: int
    name: str = "anonymous"


@attrs.frozen(kw_only=True)
class LocalProbe(DomainEvent, name=LOCAL_NAME):
    """A local-only event: known to the consumer, never accepted from a broker."""


def probe_event_map(probe: type[NotificationEvent] = Probe) -> EventMap:
    """An EventMap that decodes `probe` (`Probe`, or a class with its fields
    and name in another model form) and binds `LocalProbe` locally."""
    events = EventMap()
    events.register(probe)

    @events.bind(LocalProbe)
    async def ignore(event: LocalProbe) -> None:
        return None

    return events


class BadInput(NamedTuple):
    id: str
    build: Callable[[str], bytes]
    reason: str


def _body(name: str) -> dict[str, Any]:
    event_id = str(uuid.uuid4())
    return {
        "message_type": "notification_event",
        "message_name": name,
        "message_id": event_id,
        "payload": {
            "event_id": event_id,
            "event_timestamp": datetime.now(UTC).isoformat(),
            "user_id": 7,
            "name": "Ada",
        },
        "headers": {"correlation_id": uuid.uuid4().hex},
    }


def valid(name: str = PROBE_NAME) -> bytes:
    """A well-formed envelope of `Probe` under `name` (compact, as orjson writes it)."""
    return orjson.dumps(_body(name))


def _edit(**changes: Any) -> Callable[[str], bytes]:
    """A valid envelope with top-level keys replaced (a value of `_DROP` removes the key)."""

    def build(name: str) -> bytes:
        body = _body(name)
        for key, value in changes.items():
            if value is _DROP:
                del body[key]
            else:
                body[key] = value
        return orjson.dumps(body)

    return build


def _edit_payload(**changes: Any) -> Callable[[str], bytes]:
    """A valid envelope with payload keys replaced (a value of `_DROP` removes the key)."""

    def build(name: str) -> bytes:
        body = _body(name)
        for key, value in changes.items():
            if value is _DROP:
                del body["payload"][key]
            else:
                body["payload"][key] = value
        return orjson.dumps(body)

    return build


def _replace(old: bytes, new: bytes) -> Callable[[str], bytes]:
    """A valid envelope with its first `old` replaced by `new`, in the bytes."""

    def build(name: str) -> bytes:
        data = valid(name)
        assert old in data, (old, data)
        return data.replace(old, new, 1)

    return build


def _wrap(prefix: bytes = b"", suffix: bytes = b"") -> Callable[[str], bytes]:
    return lambda name: prefix + valid(name) + suffix


def _constant(data: bytes) -> Callable[[str], bytes]:
    return lambda name: data


def _half(name: str) -> bytes:
    data = valid(name)
    return data[: len(data) // 2]


def _same_id_payload_differs(name: str) -> bytes:
    body = _body(name)
    body["payload"]["event_id"] = str(uuid.uuid4())
    return orjson.dumps(body)


def _deep_array(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _deep_object(depth: int) -> bytes:
    return b'{"x":' * depth + b"{}" + b"}" * depth


def _oversized(name: str) -> bytes:
    body = _body(name)
    body["payload"]["padding"] = "x" * DEFAULT_MAX_MESSAGE_SIZE
    return orjson.dumps(body)


_DROP = object()
_HUGE = b"1" + b"0" * 400  # 10**400
_EVENT = b'"event_id":'
_USER = b'"user_id":7'


CASES: list[BadInput] = [
    # Not JSON at all, or not JSON a careful reader accepts.
    BadInput("empty", _constant(b""), "not_json"),
    BadInput("whitespace-only", _constant(b" \r\n\t "), "not_json"),
    BadInput("not-json", _constant(b"{not json"), "not_json"),
    BadInput("truncated", _half, "not_json"),
    BadInput("trailing-garbage", _wrap(suffix=b" x"), "not_json"),
    BadInput("two-objects", lambda name: valid(name) + valid(name), "not_json"),
    BadInput("invalid-utf8", _replace(b'"name":"Ada"', b'"name":"A\xff\xfe"'), "not_json"),
    BadInput("utf8-bom", _wrap(prefix=b"\xef\xbb\xbf"), "not_json"),
    BadInput("nan-literal", _replace(_USER, _USER + b',"x":NaN'), "not_json"),
    BadInput("infinity-literal", _replace(_USER, _USER + b',"x":-Infinity'), "not_json"),
    BadInput("lone-surrogate-escape", _replace(b'"Ada"', b'"\\ud800"'), "not_json"),
    BadInput("raw-control-character", _replace(b'"Ada"', b'"A\x00da"'), "not_json"),
    BadInput("single-quotes", lambda name: valid(name).replace(b'"', b"'"), "not_json"),
    # JSON, but not an object.
    BadInput("top-level-string", _constant(b'"notification_event"'), "not_object"),
    BadInput("top-level-number", _constant(b"42"), "not_object"),
    BadInput("top-level-array", lambda name: b"[" + valid(name) + b"]", "not_object"),
    BadInput("top-level-null", _constant(b"null"), "not_object"),
    # An object without the envelope's keys.
    BadInput("empty-object", _constant(b"{}"), "missing_key"),
    BadInput("missing-message-type", _edit(message_type=_DROP), "missing_key"),
    BadInput("missing-message-name", _edit(message_name=_DROP), "missing_key"),
    BadInput("missing-message-id", _edit(message_id=_DROP), "missing_key"),
    BadInput("missing-payload", _edit(payload=_DROP), "missing_key"),
    # The envelope's keys with values of the wrong kind.
    BadInput("unknown-message-type", _edit(message_type="command"), "bad_envelope"),
    BadInput("message-type-not-string", _edit(message_type=["notification_event"]), "bad_envelope"),
    BadInput("message-type-of-other-kind", _edit(message_type="ecst_event"), "bad_envelope"),
    BadInput("message-name-not-string", _edit(message_name=7), "bad_envelope"),
    BadInput("message-id-not-uuid", _edit(message_id="not-a-uuid"), "bad_envelope"),
    BadInput("message-id-number", _edit(message_id=7), "bad_envelope"),
    BadInput("message-id-one-megabyte", _edit(message_id="x" * 1_000_000), "bad_envelope"),
    BadInput("payload-array", _edit(payload=[1, 2]), "bad_envelope"),
    BadInput("payload-null", _edit(payload=None), "bad_envelope"),
    BadInput("headers-not-object", _edit(headers="correlation_id"), "bad_envelope"),
    BadInput("headers-empty-array", _edit(headers=[]), "bad_envelope"),
    BadInput("headers-false", _edit(headers=False), "bad_envelope"),
    BadInput("headers-non-string-value", _edit(headers={"retries": 3}), "bad_envelope"),
    BadInput("headers-nested-object", _edit(headers={"trace": {"id": "1"}}), "bad_envelope"),
    # A name the consumer must not build.
    BadInput("unknown-name", lambda name: valid(name + ".Unknown"), "unknown_name"),
    BadInput("domain-event-name", lambda name: valid(LOCAL_NAME), "unknown_name"),
    BadInput("name-one-million-characters", lambda name: valid("N" * 1_000_000), "unknown_name"),
    # A payload that does not fit the event class.
    BadInput("missing-event-id", _edit_payload(event_id=_DROP), "invalid_payload"),
    BadInput("missing-event-timestamp", _edit_payload(event_timestamp=_DROP), "invalid_payload"),
    BadInput(
        "event-timestamp-only-as-a-value",
        _edit_payload(event_timestamp=_DROP, name="event_timestamp"),
        "invalid_payload",
    ),
    BadInput("missing-required-field", _edit_payload(user_id=_DROP), "invalid_payload"),
    BadInput("string-for-int", _edit_payload(user_id="7"), "invalid_payload"),
    BadInput("float-for-int", _edit_payload(user_id=7.0), "invalid_payload"),
    BadInput("bool-for-int", _edit_payload(user_id=True), "invalid_payload"),
    BadInput("null-for-int", _edit_payload(user_id=None), "invalid_payload"),
    BadInput("int-for-string", _edit_payload(name=5), "invalid_payload"),
    BadInput("huge-int-for-int", _replace(_USER, b'"user_id":' + _HUGE), "invalid_payload"),
    BadInput(
        "huge-int-in-extra-field", _replace(_USER, _USER + b',"x":' + _HUGE), "invalid_payload"
    ),
    BadInput("float-overflow", _replace(_USER, _USER + b',"x":1e400'), "invalid_payload"),
    BadInput(
        "timestamp-out-of-range",
        _edit_payload(event_timestamp="2026-13-24T20:01:02"),
        "invalid_payload",
    ),
    BadInput("timestamp-not-a-date", _edit_payload(event_timestamp="yesterday"), "invalid_payload"),
    BadInput("event-id-not-uuid", _edit_payload(event_id="not-a-uuid"), "invalid_payload"),
    BadInput("event-id-differs-from-message-id", _same_id_payload_differs, "id_mismatch"),
    # Keys given twice: a reader keeping the first would see another message.
    BadInput(
        "duplicate-message-name",
        lambda name: valid(name).replace(b'"message_id"', b'"message_name":"Other","message_id"'),
        "duplicate_key",
    ),
    BadInput(
        "duplicate-message-id",
        lambda name: valid(name).replace(
            b'"payload"', b'"message_id":"' + str(uuid.uuid4()).encode() + b'","payload"'
        ),
        "duplicate_key",
    ),
    BadInput(
        "duplicate-event-id",
        _replace(_USER, _USER + b',"event_id":"' + str(uuid.uuid4()).encode() + b'"'),
        "duplicate_key",
    ),
    BadInput("duplicate-user-id", _replace(_USER, _USER + b',"user_id":8'), "duplicate_key"),
    BadInput(
        "duplicate-in-nested-object",
        _replace(_USER, _USER + b',"extra":{"a":[{"b":1,"b":2}]}'),
        "duplicate_key",
    ),
    BadInput(
        "duplicate-header",
        _replace(b'"headers":{', b'"headers":{"x":"1","x":"2",'),
        "duplicate_key",
    ),
    BadInput(
        "duplicate-spelled-with-escape",
        _replace(_USER, _USER + b',"user\\u005fid":8'),
        "duplicate_key",
    ),
    BadInput(
        # An escaped colon in a value makes key counting by colons come out even.
        "duplicate-hidden-by-escaped-colon",
        _replace(_USER, _USER + b',"user_id":8,"x":"\\u003a"'),
        "duplicate_key",
    ),
    # Nesting deeper than any reader needs, and than parsers can recurse.
    BadInput(
        "deep-array-in-field",
        _replace(_USER, b'"user_id":' + _deep_array(DEEP)),
        "too_deep",
    ),
    BadInput(
        "deep-object-in-envelope",
        _replace(b'"payload"', b'"x":' + _deep_object(DEEP) + b',"payload"'),
        "too_deep",
    ),
    BadInput(
        "deep-array-300-levels",
        _replace(_USER, _USER + b',"x":' + _deep_array(300)),
        "too_deep",
    ),
    # Too big to parse at all.
    BadInput("over-max-size", _oversized, "too_large"),
]
