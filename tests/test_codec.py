"""The wire envelope: exact format on the way out, strict decoding on the way in."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

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
)
from mediator.transport import QUOTE_LIMIT, encode_message
from tests import bad_inputs


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


@pytest.mark.parametrize("spacing", ["orjson", "spaced"])
def test_a_received_payload_is_written_again_byte_for_byte(spacing: str) -> None:
    # Forwarding or dead-lettering a received message must not alter its
    # payload, whoever wrote it: orjson's own text, or another producer's.
    body = envelope()
    if spacing == "orjson":
        data, payload_text = orjson.dumps(body), orjson.dumps(body["payload"])
    else:
        data = json.dumps(body, indent=1).encode()
        payload_text = json.dumps(body["payload"], indent=1).replace("\n", "\n ").encode()
    message, _ = codec().decode(data)
    assert payload_text in data
    assert b'"payload":' + payload_text + b',"headers"' in encode_message(message)
    assert dict(message.payload) == body["payload"]


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
        ({"event_timestamp": 1764014462}, DecodeFailure.INVALID_PAYLOAD),
        ({"event_id": str(uuid.uuid4())}, DecodeFailure.ID_MISMATCH),
    ],
    ids=["string-for-int", "int-for-string", "null", "number-for-timestamp", "id-mismatch"],
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


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        ("2026-11-24T22:01:02.123456+02:00", timedelta(hours=2)),
        ("2026-11-24T20:01:02.123456", None),  # diator's datetime.utcnow()
    ],
    ids=["aware", "naive"],
)
@pytest.mark.parametrize("strict_json", [True, False], ids=["strict", "trusting"])
def test_timestamps_decode_as_written_and_are_sent_on_unchanged(
    text: str, offset: timedelta | None, strict_json: bool
) -> None:
    body = envelope()
    body["payload"]["event_timestamp"] = text  # type: ignore[index]
    events = EventMap()
    events.register(UserJoined)
    decoding = MessageCodec(events.event_class, strict_json=strict_json)

    _, event = decoding.decode(orjson.dumps(body))

    assert event.event_timestamp.utcoffset() == offset
    assert event.event_timestamp.isoformat() == text
    sent = orjson.loads(encode_message(MessageCodec.to_message(event)))
    assert sent["payload"]["event_timestamp"] == text


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


# --- Bad input: every kind gives a MessageDecodeError with its reason ---------

DETAIL_LIMIT = QUOTE_LIMIT + 256
"""A detail quotes at most one value taken from the message, cut to QUOTE_LIMIT."""
ID_LIMIT = 100
MAX_DEPTH = 254
"""The documented nesting limit (the envelope object is level 1)."""


def probe_codec() -> MessageCodec:
    return MessageCodec(bad_inputs.probe_event_map().event_class)


def decode_whole(codec: MessageCodec, data: bytes | str) -> object:
    return codec.decode(data)


def decode_in_two_steps(codec: MessageCodec, data: bytes | str) -> object:
    return codec.to_event(codec.decode_message(data))


ENTRY_POINTS = [
    pytest.param(decode_whole, id="decode"),
    pytest.param(decode_in_two_steps, id="decode_message+to_event"),
]


def refusal(
    data: bytes | str,
    entry: Callable[[MessageCodec, bytes | str], object] = decode_whole,
    codec: MessageCodec | None = None,
) -> MessageDecodeError:
    with pytest.raises(MessageDecodeError) as caught:
        entry(codec or probe_codec(), data)
    error = caught.value
    assert len(error.detail) <= DETAIL_LIMIT
    assert len(str(error)) <= DETAIL_LIMIT + ID_LIMIT + 64
    assert error.message_id is None or len(error.message_id) <= ID_LIMIT
    return error


def test_the_table_has_forty_distinct_kinds_of_bad_input() -> None:
    ids = [case.id for case in bad_inputs.CASES]
    assert len(ids) >= 40
    assert len(set(ids)) == len(ids)
    assert {case.reason for case in bad_inputs.CASES} == {r.value for r in DecodeFailure}


def test_the_valid_probe_message_decodes() -> None:
    _, event = probe_codec().decode(bad_inputs.valid())
    assert isinstance(event, bad_inputs.Probe)
    assert event.user_id == 7


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(
    ("build", "reason"),
    [pytest.param(case.build, DecodeFailure(case.reason), id=case.id) for case in bad_inputs.CASES],
)
def test_bad_input_table(
    build: Callable[[str], bytes],
    reason: DecodeFailure,
    entry: Callable[[MessageCodec, bytes | str], object],
) -> None:
    assert refusal(build(bad_inputs.PROBE_NAME), entry).reason is reason


def nested(depth: int, kind: str) -> bytes:
    """JSON nested `depth` levels deep: arrays, or objects with the key "x"."""
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"x":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


def with_field(value: bytes, where: str = "payload") -> bytes:
    """A valid Probe envelope with `value` as an extra field of the payload or envelope."""
    data = bad_inputs.valid()
    if where == "payload":
        return data.replace(b'"user_id":7', b'"user_id":7,"deep":' + value, 1)
    return data.replace(b'"payload"', b'"deep":' + value + b',"payload"', 1)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 300, 999, 1000, 1025, 10_000, 100_000])
@pytest.mark.parametrize(
    "place",
    ["payload-array", "payload-object", "envelope-object", "declared-field", "top-level"],
)
def test_nesting_of_any_depth_is_refused_as_too_deep(
    place: str, depth: int, entry: Callable[[MessageCodec, bytes | str], object]
) -> None:
    data = {
        # The envelope is level 1 and the payload level 2.
        "payload-array": lambda: with_field(nested(depth - 2, "array")),
        "payload-object": lambda: with_field(nested(depth - 2, "object")),
        "envelope-object": lambda: with_field(nested(depth - 1, "object"), where="envelope"),
        "declared-field": lambda: bad_inputs.valid().replace(
            b'"user_id":7', b'"user_id":' + nested(depth - 2, "array")
        ),
        "top-level": lambda: nested(depth, "array"),
    }[place]()
    assert refusal(data, entry).reason is DecodeFailure.TOO_DEEP


def test_the_deepest_message_orjson_can_write_decodes_and_one_level_more_does_not() -> None:
    tree: list[Any] = []
    for _ in range(MAX_DEPTH - 3):
        tree = [tree]
    body = orjson.loads(bad_inputs.valid())
    body["payload"]["tree"] = tree  # envelope, payload, then MAX_DEPTH - 2 arrays
    data = orjson.dumps(body)
    message, event = probe_codec().decode(data)
    assert event.user_id == 7  # type: ignore[attr-defined]
    assert message.payload["tree"] == tree  # the payload reads back, nesting and all
    assert orjson.loads(encode_message(message)) == body

    body["payload"]["tree"] = [tree]
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(body)  # what a producer cannot write, a consumer need not read
    deeper = data.replace(b'"tree":', b'"tree":[', 1).replace(b"]}", b"]]}", 1)
    assert refusal(deeper).reason is DecodeFailure.TOO_DEEP


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    brackets = b'"' + b"[{" * 600 + rb"\\\"\\" + b"}]" * 400 + b'"'
    data = with_field(brackets)
    _, event = probe_codec().decode(data)
    assert event.user_id == 7  # type: ignore[attr-defined]


def test_a_wide_payload_is_not_deep() -> None:
    items = b"[" + b",".join(b'{"sku":"a","qty":[1,2]}' for _ in range(2_000)) + b"]"
    message, _ = probe_codec().decode(with_field(items))
    assert len(message.payload["deep"]) == 2_000


def test_decoding_near_the_recursion_limit_is_a_decode_error_not_a_recursion_error() -> None:
    data = with_field(nested(200, "array"))
    codec = probe_codec()
    depth = 0
    frame = sys._getframe()
    while frame.f_back is not None:
        frame, depth = frame.f_back, depth + 1
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 60)
    try:
        outcome: object = codec.decode(data)
    except MessageDecodeError as exc:
        outcome = exc.reason
    finally:
        sys.setrecursionlimit(limit)
    # Python 3.11 counts C recursion against this limit (the parser gives up);
    # later versions keep a separate C limit, and the message decodes.
    assert outcome is DecodeFailure.TOO_DEEP or isinstance(outcome, tuple)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_duplicate_envelope_key_is_named_and_leaves_the_id_unknown(
    entry: Callable[[MessageCodec, bytes | str], object],
) -> None:
    data = bad_inputs.valid().replace(
        b'"payload"', b'"message_id":"' + str(uuid.uuid4()).encode() + b'","payload"', 1
    )
    error = refusal(data, entry)
    assert error.reason is DecodeFailure.DUPLICATE_KEY
    assert "'message_id'" in error.detail
    assert "envelope" in error.detail
    assert error.message_id is None  # which of the two would be a guess


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(
    ("duplicate", "where"),
    [
        (b',"user_id":8', "payload"),
        (b',"event_id":"9f62e977-73f7-462b-92cb-8ea658d3bcb5"', "payload"),
        (b',"more":{"a":1,"b":[{"c":1,"c":1}]}', "nested object"),
    ],
)
def test_a_duplicate_payload_key_is_named_with_where_it_is(
    duplicate: bytes, where: str, entry: Callable[[MessageCodec, bytes | str], object]
) -> None:
    data = bad_inputs.valid()
    error = refusal(data.replace(b'"user_id":7', b'"user_id":7' + duplicate, 1), entry)
    assert error.reason is DecodeFailure.DUPLICATE_KEY
    assert where in error.detail
    assert error.message_id == orjson.loads(data)["message_id"]


@pytest.mark.parametrize(
    "extra",
    [
        b'"items":[{"id":1,"name":"a"},{"id":2,"name":"b"}]',  # the same keys in sibling objects
        b'"inner":{"event_id":"x","payload":{"payload":1}}',  # envelope names, nested again
        rb'"text":"a\":b\":c","t":"12:00:00","u":":::"',  # colons and quotes in strings
        rb'"escaped":"\u003a\u003A","k\u003a":1,"j:":2',  # escaped colons, distinct keys
        rb'"user\u005fname":"x"',  # escaped spelling of a new key
        rb'"":1,"\\":2,"\"":3',  # empty key, backslash key, quote key
    ],
    ids=["siblings", "nested-same-names", "colons", "escaped-colons", "escaped-key", "odd-keys"],
)
def test_keys_that_only_look_repeated_are_accepted(extra: bytes) -> None:
    data = bad_inputs.valid().replace(b'"user_id":7', b'"user_id":7,' + extra, 1)
    message, event = probe_codec().decode(data)
    assert event.user_id == 7  # type: ignore[attr-defined]
    assert dict(message.payload) == orjson.loads(data)["payload"]


def test_json_written_with_spaces_is_checked_for_duplicates_too() -> None:
    body = orjson.loads(bad_inputs.valid())
    spaced = (
        b'{ "message_type" : "notification_event" , "message_name" : "BadInputProbe", '
        b'"message_id": "'
        + body["message_id"].encode()
        + b'", "payload" : { "event_id" : "'
        + body["message_id"].encode()
        + b'", "event_timestamp": "2026-11-24T20:01:02+00:00", "user_id" : 1, "user_id" : 2 } }'
    )
    assert refusal(spaced).reason is DecodeFailure.DUPLICATE_KEY
    _, event = probe_codec().decode(spaced.replace(b', "user_id" : 2', b""))
    assert event.user_id == 1  # type: ignore[attr-defined]


@attrs.frozen(kw_only=True)
class Coded(NotificationEvent):
    code: str = attrs.field(validator=attrs.validators.in_(["a", "b"]))


HUGE = "Z" * 1_000_000


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"message_name": HUGE}, DecodeFailure.UNKNOWN_NAME),
        ({"message_type": HUGE}, DecodeFailure.BAD_ENVELOPE),
        ({"message_id": HUGE}, DecodeFailure.BAD_ENVELOPE),
        ({"headers": {HUGE: 1}}, DecodeFailure.BAD_ENVELOPE),
        ({"payload": {"code": HUGE}}, DecodeFailure.INVALID_PAYLOAD),
        ({"payload": {"code": HUGE, "event_id": 1}}, DecodeFailure.INVALID_PAYLOAD),
        ({"payload": {"code": "a", "event_timestamp": HUGE}}, DecodeFailure.INVALID_PAYLOAD),
    ],
    ids=[
        "name",
        "message-type",
        "message-id",
        "header-key",
        "validator-echo",
        "event-id",
        "timestamp",
    ],
)
def test_error_text_stays_bounded_whatever_the_message_holds(
    change: dict[str, Any],
    reason: DecodeFailure,
    entry: Callable[[MessageCodec, bytes | str], object],
) -> None:
    events = EventMap()
    events.register(Coded)
    body = envelope(message_name="Coded")
    payload = dict(body["payload"])  # type: ignore[call-overload]
    payload.update(change.get("payload", {"code": "a"}))
    body.update(change, payload=payload)
    error = refusal(orjson.dumps(body), entry, MessageCodec(events.event_class))
    assert error.reason is reason


def test_a_long_message_id_is_cut_in_the_error() -> None:
    error = refusal(orjson.dumps(envelope(message_id="i" * 1_000_000)))
    assert error.message_id is not None
    assert error.message_id.startswith("iiii")
    assert len(error.message_id) <= ID_LIMIT


def test_text_with_a_lone_surrogate_is_not_json() -> None:
    # A str input holding a lone surrogate character cannot be UTF-8.
    text = orjson.dumps(envelope()).decode().replace("123", '123, "x": "?"')
    assert refusal(text.replace("?", chr(0xD800))).reason is DecodeFailure.NOT_JSON


def test_a_custom_lookup_that_returns_a_local_event_is_refused() -> None:
    codec = MessageCodec(lambda name: LocalOnly)
    error = refusal(orjson.dumps(envelope(message_name="LocalOnly")), codec=codec)
    assert error.reason is DecodeFailure.UNKNOWN_NAME


def spaced(data: bytes) -> bytes:
    """`data` as Python's json.dumps writes it (diator's producers do)."""
    return json.dumps(json.loads(data)).encode()


@pytest.mark.parametrize("layout", [pytest.param(bytes, id="compact"), spaced])
@pytest.mark.parametrize(
    ("number", "fits"),
    [
        (2**63 - 1, True),
        (2**64 - 1, True),
        (-(2**63), True),
        (2**64, False),
        (-(2**63) - 1, False),
    ],
)
def test_integers_must_fit_in_64_bits(
    number: int, fits: bool, layout: Callable[[bytes], bytes]
) -> None:
    data = bad_inputs.valid().replace(b'"user_id":7', b'"user_id":' + str(number).encode())
    data = layout(data.replace(b'"name":"Ada"', b'"name":"12345678901234567890123"'))
    if fits:
        _, event = probe_codec().decode(data)
        assert event.user_id == number  # type: ignore[attr-defined]
    else:
        error = refusal(data)
        assert error.reason is DecodeFailure.INVALID_PAYLOAD
        assert "out of range" in error.detail


def test_json_written_by_json_dumps_decodes() -> None:
    data = spaced(bad_inputs.valid())
    assert b'": "' in data
    message, event = probe_codec().decode(data)
    assert event.user_id == 7  # type: ignore[attr-defined]
    assert message.payload["name"] == "Ada"


def trusting_codec() -> MessageCodec:
    return MessageCodec(bad_inputs.probe_event_map().event_class, strict_json=False)


TRUSTED_WHEN_NOT_STRICT = {
    "huge-int-for-int",
    "huge-int-in-extra-field",
    "float-overflow",
    "deep-array-300-levels",
}
"""What `strict_json=False` takes from a trusted producer besides repeated
keys: numbers past 64 bits, and values the class does not declare, unchecked."""


@pytest.mark.parametrize("case", bad_inputs.CASES, ids=lambda case: case.id)
def test_with_strict_json_off_every_other_bad_input_keeps_its_reason(
    case: bad_inputs.BadInput,
) -> None:
    """Switching strict JSON off trusts the producers on what the docs list
    only: a repeated key may be taken (its last value), a number past 64 bits
    or nesting past 254 levels in an undeclared field may pass."""
    data = case.build(bad_inputs.PROBE_NAME)
    if case.reason == "duplicate_key" or case.id in TRUSTED_WHEN_NOT_STRICT:
        # Taken, or refused for its reason by the checks behind the fast path.
        reason: DecodeFailure | None = None
        try:
            trusting_codec().decode(data)
        except MessageDecodeError as error:
            reason = error.reason
        assert reason in (None, DecodeFailure(case.reason))
        return
    assert refusal(data, codec=trusting_codec()).reason.value == case.reason


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(lambda: bad_inputs.valid(), id="as-orjson-writes-it"),
        pytest.param(
            lambda: orjson.dumps(orjson.loads(bad_inputs.valid()), option=orjson.OPT_INDENT_2),
            id="indented",
        ),
        pytest.param(
            lambda: bad_inputs.valid().replace(
                b'"event_timestamp":"', b'"x":1,"event_timestamp":"'
            ),
            id="an-extra-field",
        ),
    ],
)
def test_with_strict_json_off_a_message_decodes_as_with_it_on(data: Callable[[], bytes]) -> None:
    text = data()
    strict_message, strict_event = probe_codec().decode(text)
    message, event = trusting_codec().decode(text)
    assert event == strict_event
    assert message == strict_message
    assert encode_message(message) == encode_message(strict_message)


def test_with_strict_json_off_a_repeated_key_is_taken_not_refused() -> None:
    data = bad_inputs.valid().replace(b'"user_id":7', b'"user_id":7,"user_id":8', 1)
    assert refusal(data).reason is DecodeFailure.DUPLICATE_KEY
    _, event = trusting_codec().decode(data)
    assert event.user_id in (7, 8)  # type: ignore[attr-defined]


@attrs.frozen(kw_only=True)
class OrderOpened(NotificationEvent):
    order_id: int
    meta: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class OrderClosed(NotificationEvent):
    order_id: int
    meta: dict[str, str] = attrs.field(factory=dict)


@pytest.mark.parametrize("strict_json", [True, False], ids=["strict", "trusting"])
def test_a_stream_of_look_alike_classes_decodes_each_as_its_own(strict_json: bool) -> None:
    # Same fields, so either class's typed parse would take the other's
    # payload; a nested "message_name" naming the other must not fool it either.
    events = EventMap()
    events.register(OrderOpened, OrderClosed)
    decoding = MessageCodec(events.event_class, strict_json=strict_json)
    sent = [
        OrderOpened(order_id=1),
        OrderOpened(order_id=2),
        OrderClosed(order_id=2, meta={"message_name": "OrderOpened"}),
        OrderOpened(order_id=3, meta={"message_name": "OrderClosed"}),
        OrderClosed(order_id=3),
    ]
    received = [
        decoding.decode(encode_message(MessageCodec.to_message(event)))[1] for event in sent
    ]
    assert [(type(e), e.order_id) for e in received] == [(type(e), e.order_id) for e in sent]
    assert received == sent
