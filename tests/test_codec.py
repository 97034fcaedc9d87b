"""The wire envelope: exact format on the way out, strict decoding on the way in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import attrs
import orjson
import pytest

from mediator import (
    DecodeFailure,
    DomainEvent,
    EventMap,
    MessageCodec,
    MessageDecodeError,
    NotificationEvent,
    encode_message,
)


@attrs.frozen(kw_only=True)
class Address:
    city: str


@attrs.frozen(kw_only=True)
class UserJoined(NotificationEvent):
    user_id: int
    name: str = "anonymous"
    address: Address | None = None


@attrs.frozen(kw_only=True)
class Premium(UserJoined, name="user.premium"):
    tier: int


@attrs.frozen(kw_only=True)
class LocalOnly(DomainEvent):
    pass


EVENT_ID = uuid.UUID("9f62e977-73f7-462b-92cb-8ea658d3bcb5")
STAMP = datetime(2026, 11, 24, 20, 1, 2, 123456, tzinfo=UTC)


def codec() -> MessageCodec:
    events = EventMap()
    events.register(UserJoined)
    return MessageCodec(events.event_class, max_size=2048)


def envelope(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "message_type": "notification_event",
        "message_name": "UserJoined",
        "message_id": str(EVENT_ID),
        "payload": {
            "event_id": str(EVENT_ID),
            "event_timestamp": "2026-11-24T20:01:02.123456+00:00",
            "user_id": 123,
        },
    }
    body.update(overrides)
    return body


def test_the_envelope_is_exactly_the_documented_format() -> None:
    event = UserJoined(
        event_id=EVENT_ID, event_timestamp=STAMP, user_id=123, address=Address(city="Oslo")
    )
    message = MessageCodec.to_message(event, {"correlation_id": "abc"})
    assert orjson.loads(encode_message(message)) == {
        "message_type": "notification_event",
        "message_name": "UserJoined",
        "message_id": "9f62e977-73f7-462b-92cb-8ea658d3bcb5",
        "payload": {
            "event_id": "9f62e977-73f7-462b-92cb-8ea658d3bcb5",
            "event_timestamp": "2026-11-24T20:01:02.123456+00:00",
            "user_id": 123,
            "name": "anonymous",
            "address": {"city": "Oslo"},
        },
        "headers": {"correlation_id": "abc"},
    }


def test_round_trip_gives_back_an_equal_event() -> None:
    event = UserJoined(user_id=5, address=Address(city="Lima"))
    message, decoded = codec().decode(encode_message(MessageCodec.to_message(event)))
    assert decoded == event
    assert message.message_id == event.event_id


def test_headers_are_optional_on_input_and_unknown_fields_are_ignored() -> None:
    body = envelope()
    body["payload"]["added_later"] = [1, 2]  # type: ignore[index]
    body["trace"] = "ignored too"
    message, event = codec().decode(orjson.dumps(body))
    assert message.headers == {}
    assert event == UserJoined(event_id=EVENT_ID, event_timestamp=STAMP, user_id=123)


def test_a_subclass_of_a_bound_class_is_decodable_by_its_own_name() -> None:
    events = EventMap()

    @events.bind(UserJoined)
    async def welcome(event: UserJoined) -> None:
        return None

    premium = Premium(user_id=1, tier=3)
    _, decoded = MessageCodec(events.event_class).decode(
        encode_message(MessageCodec.to_message(premium))
    )
    assert decoded == premium


def test_local_events_have_no_envelope() -> None:
    with pytest.raises(TypeError, match="only those travel through a broker"):
        MessageCodec.to_message(LocalOnly())


@pytest.mark.parametrize(
    ("data", "reason", "message_id"),
    [
        (b"{not json", DecodeFailure.NOT_JSON, None),
        (b"[1, 2]", DecodeFailure.NOT_OBJECT, None),
        (orjson.dumps({"message_id": str(EVENT_ID)}), DecodeFailure.MISSING_KEY, str(EVENT_ID)),
        (orjson.dumps(envelope(message_type="command")), DecodeFailure.BAD_ENVELOPE, str(EVENT_ID)),
        (orjson.dumps(envelope(message_type=[])), DecodeFailure.BAD_ENVELOPE, str(EVENT_ID)),
        (orjson.dumps(envelope(message_id="nope")), DecodeFailure.BAD_ENVELOPE, "nope"),
        (orjson.dumps(envelope(payload=[1])), DecodeFailure.BAD_ENVELOPE, str(EVENT_ID)),
        (orjson.dumps(envelope(headers={"a": 1})), DecodeFailure.BAD_ENVELOPE, str(EVENT_ID)),
        (orjson.dumps(envelope(message_name="Nobody")), DecodeFailure.UNKNOWN_NAME, str(EVENT_ID)),
        (
            orjson.dumps(envelope(message_type="ecst_event")),
            DecodeFailure.BAD_ENVELOPE,
            str(EVENT_ID),
        ),
        (b"x" * 4096, DecodeFailure.TOO_LARGE, None),
    ],
    ids=[
        "not-json",
        "not-object",
        "missing-keys",
        "bad-type",
        "unhashable-type",
        "bad-id",
        "payload-not-object",
        "headers-not-strings",
        "unknown-name",
        "type-mismatch",
        "too-large",
    ],
)
def test_each_bad_envelope_has_its_reason_and_message_id(
    data: bytes, reason: DecodeFailure, message_id: str | None
) -> None:
    with pytest.raises(MessageDecodeError) as caught:
        codec().decode(data)
    assert caught.value.reason is reason
    assert caught.value.message_id == message_id


@pytest.mark.parametrize(
    ("payload_change", "reason"),
    [
        ({"user_id": "123"}, DecodeFailure.INVALID_PAYLOAD),  # no coercion of "123" to 123
        ({"name": 5}, DecodeFailure.INVALID_PAYLOAD),  # nor of 5 to "5"
        ({"user_id": None}, DecodeFailure.INVALID_PAYLOAD),
        ({"event_timestamp": "2026-11-24T20:01:02"}, DecodeFailure.INVALID_PAYLOAD),
        ({"event_id": str(uuid.uuid4())}, DecodeFailure.ID_MISMATCH),
    ],
    ids=["string-for-int", "int-for-string", "null", "naive-timestamp", "id-mismatch"],
)
def test_payloads_that_do_not_fit_the_class_are_refused(
    payload_change: dict[str, object], reason: DecodeFailure
) -> None:
    body = envelope()
    body["payload"].update(payload_change)  # type: ignore[attr-defined]
    with pytest.raises(MessageDecodeError) as caught:
        codec().decode(orjson.dumps(body))
    assert caught.value.reason is reason
    assert caught.value.message_id == str(EVENT_ID)


@pytest.mark.parametrize("key", ["event_id", "event_timestamp"])
def test_event_id_and_timestamp_are_required_on_the_wire(key: str) -> None:
    body = envelope()
    del body["payload"][key]  # type: ignore[attr-defined]
    with pytest.raises(MessageDecodeError, match=f"payload is missing {key}") as caught:
        codec().decode(orjson.dumps(body))
    assert caught.value.reason is DecodeFailure.INVALID_PAYLOAD


def test_timestamps_with_another_offset_decode_to_utc() -> None:
    body = envelope()
    body["payload"]["event_timestamp"] = "2026-11-24T22:01:02.123456+02:00"  # type: ignore[index]
    _, event = codec().decode(orjson.dumps(body))
    assert event.event_timestamp == STAMP
    assert event.event_timestamp.tzinfo is UTC


def test_a_missing_required_field_is_refused() -> None:
    body = envelope()
    del body["payload"]["user_id"]  # type: ignore[attr-defined]
    with pytest.raises(MessageDecodeError, match="user_id") as caught:
        codec().decode(orjson.dumps(body))
    assert caught.value.reason is DecodeFailure.INVALID_PAYLOAD


def test_a_decoded_message_reads_like_a_dict_and_encodes_back_unchanged() -> None:
    body = envelope(headers={"correlation_id": "c-1"})
    message, event = codec().decode(orjson.dumps(body))
    assert message.payload["user_id"] == 123
    assert dict(message.payload) == body["payload"]
    assert message.payload == body["payload"]
    assert orjson.loads(encode_message(message)) == body
    assert event == UserJoined(event_id=EVENT_ID, event_timestamp=STAMP, user_id=123)
