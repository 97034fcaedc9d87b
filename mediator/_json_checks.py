"""Why received JSON is refused: the checks behind every `MessageDecodeError`
that names a reason (nesting, JSON, an object, numbers in range, no key twice).

The codec's fast path sends here only what it cannot clear itself; the
reasons and their order are in the docs' "Wire format".
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import msgspec
import orjson

from mediator._exceptions import DecodeFailure, MessageDecodeError
from mediator._limits import quote

__all__ = ["MAX_DEPTH", "bounded_id", "kind", "maybe_duplicates", "parse", "shown"]

MAX_DEPTH = 254
"""The deepest nesting of arrays and objects a decoder accepts, the envelope
object being level 1: the deepest orjson writes, so every message
`encode_message` can write decodes, and nothing deeper reaches a parser."""

_ID_LIMIT = 100
"""A `MessageDecodeError.message_id` that is not a UUID is cut to this many characters."""

_JSON: msgspec.json.Decoder[Any] = msgspec.json.Decoder()
_TOP_LEVEL = msgspec.json.Decoder(dict[str, msgspec.Raw])

# Nesting is measured on the text only where orjson refused it (see `parse`).
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


def maybe_duplicates(data: bytes, again: bytes) -> bool:
    """False when no object in `data` repeats a key; `again` is `data` parsed
    (orjson and msgspec keep one value of a repeated key) and written back by
    orjson."""
    # Why this holds: a ``:`` byte in JSON is either the separator after a key
    # or part of a string (never of a number, and UTF-8 has no ``:`` inside a
    # multi-byte character). orjson writes one separator per kept key and every
    # string as read, with ``:`` unescaped. So without duplicates both texts
    # hold the same number of colons, and each duplicate takes at least its own
    # separator out of `again`. The one way a string gains colons on the way
    # through is the escape ``\u003a``: text with any ``\u003`` is not cleared.
    return data.count(b":") != again.count(b":") or b"\\u003" in data


def kind(value: object) -> str:
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


def shown(value: object) -> str:
    """A value taken from a message as an error detail shows it: scalars
    quoted and cut to `QUOTE_LIMIT`, arrays and objects by their kind."""
    if isinstance(value, dict | list):
        return kind(value)
    return quote(repr(value))


def bounded_id(value: object) -> str | None:
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
        message_id = bounded_id(_JSON.decode(top["message_id"]))
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


def parse(data: bytes) -> dict[str, Any]:
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
            DecodeFailure.NOT_OBJECT, f"expected a JSON object, got {kind(tree)}"
        )
    try:
        again = orjson.dumps(tree)
    except orjson.JSONEncodeError:
        raise _out_of_range(data) from None  # an integer beyond 64 bits
    if maybe_duplicates(data, again):
        _refuse_duplicates(data, bounded_id(tree.get("message_id")))
    return tree
