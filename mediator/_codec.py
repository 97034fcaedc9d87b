"""The envelope codec: events into `Message`s, received bytes back into events.

Decoding is strict about what it builds and tolerant about what it ignores
(the docs' "Wire format", "Decoding"); the common case is one typed parse
straight from the bytes, anything unusual goes through `mediator._json_checks`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import msgspec
import orjson

from mediator._events import Event, event_name, message_type_of, partition_key_of
from mediator._exceptions import DecodeFailure, MessageDecodeError
from mediator._json_checks import bounded_id, kind, maybe_duplicates, parse, shown
from mediator._limits import quote
from mediator._message import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MESSAGE_TYPES,
    Message,
    RawPayload,
)
from mediator._models import fields_of, form_of, pydantic_problem, validate_pydantic_json

__all__ = ["MessageCodec", "Received"]

_REQUIRED = ("message_type", "message_name", "message_id", "payload")
_EVENT_KEYS = ("event_id", "event_timestamp")
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19
"""Every integer with fewer digits fits in 64 bits (orjson reads those exactly)."""
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_STAMP = b'"event_timestamp":'
_STAMP_SIZE = len(_STAMP)
_Last = tuple[bytes, str, Any, str | None, int, int, int]
"""See `MessageCodec._last`."""
_new = object.__new__


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
        # Untracked by the cycle collector, one less object a message for it:
        # nothing a decode builds refers back to its envelope.
        gc=False,
    )
    return msgspec.json.Decoder(envelope), message_type_of(event_type)


def _payload_bytes(data: bytes) -> bytes:
    """The payload's text exactly as it stands in the envelope `data`."""
    return bytes(_RAW_ENVELOPE.decode(data).payload)


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


def _received(envelope: Any, payload: dict[str, Any] | None, text: bytes | None) -> Received:
    """``Received(envelope, payload, text)`` without the call of a class (its
    ``__init__`` in an interpreter frame of its own): one a message."""
    received: Received = _new(Received)
    received._envelope, received._payload, received._text = envelope, payload, text
    received._message = None
    return received


class MessageCodec:
    """Turns events into envelopes and received bytes back into events.

    It builds only the classes `event_class` (usually `EventMap.event_class`)
    returns for a name, and a name, once resolved, keeps its class (as an
    `EventMap`'s names do). Every failure is a `MessageDecodeError`.
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
        """False trusts the producers' JSON: see the docs' "Wire format",
        "Trusted producers"."""
        self._decoders: dict[str, tuple[Any, str | None]] = {}
        """The envelope decoder of each registered name seen, and its message type."""
        self._last: _Last | None = None
        """The name the previous trusted decode found (as the bytes
        ``"message_name":"<name>"``, the name, its decoder and message
        type) and where that message held the name (start, end) and the
        timestamp key: most streams carry one event class after another,
        from one producer, so it is tried first, its keys looked for there
        first."""

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
        if self.strict_json:
            fast = self._decode_fast(data)
        else:
            last = self._last
            if last is not None:
                # `_decode_trusting`'s common case, written out: the class of
                # the previous message again, its name and timestamp keys
                # first looked for where they stood in that message.
                needle, name, decoder, message_type, name_at, name_end, stamp_at = last
                if (
                    data[stamp_at : stamp_at + _STAMP_SIZE] == _STAMP or data.find(_STAMP) >= 0
                ) and (data[name_at:name_end] == needle or data.find(needle) >= 0):
                    try:
                        envelope = decoder.decode(data)
                    except (msgspec.DecodeError, RecursionError):
                        pass
                    else:
                        # Kept only if it is that class's name and the ids agree.
                        event: Event = envelope.payload
                        if (
                            envelope.message_name == name
                            and envelope.message_type == message_type
                            and event.event_id.int == envelope.message_id.int
                        ):
                            received: Received = _new(Received)  # as in `_received`
                            received._envelope, received._payload = envelope, None
                            received._text, received._message = data, None
                            return received, event
            fast = self._decode_trusting(data)
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
        #    by `maybe_duplicates`, which counts colons, if it holds no run of
        #    19 digits (every integer shorter than that fits in 64 bits, and
        #    orjson reads those exactly): about 0.5 us more.
        # 4. What that cannot clear goes to `parse`, whose `json.loads` with an
        #    `object_pairs_hook` sees every key (several times a decode's cost)
        #    and names the repeated one.
        try:
            tree = orjson.loads(data)
            again = orjson.dumps(tree)
        except (orjson.JSONDecodeError, orjson.JSONEncodeError):
            return None
        same = again == data
        if not same and (
            maybe_duplicates(data, again) or _LONG_NUMBER in data.translate(_DIGITS_AS_ZERO)
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
        return _received(typed[0], payload, None if same else data), typed[1]

    def _decode_trusting(self, data: bytes) -> tuple[Received, Event] | None:
        """`_decode_fast` without orjson's parse: msgspec's typed parse straight
        from the bytes, the name read first by a parse that skips everything
        else. A repeated key is taken (its last value), and what the class
        does not declare is skipped unchecked (numbers past 64 bits, nesting
        past 254 levels up to the interpreter's recursion limit). Anything it
        cannot decode goes through the checks that name the reason."""
        # A typed parse fills a missing timestamp with its default. (find, not
        # `in`: `in` first tries the bytes as an int, raising and clearing a
        # TypeError on every call.) The class of the previous message was
        # tried already (`decode_received`).
        stamp_at = data.find(_STAMP)
        if stamp_at < 0:
            return None
        try:
            name = _NAME_ONLY.decode(data).message_name
        except (msgspec.DecodeError, RecursionError):
            return None
        typed = self._typed(name, data)
        if typed is None:
            return None
        needle = b'"message_name":' + orjson.dumps(name)
        # 0 where it is not found (the name written another way): the slice
        # there never matches, and it is looked for each time.
        name_at = max(data.find(needle), 0)
        decoder, message_type = self._decoders[name]
        self._last = (needle, name, decoder, message_type, name_at, name_at + len(needle), stamp_at)
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
        obj = parse(data)
        raw_id = obj.get("message_id")
        message_id = bounded_id(raw_id)
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
            problem = f"message_type {shown(message_type)} is not one of {sorted(MESSAGE_TYPES)}"
        elif not isinstance(name, str):
            problem = f"message_name must be a string, not {kind(name)}"
        elif not isinstance(payload, dict):
            problem = f"payload must be a JSON object, not {kind(payload)}"
        elif not isinstance(headers, dict):
            problem = f"headers must be a JSON object of strings, not {kind(headers)}"
        else:
            for key, value in headers.items():
                if not isinstance(value, str):
                    problem = f"header {quote(repr(key))} is {kind(value)}, not a string"
                    break
        if problem is None:
            try:
                parsed_id = msgspec.convert(raw_id, uuid.UUID)
            except msgspec.ValidationError:
                problem = f"message_id {shown(raw_id)} is not a UUID"
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
                f"no event class registered under {shown(name)}; bind a handler for it "
                "or call EventMap.register(...)",
                message_id,
            )
        expected_type = message_type_of(event_type)
        if expected_type is None:
            raise MessageDecodeError(
                DecodeFailure.UNKNOWN_NAME,
                f"{shown(name)} names {event_type.__qualname__}, a local DomainEvent; only "
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
