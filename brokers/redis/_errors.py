"""Redis: how redis-py's errors become the library's.

The error code of a reply (``NOGROUP``, ``OOM`` ...), Redis's words quoted
code first, the table of what each error means and what to check, and what
stops a subscription for good (docs/redis-streams.md, "Connections").
"""

from __future__ import annotations

from collections.abc import Sequence

from redis import exceptions as redis_errors

from mediator.transport import (
    BrokerUnavailableError,
    CredentialError,
    ErrorRow,
    ErrorTable,
    Message,
    SubscriptionLostError,
    TransportError,
    quote,
)

CREDENTIAL_ERRORS = (
    redis_errors.AuthenticationError,
    redis_errors.AuthorizationError,
    redis_errors.NoPermissionError,
)
CONNECTION_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
CLUSTER_ERRORS = (redis_errors.RedisClusterException,)
"""What a cluster client raises of its own (no node for a slot, the cluster
unreachable while its topology changes); not a RedisError."""
REDIS_ERRORS = (redis_errors.RedisError, OSError, *CLUSTER_ERRORS)
"""Everything redis-py raises."""
PASSING = (
    "READONLY",  # a replica after a failover: writes come back with the new primary
    "OOM",  # full: room comes back as keys expire or are deleted
    "BUSY",  # a long script or function
    "LOADING",  # loading its data after a restart
    "MASTERDOWN",
    "MISCONF",  # snapshots failing: writes refused until they work again
    "NOREPLICAS",
    "TRYAGAIN",
    "CLUSTERDOWN",  # a cluster failing over, or without a primary for a slot
    "MOVED",  # a slot moved, still moving after redis-py's redirections
    "ASK",
    "UNBLOCKED",  # a blocked read ended by the server (role change, key deleted)
)
"""Error replies of a server state that passes: wait (with backoff) and read again."""

_CODES: tuple[tuple[type[BaseException], str], ...] = (
    # redis-py takes the code off the replies it has a class for.
    (redis_errors.ReadOnlyError, "READONLY"),
    (redis_errors.OutOfMemoryError, "OOM"),
    (redis_errors.TryAgainError, "TRYAGAIN"),
    (redis_errors.MasterDownError, "MASTERDOWN"),
    (redis_errors.ClusterDownError, "CLUSTERDOWN"),
    (redis_errors.NoPermissionError, "NOPERM"),
)


def code(error: BaseException) -> str:
    """The error code of a Redis reply (``NOGROUP``, ``OOM`` ...)."""
    for kind, name in _CODES:
        if isinstance(error, kind):
            return name
    return str(error).split(" ", 1)[0]


def describe(error: BaseException) -> str:
    """A Redis error reply as Redis wrote it, code first, bounded."""
    text = str(error)
    name = code(error)
    return quote(text if text.startswith(name) else f"{name} {text}")


ERRORS = ErrorTable(
    sdk=REDIS_ERRORS,
    rows=[
        ErrorRow(  # subclasses of ConnectionError: first
            CREDENTIAL_ERRORS,
            CredentialError,
            "check the user and password in the URL or on the client, and the user's ACL",
        ),
        ErrorRow(
            CONNECTION_ERRORS,
            BrokerUnavailableError,
            "check the address, and that Redis runs and accepts connections",
        ),
        ErrorRow(
            CLUSTER_ERRORS,
            BrokerUnavailableError,
            "check that the cluster's nodes run and that every slot has a primary "
            "(redis-cli --cluster check)",
        ),
    ],
    describe=describe,
)
"""How redis-py's errors become the library's, with what to check."""


def lost(error: Exception) -> TransportError:
    """A redis-py error of a subscription as the library's, with Redis's
    words only (the subscription's log line says which one it was)."""
    row = ERRORS.row(error)
    return (TransportError if row is None else row.error)(describe(error))


def fatal(subscription: object, error: BaseException) -> BaseException | None:
    """What a subscription stops with after `error` (from `lost`); None to
    wait and retry."""
    cause = error.__cause__
    if isinstance(error, CredentialError):
        return CredentialError(
            f"Redis refused the credential of {subscription!r} ({quote(str(cause))}); "
            "check the user's password and ACL, then start the consumer again"
        )
    if isinstance(cause, redis_errors.ResponseError) and code(cause) not in PASSING:
        return SubscriptionLostError(
            f"Redis answered {subscription!r} with an error that waiting does not mend "
            f"({describe(cause)}); the consumer stops"
        )
    return None


def batch_names(messages: Sequence[Message]) -> str:
    """The names in a batch, each once with its count, bounded: for errors."""
    counts: dict[str, int] = {}
    for message in messages:
        counts[message.message_name] = counts.get(message.message_name, 0) + 1
    return quote(", ".join(f"{n} x{c}" if c > 1 else n for n, c in counts.items()))
