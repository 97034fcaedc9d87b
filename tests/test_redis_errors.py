"""How redis-py's errors become the library's, without a server
(brokers/redis/_errors.py): the error each one maps to, Redis's words as
the message, and which errors stop a subscription for good."""

from __future__ import annotations

import os

import pytest

from mediator.transport import (
    BrokerUnavailableError,
    CredentialError,
    Message,
    SubscriptionLostError,
    TransportError,
)

try:
    from redis import exceptions as redis_errors

    from brokers.redis._errors import batch_names, describe, fatal, lost
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise
    pytest.skip(f"redis-py missing: {exc}", allow_module_level=True)

READONLY = redis_errors.ReadOnlyError("You can't write against a read only replica.")


def mapped(error: Exception) -> TransportError:
    """`error` as a subscription raises it: mapped, chained to redis-py's."""
    try:
        raise lost(error) from error
    except TransportError as exc:
        return exc


def test_an_error_reply_is_quoted_as_redis_wrote_it_code_first() -> None:
    # redis-py takes the code off the replies it has a class for: put it back.
    assert describe(READONLY) == "READONLY You can't write against a read only replica."
    no_group = redis_errors.ResponseError("NOGROUP No such key 's' or consumer group 'g'")
    assert describe(no_group) == "NOGROUP No such key 's' or consumer group 'g'"


def test_an_error_quoted_in_a_log_line_is_bounded() -> None:
    assert len(describe(redis_errors.ResponseError("ERR " + "x" * 100_000))) <= 1100


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (
            redis_errors.ConnectionError("Error 111 connecting to 127.0.0.1:1."),
            BrokerUnavailableError,
        ),
        (redis_errors.TimeoutError("Timeout reading from socket"), BrokerUnavailableError),
        (ConnectionResetError(104, "Connection reset by peer"), BrokerUnavailableError),
        (redis_errors.AuthenticationError("invalid username-password pair"), CredentialError),
        (redis_errors.NoPermissionError("this user has no permissions"), CredentialError),
        (READONLY, TransportError),
    ],
)
def test_each_redis_error_maps_to_the_library_s(
    error: Exception, kind: type[TransportError]
) -> None:
    assert type(lost(error)) is kind


@pytest.mark.parametrize(
    "error",
    [
        READONLY,
        redis_errors.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
        redis_errors.ResponseError("BUSY Redis is busy running a script."),
        redis_errors.ResponseError("MISCONF Redis is configured to save RDB snapshots"),
        redis_errors.ResponseError("UNBLOCKED the stream key no longer exists"),
        redis_errors.BusyLoadingError("Redis is loading the dataset in memory"),
        redis_errors.ConnectionError("Connection closed by server."),
    ],
)
def test_a_server_state_that_passes_is_waited_out(error: Exception) -> None:
    assert fatal("<sub>", mapped(error)) is None


def test_a_refused_credential_stops_the_subscription_saying_what_to_check() -> None:
    stop = fatal("<sub>", mapped(redis_errors.AuthenticationError("WRONGPASS invalid")))
    assert isinstance(stop, CredentialError)
    assert "<sub>" in str(stop)
    assert "WRONGPASS invalid" in str(stop)
    assert "check the user's password and ACL" in str(stop)


def test_an_error_reply_that_waiting_does_not_mend_stops_the_subscription() -> None:
    error = redis_errors.ResponseError("ERR unknown command 'XREADGROUP'")
    stop = fatal("<sub>", mapped(error))
    assert isinstance(stop, SubscriptionLostError)
    assert "ERR unknown command 'XREADGROUP'" in str(stop)


def test_a_failed_batch_names_its_messages_each_once_with_a_count() -> None:
    def message(name: str) -> Message:
        return Message(message_type="notification_event", message_name=name, payload={})

    batch = [message("OrderPlaced"), message("UserSignedUp"), message("OrderPlaced")]
    assert batch_names(batch) == "OrderPlaced x2, UserSignedUp"
