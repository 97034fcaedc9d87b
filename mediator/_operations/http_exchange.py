"""One HTTP/1.1 exchange for the health server: read a request (its line,
headers and a bounded body) and write a response, then close."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qs, urlsplit

import attrs
import orjson

__all__ = [
    "BODY_LIMIT",
    "HEAD_LIMIT",
    "READ_TIMEOUT",
    "HttpError",
    "Request",
    "Response",
    "json_response",
    "read_request",
    "write_response",
]

HEAD_LIMIT = 8192
"""Bytes of request line and headers read before a request is refused (431)."""
BODY_LIMIT = 64 * 1024
"""Bytes of body read before a request is refused (413)."""
READ_TIMEOUT = 5.0
"""Seconds a client has to send its whole request."""
_LINGER = 1.0
"""Seconds a refused request's remaining bytes are taken in before closing."""

REASONS = {
    200: "OK",
    303: "See Other",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"

_SECURITY_HEADERS = (
    # Nothing is loaded from anywhere, no script runs, no other site frames it.
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)


class HttpError(Exception):
    """A request answered with `status` and the JSON ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.headers = tuple(headers)

    def response(self) -> Response:
        return json_response(self.status, {"error": str(self)}, self.headers)


@attrs.frozen(kw_only=True)
class Request:
    """What a client asked for."""

    method: str
    target: str
    """The request target as sent: path and query."""
    headers: Mapping[str, str] = attrs.field(factory=dict)
    """Header values by lower-case name (a repeated header's values joined by ``, ``)."""
    body: bytes = b""

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    def form(self) -> dict[str, list[str]]:
        """The body's form fields; `HttpError` 415 unless it is form-encoded."""
        content_type = self.headers.get("content-type", FORM).split(";")[0].strip().lower()
        if content_type != FORM:
            raise HttpError(415, f"the body is {content_type}; send {FORM} fields")
        try:
            text = self.body.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError(400, "the form is not UTF-8") from None
        return parse_qs(text, keep_blank_values=True)


@attrs.frozen(kw_only=True)
class Response:
    """What the server answers."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def json_response(
    status: int, document: object, headers: Sequence[tuple[str, str]] = ()
) -> Response:
    return Response(
        status=status, content_type=JSON, body=orjson.dumps(document), headers=tuple(headers)
    )


async def read_request(reader: asyncio.StreamReader) -> Request:
    """The next request on `reader`, within `READ_TIMEOUT`; `HttpError` for
    one that breaks the limits, `ConnectionError` for a client that left."""
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                raise HttpError(431, f"request line and headers over {HEAD_LIMIT} bytes") from None
            if len(head) > HEAD_LIMIT:
                raise HttpError(431, f"request line and headers over {HEAD_LIMIT} bytes")
            request = _parse_head(head)
            if "transfer-encoding" in request.headers:
                raise HttpError(411, "chunked bodies are not read; send a Content-Length")
            length = _content_length(request.headers.get("content-length", "0"))
            if length > BODY_LIMIT:
                raise HttpError(
                    413, f"a body of {length} bytes is over the {BODY_LIMIT}-byte limit"
                )
            if length:
                request = attrs.evolve(request, body=await reader.readexactly(length))
            return request
    except TimeoutError:
        raise ConnectionError(f"no whole request within {READ_TIMEOUT:g} s") from None
    except asyncio.IncompleteReadError:
        raise ConnectionError("the client closed the connection mid-request") from None


def _parse_head(head: bytes) -> Request:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise HttpError(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise HttpError(400, f"malformed header line {line[:100]!r}")
        key = name.lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return Request(method=parts[0], target=parts[1], headers=headers)


def _content_length(text: str) -> int:
    if not text.isdigit():
        raise HttpError(400, f"Content-Length {text[:40]!r} is not a number of bytes")
    return int(text)


async def write_response(
    writer: asyncio.StreamWriter,
    response: Response,
    *,
    head: bool,
    unread: asyncio.StreamReader | None = None,
) -> None:
    """Send `response` (without its body when `head`) and close the
    connection; with `unread`, first take in what the client still sends
    (bounded), since closing on unread bytes resets the connection and the
    client may never see the answer."""
    lines = [
        f"HTTP/1.1 {response.status} {REASONS[response.status]}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in (*_SECURITY_HEADERS, *response.headers)),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if not head:
        writer.write(response.body)
    try:
        await writer.drain()
        if unread is not None and writer.can_write_eof():
            writer.write_eof()
            async with asyncio.timeout(_LINGER):
                while len(await unread.read(BODY_LIMIT)) > 0:
                    pass
    except (ConnectionError, TimeoutError):
        pass
    finally:
        writer.close()
