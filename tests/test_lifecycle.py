"""BrokerLifecycle, the base of every broker: what `stop()` closes, in which
order, and the size limit `encode` enforces. No server: the hooks record calls."""

from __future__ import annotations

from collections.abc import Iterable

import attrs
import pytest

from mediator import MessageCodec, NotificationEvent
from mediator.transport import (
    BrokerLifecycle,
    Message,
    MessageTooLargeError,
    ReconnectingSubscription,
    encode_message,
)


class Recorded(BrokerLifecycle):
    def __init__(self, calls: list[str], *, owns_client: bool, close_fails: bool = False) -> None:
        super().__init__(max_message_size=1000)
        self.calls = calls
        self._owns_client = owns_client
        self.close_fails = close_fails

    async def _open(self) -> None:
        self.calls.append("open")

    async def _close(self) -> None:
        self.calls.append("close")
        if self.close_fails:
            raise OSError("the channel is gone")

    async def _close_client(self) -> None:
        self.calls.append("close client")


class Link(ReconnectingSubscription[str]):
    def __init__(self, name: str, calls: list[str], broker: BrokerLifecycle, fails: bool) -> None:
        super().__init__(f"shop:{name}", None, broker=broker)
        self.calls = calls
        self.fails = fails

    async def _connect(self) -> None:
        pass

    async def _receive(self) -> Iterable[str]:
        return []

    async def _disconnect(self) -> None:
        self.calls.append(f"disconnect {self.pattern}")
        if self.fails:
            raise ConnectionResetError("reset by peer")


async def test_stop_closes_every_subscription_then_the_broker_then_an_owned_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []
    broker = Recorded(calls, owns_client=True)
    async with broker:
        Link("a", calls, broker, fails=True)
        Link("b", calls, broker, fails=False)
    # One subscription failing to close neither stops the others nor the stop.
    assert calls[0] == "open"
    assert sorted(calls[1:3]) == ["disconnect shop:a", "disconnect shop:b"]
    assert calls[3:] == ["close", "close client"]
    assert "closing subscription <Link shop:a> failed" in caplog.text


async def test_a_client_passed_in_stays_the_callers() -> None:
    calls: list[str] = []
    async with Recorded(calls, owns_client=False):
        pass
    assert calls == ["open", "close"]


async def test_an_owned_client_is_closed_even_when_closing_the_rest_fails() -> None:
    calls: list[str] = []
    broker = Recorded(calls, owns_client=True, close_fails=True)
    with pytest.raises(OSError, match="the channel is gone"):
        await broker.stop()
    assert calls == ["close", "close client"]


async def test_a_subscription_closed_first_is_not_closed_again_by_stop() -> None:
    calls: list[str] = []
    broker = Recorded(calls, owns_client=False)
    link = Link("a", calls, broker, fails=False)
    await link.close()
    await link.close()
    await broker.stop()
    assert calls == ["disconnect shop:a", "close"]


@attrs.frozen(kw_only=True)
class Note(NotificationEvent):
    text: str


def envelope_of(size: int) -> Message:
    """An envelope whose bytes are exactly `size` long."""
    message = MessageCodec.to_message(Note(text=""))
    padding = size - len(encode_message(message))
    return MessageCodec.to_message(Note(text="x" * padding))


def test_encode_refuses_an_envelope_over_the_brokers_limit() -> None:
    broker = Recorded([], owns_client=False)
    assert len(broker.encode(envelope_of(1000))) == 1000
    with pytest.raises(MessageTooLargeError, match=r"is 1001 bytes, and Recorded's consumers"):
        broker.encode(envelope_of(1001))


@pytest.mark.parametrize("size", [0, -1])
def test_a_limit_below_one_byte_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="must be a positive number of bytes"):
        BrokerLifecycle(max_message_size=size)
