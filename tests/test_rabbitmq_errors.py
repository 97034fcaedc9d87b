"""aio-pika's and aiormq's errors as the library's (brokers/rabbitmq/_errors.py),
without a server: which refusals stop for good and what they say to check,
and a lost channel told apart from a cancellation."""

from __future__ import annotations

import asyncio

import pytest
from aiormq import exceptions as amqp_errors

from brokers.rabbitmq._errors import ERRORS, refusal, settle
from mediator.transport import BrokerUnavailableError, CredentialError, TransportError


@pytest.mark.parametrize(
    ("error", "check"),
    [
        (amqp_errors.ProbableAuthenticationError("ACCESS_REFUSED"), "user and password"),
        (amqp_errors.ConnectionNotAllowed("vhost 'x' not found"), "virtual host"),
        (amqp_errors.ChannelAccessRefused("access to exchange 'shop'"), "set_permissions"),
    ],
)
def test_a_refused_login_virtual_host_or_permission_is_a_credential_error(
    error: BaseException, check: str
) -> None:
    with pytest.raises(CredentialError, match=check), ERRORS.mapped("starting", TransportError):
        raise error


def test_a_clashing_declaration_stops_for_good_and_says_what_to_delete() -> None:
    refused = refusal("subscribing", amqp_errors.ChannelPreconditionFailed("x-queue-type"))
    assert type(refused) is TransportError
    assert "delete it, or use another group or prefix" in str(refused)
    exclusive = refusal("subscribing", amqp_errors.ChannelLockedResource("locked"))
    assert type(exclusive) is TransportError


@pytest.mark.parametrize(
    "error",
    [
        ConnectionResetError(),
        amqp_errors.ChannelInvalidStateError("channel closed"),
        amqp_errors.ConnectionClosed(320, "CONNECTION_FORCED"),
        TimeoutError(),
    ],
)
def test_a_lost_connection_is_no_refusal_and_is_retried(error: BaseException) -> None:
    assert refusal("subscribing", error) is None


def test_anything_else_aio_pika_raises_is_the_error_the_call_site_names() -> None:
    with (
        pytest.raises(BrokerUnavailableError, match=r"^connecting failed: ") as raised,
        ERRORS.mapped("connecting", BrokerUnavailableError),
    ):
        raise ConnectionRefusedError("refused")
    assert not isinstance(raised.value, CredentialError)


async def test_a_settlement_on_a_lost_channel_returns_the_error_instead_of_raising() -> None:
    async def ack() -> None:
        raise amqp_errors.ChannelInvalidStateError("channel closed")

    assert isinstance(await settle(ack()), amqp_errors.ChannelInvalidStateError)


async def test_a_settlement_cut_off_by_cancelling_its_task_raises_the_cancellation() -> None:
    seen: list[str] = []

    async def ack() -> None:
        # aiormq reports a cancellation landing as its channel closes as the channel's error.
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        raise amqp_errors.ChannelInvalidStateError("channel closed")

    async def settling() -> None:
        try:
            await settle(ack())
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        seen.append("returned")

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(settling())
    assert seen == ["cancelled"]
