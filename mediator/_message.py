"""The wire envelope and its codec: the one place events become bytes and back.

```json
{"message_type": "notification_event", "message_name": "UserJoined",
 "message_id": "9f62e977-…", "payload": {"event_id": "9f62e977-…", ...},
 "headers": {"correlation_id": "…"}}
```
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import attrs
import msgspec
import orjson

from mediator._events import Event, event_name, message_type_of, partition_key_of
from mediator._exceptions import DecodeFailure, MessageDecodeError
from mediator._limits import quote
from mediator._models import fields_of, form_of, jsonable, pydantic_problem, validate_pydantic_json

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_DEPTH",
    "MESSAGE_TYPES",
    "Message",
    "MessageCodec",
    "channel_for",
    "encode_message",
]

MESSAGE_TYPES = frozenset({"notification_event", "ecst_event"})
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
"""Messages larger than this (bytes) are refused by decoders: 1 MiB."""

MAX_DEPTH = 254
"""The deepest nesting of arrays and objects a decoder accepts, the envelope
object being level 1: the deepest orjson writes, so every message
`encode_message` can write decodes, and nothing deeper reaches a parser."""

_REQUIRED = ("message_type", "message_name", "message_id", "payload")
_EVENT_KEYS = ("event_id", "event_timestamp")
_ID_LIMIT = 100
"""A `MessageDecodeError.message_id` that is not a UUID is cut to this many characters."""


class _RawEnvelope(msgspec.Struct):
    message_type: str
    message_name: str
    message_id: uuid.UUID
    payload: msgspec.Raw
    headers: dict[str, str] | None = None


_RAW_ENVELOPE = msgspec.json.Decoder(_RawEnvelope)


class _NameOnly(msgspec.Struct):
    message_name: str


_NAME_ONLY = msgspec.json.Decoder(_NameOnly)


class _ModelEnvelope:
    """Decodes a whole envelope whose payload is a pydantic model: msgspec
    reads the envelope, pydantic validates the payload's own bytes."""

    __slots__ = ("_model",)

    def __init__(self, model: type[Any]) -> None:
        self._model = model

    def decode(self, data: bytes) -> Any:
        envelope = _RAW_ENVELOPE.decode(data)
        try:
            envelope.payload = validate_pydantic_json(self._model, bytes(envelope.payload))
        except ValueError:  # pydantic's ValidationError: the checks name it
            raise msgspec.ValidationError from None
        return envelope


def _envelope_decoder(event_type: type[Any]) -> tuple[Any, str | None]:
    """A decoder of a whole envelope whose payload is an `event_type`, and
    the message type that class travels as (None: it never does)."""
    if form_of(event_type) == "pydantic":
        return _ModelEnvelope(event_type), message_type_of(event_type)
    envelope = msgspec.defstruct(
        f"{event_type.__name__}Envelope",
        [
            ("message_type", str),
            ("message_name", str),
            ("message_id", uuid.UUID),
            ("payload", event_type),
            ("headers", dict[str, str] | None, None),
        ],
    )
    return msgspec.json.Decoder(envelope), message_type_of(event_type)


def _payload_bytes(data: bytes) -> bytes:
    """The payload's text exactly as it stands in the envelope `data`."""
    return bytes(_RAW_ENVELOPE.decode(data).payload)


_JSON: msgspec.json.Decoder[Any] = msgspec.json.Decoder()
_TOP_LEVEL = msgspec.json.Decoder(dict[str, msgspec.Raw])
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19
"""Every integer with fewer digits fits in 64 bits (orjson reads those exactly)."""

# Nesting is measured on the text only where orjson refused it (see _decode_fast).
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_ONE_KIND = bytes.maketrans(b"{}", b"[]")
_STEPS = bytes.maketrans(b"[]", b"\x01\xff")  # +1 and -1 as signed bytes
_PEEL = 16


def _nesting_depth(data: bytes) -> int:
    """How deeply arrays and objects nest in the JSON text `data` (``[]`` is 1,
    ``{"a": []}`` is 2), brackets inside strings not counted. For text that is
    not JSON this is at least the depth a parser reaches before it stops.
    Linear in the size of `data`; used only for text orjson refused."""
    if b"\\" in data:
        # A backslash only occurs in a string, and starts a two-character
        # escape: dropping escaped backslashes, then escaped quotes, leaves
        # only the quotes that open and close strings.
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(data.split(b'"')[::2]).translate(_ONE_KIND, _NOT_BRACKETS)
    depth = 0
    # Peel the innermost pairs a level at a time, a few fast passes for
    # shallow JSON...
    while brackets and depth < _PEEL:
        peeled = brackets.replace(b"[]", b"")
        if len(peeled) == len(brackets):
            break  # unbalanced: not JSON
        brackets, depth = peeled, depth + 1
    if brackets:
        # ...then one running count over what is left, however deep.
        steps = memoryview(brackets.translate(_STEPS)).cast("b")
        depth += max(0, max(itertools.accumulate(steps), default=0))
    return depth


def _maybe_duplicates(data: bytes, again: bytes) -> bool:
    """False when no object in `data` repeats a key; `again` is `data` parsed
    (orjson and msgspec keep one value of a repeated key) and written back by
    orjson.

    Why this holds: a ``:`` byte in JSON is either the separator after a key
    or part of a string (never of a number, and UTF-8 has no ``:`` inside a
    multi-byte character). orjson writes one separator per kept key and every
    string as read, with ``:`` unescaped. So without duplicates both texts hold
    the same number of colons, and each duplicate takes at least its own
    separator out of `again`. The one way a string gains colons on the way
    through is the escape ``\\u003a``: text with any ``\\u003`` is not cleared.
    """
    return data.count(b":") != again.count(b":") or b"\\u003" in data


def _kind(value: object) -> str:
    """The JSON type of a decoded value, for error details."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return "a number"


def _shown(value: object) -> str:
    """A value taken from a message as an error detail shows it: scalars
    quoted and cut to `QUOTE_LIMIT`, arrays and objects by their kind."""
    if isinstance(value, dict | list):
        return _kind(value)
    return quote(repr(value))


def _bounded_id(value: object) -> str | None:
    """The `message_id` a `MessageDecodeError` carries: the string, cut short."""
    if not isinstance(value, str):
        return None
    return value if len(value) <= _ID_LIMIT else value[: _ID_LIMIT - 1] + "…"


def _too_deep(depth: int | None = None) -> MessageDecodeError:
    levels = f"more than {MAX_DEPTH}" if depth is None else str(depth)
    return MessageDecodeError(
        DecodeFailure.TOO_DEEP,
        f"arrays and objects nest {levels} levels deep; at most {MAX_DEPTH} are accepted",
    )


def _not_json(data: bytes, exc: Exception) -> MessageDecodeError:
    if data.startswith(b"\xef\xbb\xbf"):
        detail = "the data starts with a UTF-8 byte order mark, which JSON does not allow"
    else:
        # orjson says what and where more plainly than msgspec ("no low
        # surrogate in string: line 1 column 7"); both refuse the same text.
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError as clearer:
            exc = clearer
        detail = f"not valid JSON: {exc}"
    return MessageDecodeError(DecodeFailure.NOT_JSON, quote(detail))


def _representable(raw: msgspec.Raw) -> bool:
    try:
        orjson.dumps(_JSON.decode(raw))
    except (msgspec.DecodeError, orjson.JSONEncodeError):
        return False
    return True


def _out_of_range(data: bytes) -> MessageDecodeError:
    """The error for JSON holding a number beyond a 64-bit integer or a double:
    orjson, which writes every message, cannot write one, and other readers
    round it or fail, so it is refused wherever it is."""
    try:
        top = _TOP_LEVEL.decode(data)
    except msgspec.DecodeError:
        return MessageDecodeError(DecodeFailure.NOT_OBJECT, "expected a JSON object")
    message_id = None
    if "message_id" in top and _representable(top["message_id"]):
        message_id = _bounded_id(_JSON.decode(top["message_id"]))
    payload = top.get("payload")
    in_payload = payload is not None and not _representable(payload)
    return MessageDecodeError(
        DecodeFailure.INVALID_PAYLOAD if in_payload else DecodeFailure.BAD_ENVELOPE,
        f"a number in the {'payload' if in_payload else 'envelope'} is out of range: "
        "integers must fit in 64 bits and other numbers in a double",
        message_id,
    )


def _refuse_duplicates(data: bytes, message_id: str | None) -> None:
    """Raise DUPLICATE_KEY if an object in `data` (valid JSON, at most
    MAX_DEPTH deep) repeats a key."""
    repeats: list[tuple[dict[str, Any], list[str]]] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            repeated: dict[str, None] = {}
            for key, _ in pairs:
                if key in seen:
                    repeated[key] = None
                seen.add(key)
            # Holding obj keeps it alive, so `is` finds it in the tree below.
            repeats.append((obj, list(repeated)))
        return obj

    try:
        tree = json.loads(data, object_pairs_hook=pairs_hook)
    except RecursionError:
        raise _too_deep() from None
    if not repeats:
        return  # the colon count could not rule duplicates out; there are none
    where, keys = "a nested object", repeats[0][1]
    for name, candidate in (
        ("the envelope", tree),
        ("the payload", tree.get("payload")),
        ("the headers", tree.get("headers")),
    ):
        found = next((found for obj, found in repeats if obj is candidate), None)
        if found is not None:
            where, keys = name, found
            break
    if where == "the envelope" and "message_id" in keys:
        message_id = None  # two ids: naming either would be a guess
    raise MessageDecodeError(
        DecodeFailure.DUPLICATE_KEY,
        f"the key {quote(repr(keys[0]))} appears more than once in {where}; a reader "
        "keeping the first would see another message than one keeping the last",
        message_id,
    )


def _parse(data: bytes) -> dict[str, Any]:
    """`data` as a dict, each refusal naming its reason: nesting within
    MAX_DEPTH, JSON, an object, numbers in range, no key twice."""
    try:
        orjson.dumps(orjson.loads(data))
    except orjson.JSONEncodeError:
        raise _too_deep() from None  # the only thing that fails writing orjson's own parse
    except orjson.JSONDecodeError:
        # orjson refuses more than msgspec (numbers beyond a double) and stops
        # at 1024 levels; the text says how deep it goes.
        depth = _nesting_depth(data)
        if depth > MAX_DEPTH:
            raise _too_deep(depth) from None
    try:
        tree = _JSON.decode(data)  # at most MAX_DEPTH levels from here on
    except RecursionError:
        raise _too_deep() from None  # the caller's stack was nearly used up
    except msgspec.ValidationError:
        # The one check an untyped decode makes: numbers it cannot hold.
        raise _out_of_range(data) from None
    except msgspec.DecodeError as exc:
        raise _not_json(data, exc) from None
    if not isinstance(tree, dict):
        raise MessageDecodeError(
            DecodeFailure.NOT_OBJECT, f"expected a JSON object, got {_kind(tree)}"
        )
    try:
        again = orjson.dumps(tree)
    except orjson.JSONEncodeError:
        raise _out_of_range(data) from None  # an integer beyond 64 bits
    if _maybe_duplicates(data, again):
        _refuse_duplicates(data, _bounded_id(tree.get("message_id")))
    return tree


class RawPayload(Mapping[str, Any]):
    """A received payload: its JSON bytes, which `encode_message` writes back
    unchanged, and a read-only mapping of the decoded JSON. The codec hands
    over the dict it already parsed to check the message; without one, the
    bytes are parsed on first access."""

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

    On the producing side `payload` holds the event's field values (UUIDs and
    datetimes as Python objects); on the consuming side it is a `RawPayload`,
    a read-only mapping of the JSON parsed on first access. Either way
    `encode_message` writes the same bytes.

    `partition_key` is routing, not content: the value of the field the
    event class names with ``partition_key=`` (None without one). A
    transport that partitions uses it as the record key; it is not part of
    the JSON envelope, so a received message has None.

    `message_id` is a fresh UUID unless given, as in diator.
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


class Received:
    """A decoded envelope whose `Message` is built on first use: a consumer
    with nothing around its handlers reads the message id and the headers
    (for the correlation of follow-ups), and building the rest costs about
    as much as the typed parse of the whole envelope."""

    __slots__ = ("_envelope", "_message", "_payload", "_text")

    def __init__(self, envelope: Any, payload: dict[str, Any] | None, text: bytes | None) -> None:
        self._envelope = envelope
        """The typed parse: message_type, message_name, message_id, headers."""
        self._payload = payload
        """The payload as orjson parsed it; None: parsed from `text` if read."""
        self._text = text
        """The envelope's text when orjson writes the payload differently, so
        that its bytes are cut out of it; None when they are the same."""
        self._message: Message | None = None

    @classmethod
    def of(cls, message: Message) -> Received:
        """One around a `Message` built already."""
        received = cls.__new__(cls)
        received._message = message
        return received

    @property
    def message_id(self) -> uuid.UUID:
        if self._message is not None:
            return self._message.message_id
        return self._envelope.message_id  # type: ignore[no-any-return]

    @property
    def headers(self) -> Mapping[str, str]:
        if self._message is not None:
            return self._message.headers
        return self._envelope.headers or _NO_HEADERS

    def message(self) -> Message:
        """The `Message`, built once."""
        message = self._message
        if message is None:
            envelope, text = self._envelope, self._text
            message = self._message = Message(
                message_type=envelope.message_type,
                message_name=envelope.message_name,
                message_id=envelope.message_id,
                # The dict orjson parsed: reading the payload costs nothing
                # more. Its bytes are the ones received when orjson writes
                # them back unchanged; otherwise they are cut out of the text.
                payload=RawPayload(None if text is None else _payload_bytes(text), self._payload),
                headers=envelope.headers or {},
            )
        return message


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class MessageCodec:
    """Turns events into envelopes and received bytes back into events.

    Decoding builds only classes that `event_class` (usually
    `EventMap.event_class`) returns for a name; a message never names code to
    import. It is strict about what it builds (a missing field or a value of
    the wrong JSON type is refused; no coercion) and tolerant about extra
    fields, which it ignores. Every failure is a `MessageDecodeError`. A name
    that `event_class` resolves keeps its class (as an `EventMap`'s names do).
    """

    __slots__ = ("_decoders", "_event_class", "_last", "max_size", "strict_json")

    def __init__(
        self,
        event_class: Callable[[str], type[Event] | None],
        *,
        max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        strict_json: bool = True,
    ) -> None:
        self._event_class = event_class
        self.max_size = max_size
        self.strict_json = strict_json
        """False trusts the producers' JSON: the common case skips the proof
        that no key repeats, and with it the range and depth checks of values
        the event class does not declare (about a fifth of a decode); see the
        docs' "Wire format", "Trusted producers"."""
        self._decoders: dict[str, tuple[Any, str | None]] = {}
        """The envelope decoder of each registered name seen, and its message type."""
        self._last: tuple[bytes, str, tuple[Any, str | None]] | None = None
        """The name the previous trusted decode found (as the bytes
        ``"message_name":"<name>"``, the name, its decoding): most streams
        carry one event class after another, so it is tried first."""

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
            payload=fields_of(event),
            headers=dict(headers) if headers else {},
            partition_key=partition_key_of(event),
        )

    def decode(self, data: bytes | str) -> tuple[Message, Event]:
        """Parse and validate `data`, returning the envelope and its event."""
        received, event = self.decode_received(data)
        return received.message(), event

    def decode_received(self, data: bytes | str) -> tuple[Received, Event]:
        """`decode`, with the `Message` built only if asked for."""
        if type(data) is not bytes or len(data) > self.max_size:
            data = self._admit(data)  # raises when too large
        fast = self._decode_fast(data) if self.strict_json else self._decode_trusting(data)
        if fast is not None:
            return fast
        message = self._message_of(data)
        return Received.of(message), self.to_event(message)

    def decode_message(self, data: bytes | str) -> Message:
        """Parse and validate the envelope only."""
        return self._message_of(self._admit(data))

    def _admit(self, data: bytes | str) -> bytes:
        """`data` as bytes, once its size is within the limit."""
        if isinstance(data, str):
            if len(data) > self.max_size:  # at least one byte a character
                raise self._too_large(len(data), "at least ")
            try:
                data = data.encode()
            except UnicodeEncodeError as exc:
                raise MessageDecodeError(
                    DecodeFailure.NOT_JSON,
                    f"the text holds {exc.object[exc.start]!r}, a lone surrogate, "
                    "which UTF-8 cannot encode",
                ) from None
        if len(data) > self.max_size:
            raise self._too_large(len(data))
        return data

    def _too_large(self, size: int, bound: str = "") -> MessageDecodeError:
        return MessageDecodeError(
            DecodeFailure.TOO_LARGE,
            f"{bound}{size} bytes exceeds the limit of {self.max_size} bytes",
        )

    def _decode_fast(self, data: bytes) -> tuple[Received, Event] | None:
        """The common case in typed parses straight from the bytes; None sends
        anything unusual through the checks that name the reason."""
        # Bad input must never reach a typed decode that would accept it, so
        # the cheapest proofs come first:
        #
        # 1. orjson parses the text. It refuses more than 1024 levels without
        #    recursing on the C stack, so no depth can crash the process, and
        #    writing the result back fails past MAX_DEPTH levels, so nothing
        #    deeper reaches msgspec, whose parser recurses.
        # 2. If the text written back is the text received, byte for byte (as
        #    from every orjson producer), no key is repeated (the dicts written
        #    back cannot repeat one) and every number is in range (an integer
        #    beyond 64 bits comes back as a float, written another way). A parse,
        #    a write and a compare: about 1 us on a 300-byte envelope.
        # 3. Other text (spaces, escapes, another producer's order) is cleared
        #    by `_maybe_duplicates`, which counts colons, if it holds no run of
        #    19 digits (every integer shorter than that fits in 64 bits, and
        #    orjson reads those exactly): about 0.5 us more.
        # 4. What that cannot clear goes to `_parse`, whose `json.loads` with an
        #    `object_pairs_hook` sees every key (several times a decode's cost)
        #    and names the repeated one.
        try:
            tree = orjson.loads(data)
            again = orjson.dumps(tree)
        except (orjson.JSONDecodeError, orjson.JSONEncodeError):
            return None
        same = again == data
        if not same and (
            _maybe_duplicates(data, again) or _LONG_NUMBER in data.translate(_DIGITS_AS_ZERO)
        ):
            return None
        if type(tree) is not dict:
            return None
        name, payload = tree.get("message_name"), tree.get("payload")
        # A typed decode fills defaults, so the required keys are looked up.
        if (
            type(name) is not str
            or type(payload) is not dict
            or "event_timestamp" not in payload
            or "event_id" not in payload
        ):
            return None
        typed = self._typed(name, data)
        if typed is None:
            return None
        envelope, event = typed
        return Received(envelope, payload, None if same else data), event

    def _decode_trusting(self, data: bytes) -> tuple[Received, Event] | None:
        """`_decode_fast` without orjson's parse: msgspec's typed parse straight
        from the bytes, the name read first by a parse that skips everything
        else. A repeated key is taken (its last value), and what the class
        does not declare is skipped unchecked (numbers past 64 bits, nesting
        past 254 levels up to the interpreter's recursion limit). Anything it
        cannot decode goes through the checks that name the reason."""
        # A typed parse fills a missing timestamp with its default. (find, not
        # `in`: `in` first tries the bytes as an int, raising and clearing a
        # TypeError on every call.)
        if data.find(b'"event_timestamp":') < 0:
            return None
        last = self._last
        if last is not None and data.find(last[0]) >= 0:
            # Likely the class of the previous message: its typed parse alone,
            # kept only if the name it reads is that class's name.
            typed = self._typed_as(last[2], data)
            if typed is not None and typed[0].message_name == last[1]:
                return Received(typed[0], None, data), typed[1]
        try:
            name = _NAME_ONLY.decode(data).message_name
        except (msgspec.DecodeError, RecursionError):
            return None
        typed = self._typed(name, data)
        if typed is None:
            return None
        self._last = (b'"message_name":' + orjson.dumps(name), name, self._decoders[name])
        envelope, event = typed
        return Received(envelope, None, data), event

    def _typed(self, name: str, data: bytes) -> tuple[Any, Event] | None:
        """One typed parse of the whole envelope `data` registered as `name`:
        its fields and the event, the ids and the message type checked; None
        when anything is off (the checks name it)."""
        decoding = self._decoders.get(name)
        if decoding is None:
            event_type = self._event_class(name)
            if event_type is None:
                return None
            # Kept per name: a name, once registered, names the same class.
            decoding = self._decoders[name] = _envelope_decoder(event_type)
        return self._typed_as(decoding, data)

    @staticmethod
    def _typed_as(decoding: tuple[Any, str | None], data: bytes) -> tuple[Any, Event] | None:
        """`_typed` with the decoder of a name known already."""
        decoder, message_type = decoding
        try:
            envelope = decoder.decode(data)
        except (msgspec.DecodeError, RecursionError):
            return None
        event: Event = envelope.payload
        if envelope.message_type != message_type or event.event_id.int != envelope.message_id.int:
            return None
        return envelope, event

    @staticmethod
    def _build(event_type: type[Event], payload: Mapping[str, Any]) -> Event:
        """`event_type` built from a received payload: by msgspec, or by
        pydantic for a model, its problem raised as msgspec's error."""
        if form_of(event_type) != "pydantic":
            return msgspec.convert(payload, event_type)
        raw = payload.raw if isinstance(payload, RawPayload) else orjson.dumps(payload)
        try:
            return validate_pydantic_json(event_type, raw)  # type: ignore[no-any-return]
        except ValueError as exc:  # pydantic's ValidationError
            raise msgspec.ValidationError(pydantic_problem(exc)) from None

    def _message_of(self, data: bytes) -> Message:
        """The envelope of admitted `data`, each check naming its reason."""
        obj = _parse(data)
        raw_id = obj.get("message_id")
        message_id = _bounded_id(raw_id)
        missing = [key for key in _REQUIRED if key not in obj]
        if missing:
            raise MessageDecodeError(
                DecodeFailure.MISSING_KEY, f"missing {', '.join(missing)}", message_id
            )
        message_type, name, payload = obj["message_type"], obj["message_name"], obj["payload"]
        headers = obj.get("headers")
        if headers is None:
            headers = {}
        problem = None
        if not isinstance(message_type, str) or message_type not in MESSAGE_TYPES:
            problem = f"message_type {_shown(message_type)} is not one of {sorted(MESSAGE_TYPES)}"
        elif not isinstance(name, str):
            problem = f"message_name must be a string, not {_kind(name)}"
        elif not isinstance(payload, dict):
            problem = f"payload must be a JSON object, not {_kind(payload)}"
        elif not isinstance(headers, dict):
            problem = f"headers must be a JSON object of strings, not {_kind(headers)}"
        else:
            for key, value in headers.items():
                if not isinstance(value, str):
                    problem = f"header {quote(repr(key))} is {_kind(value)}, not a string"
                    break
        if problem is None:
            try:
                parsed_id = msgspec.convert(raw_id, uuid.UUID)
            except msgspec.ValidationError:
                problem = f"message_id {_shown(raw_id)} is not a UUID"
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
        message_id = str(message.message_id)
        name = message.message_name
        event_type = self._event_class(name)
        if event_type is None:
            raise MessageDecodeError(
                DecodeFailure.UNKNOWN_NAME,
                f"no event class registered under {_shown(name)}; bind a handler for it "
                "or call EventMap.register(...)",
                message_id,
            )
        expected_type = message_type_of(event_type)
        if expected_type is None:
            raise MessageDecodeError(
                DecodeFailure.UNKNOWN_NAME,
                f"{_shown(name)} names {event_type.__qualname__}, a local DomainEvent; only "
                "NotificationEvent and ECSTEvent classes are built from messages",
                message_id,
            )
        if expected_type != message.message_type:
            raise MessageDecodeError(
                DecodeFailure.BAD_ENVELOPE,
                f"{event_type.__qualname__} is a {expected_type}, the message says "
                f"{quote(repr(message.message_type), 200)}",
                message_id,
            )
        missing = [key for key in _EVENT_KEYS if key not in message.payload]
        if missing:
            raise MessageDecodeError(
                DecodeFailure.INVALID_PAYLOAD,
                f"payload is missing {', '.join(missing)}",
                message_id,
            )
        try:
            event = self._build(event_type, message.payload)
        except msgspec.ValidationError as exc:
            # The text can quote the value (an attrs validator's message does).
            raise MessageDecodeError(
                DecodeFailure.INVALID_PAYLOAD, quote(str(exc)), message_id
            ) from None
        except RecursionError:
            raise MessageDecodeError(
                DecodeFailure.TOO_DEEP, "nesting too deep for the stack left", message_id
            ) from None
        if event.event_id != message.message_id:
            raise MessageDecodeError(
                DecodeFailure.ID_MISMATCH,
                f"payload.event_id {event.event_id} differs from message_id",
                message_id,
            )
        return event
