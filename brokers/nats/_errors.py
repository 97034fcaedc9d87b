"""NATS: nats-py's errors as the library's, and the stream check every link makes.

```
nats-py's errors, OSError, a timeout
├── AuthorizationError: CredentialError, wherever it comes
├── NotFoundError (a stream or consumer): recreated under a subscription,
│   EntityNotFoundError when reading dead letters
├── NoStreamResponseError: the stream is gone, made again and the publish retried
└── any other: BrokerUnavailableError (start, subscribe, dead letters),
    PublishError (publishing), a reconnect (a running subscription)
```
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api

from mediator.transport import (
    CredentialError,
    EntityNotFoundError,
    ErrorRow,
    ErrorTable,
    PublishError,
    TransportError,
    being_cancelled,
    quote,
)

__all__ = [
    "ERRORS",
    "TRANSIENT",
    "LinkLost",
    "ensure_stream",
    "publish_error",
    "raise_if_cancelled",
]

logger = logging.getLogger("mediator.brokers.nats")


class LinkLost(ConnectionError):
    """A subscription's consumer or stream went away, or its fetch failed."""


TRANSIENT: tuple[type[BaseException], ...] = (
    nats.errors.Error,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)
"""What a subscription reconnects after (then `_fatal` picks out a refusal)."""

ERRORS = ErrorTable(
    sdk=(nats.errors.Error, OSError, asyncio.TimeoutError),
    rows=[
        ErrorRow(
            (nats.errors.AuthorizationError, nats.errors.InvalidUserCredentialsError),
            CredentialError,
            "NATS refused the login: check the user and password in the URL, or the token, "
            "nkey or credentials file given to the broker",
        ),
        ErrorRow(
            nats.js.errors.ServiceUnavailableError,
            TransportError,
            "JetStream did not answer: start nats-server with JetStream (-js), and check that "
            "the account may use it",
        ),
        ErrorRow(
            (nats.errors.SecureConnRequiredError, nats.errors.SecureConnWantedError),
            TransportError,
            "the server and the client disagree on TLS: use tls:// with tls= an SSL context "
            "where the server requires TLS, nats:// where it has none",
        ),
    ],
)
"""How nats-py's errors become the library's: a row is a refusal that
retrying cannot mend; anything else is the error the call site names."""


def raise_if_cancelled(error: BaseException) -> None:
    """Raise the cancellation of the running task that `error` stands for
    (nats-py reports one that lands mid-request as a timeout)."""
    if being_cancelled():
        if isinstance(error, asyncio.CancelledError):
            raise error
        raise asyncio.CancelledError from error


def publish_error(
    what: str,
    exc: BaseException,
    *,
    stream: str,
    subjects: str,
    address: str,
    publish_timeout: float,
    duplicate_window: float,
) -> TransportError:
    """The `PublishError` (a `CredentialError` for a refused login) of a
    publish that failed with `exc`, saying what to check."""
    if ERRORS.row(exc) is not None:
        return ERRORS.lift(exc, what, PublishError)
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        check = (
            f"no stream captures the subject: check that stream {stream!r} exists and "
            f"captures {subjects!r} (create_stream=True makes it)"
        )
    elif isinstance(exc, nats.errors.MaxPayloadError):
        check = "the server's max_payload is smaller: send less, or raise max_payload"
    elif isinstance(exc, TimeoutError):
        check = (
            f"no acknowledgement within {publish_timeout} s: check that the NATS server at "
            f"{address} runs with JetStream; the message may be stored already, and "
            f"publishing it again within {duplicate_window:g} s is dropped as a duplicate"
        )
    elif isinstance(exc, nats.errors.ConnectionClosedError):
        check = "the NATS connection is closed: stop publishing before closing it"
    else:
        check = "check the server's log and the stream's limits"
    return PublishError(f"{what} failed: {quote(repr(exc), 300)}; {check}")


async def ensure_stream(js: JetStreamContext, config: api.StreamConfig, *, create: bool) -> bool:
    """Make sure the stream of `config` exists and captures its subjects
    (making it when `create`); True when it was made now. A missing stream
    raises `EntityNotFoundError`, one capturing other subjects `TransportError`."""
    name, wanted = config.name or "", (config.subjects or [""])[0]
    made = False
    try:
        info = await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        if not create:
            raise EntityNotFoundError(
                f"NATS has no stream {name!r} and create_stream is False: create it "
                f"capturing {wanted!r}, or let the broker create it"
            ) from None
        try:
            info = await js.add_stream(config)
            made = True
            logger.info("made stream %s capturing %s", name, wanted)
        except nats.js.errors.BadRequestError:
            info = await js.stream_info(name)  # made by another process first
    subjects = info.config.subjects or []
    if wanted not in subjects:
        raise TransportError(
            f"the NATS stream {name!r} captures {subjects}, not {wanted!r}: delete it, or "
            "use another channel_prefix"
        )
    return made
