"""RabbitMQ: aio-pika's and aiormq's errors as the library's.

A refusal that retrying cannot mend (a login, a permission, a declaration
that clashes) becomes a `CredentialError` or a `TransportError` saying what
to check; a lost channel or connection is told apart from a cancellation of
the running task, which is always raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from aiormq import exceptions as amqp_errors
from aiormq.abc import AbstractChannel

from mediator.transport import (
    CredentialError,
    ErrorRow,
    ErrorTable,
    TransportError,
    being_cancelled,
)

__all__ = [
    "CONNECTION_LOST",
    "ERRORS",
    "LinkLost",
    "close_quietly",
    "raise_if_cancelled",
    "refusal",
    "settle",
]

logger = logging.getLogger("mediator.brokers.rabbitmq")

CONNECTION_LOST = (
    ConnectionError,
    OSError,
    amqp_errors.AMQPError,
    amqp_errors.ChannelInvalidStateError,
    asyncio.CancelledError,
)
"""What a publish or a settlement fails with when its channel or connection went away
(a cancelled command future among them); `raise_if_cancelled` tells a cancellation
of the running task apart."""


class LinkLost(ConnectionError):
    """A subscription's channel closed, or RabbitMQ cancelled its consumer."""


ERRORS = ErrorTable(
    # Every error aio-pika raises for a broker that refused or did not answer.
    sdk=(amqp_errors.AMQPError, amqp_errors.ChannelInvalidStateError, OSError, TimeoutError),
    rows=[
        ErrorRow(
            (amqp_errors.ProbableAuthenticationError, amqp_errors.AuthenticationError),
            CredentialError,
            "RabbitMQ refused the login: check the user and password in the URL",
        ),
        ErrorRow(
            amqp_errors.ConnectionNotAllowed,
            CredentialError,
            "RabbitMQ refused the virtual host: check that it exists and the user may use it "
            "(rabbitmqctl set_permissions)",
        ),
        ErrorRow(
            amqp_errors.ChannelAccessRefused,
            CredentialError,
            "RabbitMQ refused access: grant the user the configure, write and read "
            "permissions on the broker's exchanges and queues (rabbitmqctl set_permissions)",
        ),
        ErrorRow(
            amqp_errors.ChannelPreconditionFailed,
            TransportError,
            "RabbitMQ refused a declaration: a queue or exchange of that name exists with "
            "other settings (a classic queue where a quorum queue is declared, another "
            "dead-letter exchange or limit): delete it, or use another group or prefix",
        ),
        ErrorRow(
            amqp_errors.ChannelLockedResource,
            TransportError,
            "RabbitMQ refused: the queue is exclusive to another connection",
        ),
    ],
)
"""How aio-pika's errors become the library's: a row is a refusal that
retrying cannot mend; anything else is the error the call site names."""


def refusal(what: str, exc: BaseException) -> TransportError | None:
    """The library's error for a refusal retrying cannot mend, else None."""
    if ERRORS.row(exc) is None:
        return None
    return ERRORS.lift(exc, what, TransportError)


def raise_if_cancelled(error: BaseException) -> None:
    """Raise a cancellation of the running task that `error` stands for:
    aiormq reports one that lands as a channel closes as the channel's error."""
    if being_cancelled():
        if isinstance(error, asyncio.CancelledError):
            raise error
        raise asyncio.CancelledError from error


async def settle(command: Awaitable[None]) -> BaseException | None:
    """Await a settlement command; the error of a lost channel instead of
    raising it. A cancellation of the running task is raised: the message is
    then not settled here, and RabbitMQ delivers it again."""
    try:
        await command
    except CONNECTION_LOST as exc:
        raise_if_cancelled(exc)
        return exc
    return None


async def close_quietly(channel: AbstractChannel) -> None:
    """Close `channel`, logging (never raising) a failure of a connection gone already."""
    if channel.is_closed:
        return
    try:
        await channel.close()
    except Exception:  # the connection is gone already
        logger.debug("closing a channel failed", exc_info=True)
