"""The transport kit: the reconnect loop, error mapping, dead-letter records."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pytest

from mediator.transport import (
    Backoff,
    BrokerUnavailableError,
    CredentialError,
    DeadLetterRecord,
    ReconnectingSubscription,
    SubscriptionLostError,
    map_errors,
    quote,
)


class Script(ReconnectingSubscription[str]):
    """Receives what `steps` says: a batch, or an exception to raise."""

    backoff = Backoff(initial=0, jitter=0)

    def __init__(self, steps: list[list[str] | BaseException]) -> None:
        super().__init__("shop:*", None)
        self.steps = steps
        self.connects = 0

    async def _connect(self) -> None:
        self.connects += 1

    async def _receive(self) -> Iterable[str]:
        step = self.steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        if not self.steps:
            self.closed = True
        return step

    async def _disconnect(self) -> None:
        pass


async def test_a_transient_error_reconnects_and_says_when_it_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    subscription = Script([["a"], ConnectionResetError("gone"), ["b"]])
    assert [d async for d in subscription] == ["a", "b"]
    assert subscription.connects == 2
    assert "lost <Script shop:*> (ConnectionResetError: gone); reconnecting" in caplog.text
    assert "<Script shop:*> is back after" in caplog.text


async def test_an_unexpected_error_ends_it_as_a_subscription_lost_error() -> None:
    subscription = Script([["a"], KeyError("reply shape")])
    received: list[str] = []

    async def read() -> None:
        async for delivery in subscription:
            received.append(delivery)

    with pytest.raises(SubscriptionLostError, match=r"<Script shop:\*> failed: KeyError") as caught:
        await read()
    assert received == ["a"]
    assert isinstance(caught.value.__cause__, KeyError)


async def test_map_errors_keeps_the_cause_and_lets_library_errors_through() -> None:
    mapping = {PermissionError: CredentialError, OSError: BrokerUnavailableError}
    with (
        pytest.raises(CredentialError, match="connecting to toy failed: denied") as caught,
        map_errors("connecting to toy", mapping),
    ):
        raise PermissionError("denied")
    assert isinstance(caught.value.__cause__, PermissionError)
    with pytest.raises(SubscriptionLostError), map_errors("x", mapping):
        raise SubscriptionLostError("already ours")
    with pytest.raises(KeyError), map_errors("x", mapping):
        raise KeyError("not named: passes through")


def test_a_dead_letter_record_is_bounded_and_reads_back_from_its_fields() -> None:
    record = DeadLetterRecord.of("shop:x", b"y" * 70_000, "too_large", "d" * 5000, 3)
    assert (record.size, len(record.data), record.truncated) == (70_000, 64 * 1024, True)
    assert len(record.description) == 1024
    # As Redis hands a stream entry back: every key and value as bytes.
    fields = {
        k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in record.fields().items()
    }
    assert DeadLetterRecord.from_fields(fields) == record


@pytest.mark.parametrize("size", [1024, 1025, 5000, 1_000_000])
def test_quote_never_exceeds_its_limit(size: int) -> None:
    quoted = quote("x" * size)
    assert len(quoted) <= 1024
    assert quoted == "x" * size or quoted.endswith("more characters)")
