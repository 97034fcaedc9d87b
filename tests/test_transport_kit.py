"""The transport kit: the reconnect loop, error mapping, dead-letter records."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any

import pytest

from mediator.transport import (
    Backoff,
    BrokerUnavailableError,
    CredentialError,
    DeadLetterRecord,
    DeliveryBase,
    ErrorRow,
    ErrorTable,
    PublishError,
    ReconnectingSubscription,
    SubscriptionLostError,
    TransportError,
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


class ToySDKError(Exception):
    pass


class ToyAuthError(ToySDKError):
    pass


TOY_ERRORS = ErrorTable(
    sdk=(ToySDKError, OSError),
    rows=[
        ErrorRow(ToyAuthError, CredentialError, "check the toy's password"),
        ErrorRow(OSError, BrokerUnavailableError, "check that the toy runs"),
    ],
)


@pytest.mark.parametrize(
    ("raised", "expected", "text"),
    [
        (
            ToyAuthError("denied"),
            CredentialError,
            "checking toy failed: ToyAuthError: denied; check the toy's password",
        ),
        (ConnectionRefusedError("refused"), BrokerUnavailableError, "check that the toy runs"),
        (ToySDKError("odd"), PublishError, "checking toy failed: ToySDKError: odd"),
    ],
)
def test_an_error_table_lifts_each_row_and_the_rest_as_the_call_site_says(
    raised: Exception, expected: type[TransportError], text: str
) -> None:
    with (
        pytest.raises(expected) as caught,
        TOY_ERRORS.mapped("checking toy", otherwise=PublishError),
    ):
        raise raised
    assert type(caught.value) is expected
    assert text in str(caught.value)
    assert caught.value.__cause__ is raised
    with pytest.raises(KeyError), TOY_ERRORS.mapped("x"):
        raise KeyError("not the SDK's: passes through")
    with pytest.raises(SubscriptionLostError), TOY_ERRORS.mapped("x"):
        raise SubscriptionLostError("already the library's")


async def test_an_sdk_error_standing_for_a_cancellation_is_raised_as_one() -> None:
    """An SDK that turns a cancellation landing mid-command into its own error:
    the table (and every settle verb of the kit) raises the cancellation."""
    started = asyncio.Event()

    async def command() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise ToySDKError("the command was interrupted") from None

    async def mapped() -> None:
        with TOY_ERRORS.mapped("a toy command"):
            await command()

    task = asyncio.create_task(mapped())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    class Interrupted(DeliveryBase):
        async def _ack(self) -> None:
            await command()

        async def _release(self) -> None:
            pass

        async def _dead_letter(self, reason: str, description: str) -> None:
            pass

    started.clear()
    ack = asyncio.create_task(Interrupted("toy:x", b"{}").ack())
    await started.wait()
    ack.cancel()
    with pytest.raises(asyncio.CancelledError):
        await ack


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


# -- settling under cancellation (the RabbitMQ cases run in test_rabbitmq.py) ------------


class StuckCall:
    """An SDK's settlement call that holds until it is cancelled, then
    raises the CancelledError, or the error `reported_as` makes (a client
    may report a cancellation as its own error)."""

    def __init__(self, reported_as: Callable[[], BaseException] | None) -> None:
        self.reported_as = reported_as
        self.entered = asyncio.Event()

    async def __call__(self, *args: object, **kwargs: object) -> None:
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if self.reported_as is None:
                raise
            raise self.reported_as() from None


def kafka_delivery(call: StuckCall, settled: list[object]) -> DeliveryBase:
    kafka = pytest.importorskip("brokers.kafka")
    subscription = SimpleNamespace(
        _owner=SimpleNamespace(_send_dead_letter=call),
        _redeliver=settled.append,
        _settled=settled.append,
    )
    partition = SimpleNamespace(channel="shop:notification_event:OrderPlaced")
    record = SimpleNamespace(value=b"{}", topic="shop.OrderPlaced", partition=0, offset=7)
    delivery: DeliveryBase = kafka.KafkaDelivery(subscription, partition, record)
    return delivery


def azure_delivery(call: StuckCall, settled: list[object]) -> DeliveryBase:
    azure = pytest.importorskip("brokers.azure")
    receiver = SimpleNamespace(
        complete_message=call, abandon_message=call, dead_letter_message=call
    )
    message = SimpleNamespace(body=[b"{}"], delivery_count=0, message_id="order-1")
    subscription = SimpleNamespace(_renewing=set())
    delivery: DeliveryBase = azure.AzureDelivery(
        subscription, receiver, message, "shop:notification_event:OrderPlaced"
    )
    return delivery


def kafka_error() -> BaseException:
    from aiokafka.errors import KafkaConnectionError  # type: ignore[import-untyped]

    error: BaseException = KafkaConnectionError("connection closed")
    return error


def service_bus_error() -> BaseException:
    from azure.servicebus.exceptions import ServiceBusConnectionError

    return ServiceBusConnectionError(message="connection closed")


def lock_lost() -> BaseException:
    from azure.servicebus.exceptions import MessageLockLostError

    return MessageLockLostError(message="lock lost")


def link_closed() -> BaseException:
    return ValueError("Link already closed.")


SETTLE = {
    "ack": lambda d: d.ack(),
    "release": lambda d: d.release(),
    "dead_letter": lambda d: d.dead_letter("rejected", "refused"),
}


@pytest.mark.parametrize(
    ("make", "verb", "reported_as"),
    [
        pytest.param(kafka_delivery, "dead_letter", None, id="kafka-dead_letter"),
        pytest.param(kafka_delivery, "dead_letter", kafka_error, id="kafka-dead_letter-as-error"),
        *(
            pytest.param(azure_delivery, verb, reported_as, id=f"azure-{verb}-{name}")
            for verb in SETTLE
            for name, reported_as in [
                ("cancelled", None),
                ("as-service-bus-error", service_bus_error),
                ("as-lock-lost", lock_lost),
                ("as-closed-link", link_closed),
            ]
        ),
    ],
)
async def test_no_settle_verb_swallows_a_cancellation(
    make: Callable[[StuckCall, list[object]], DeliveryBase],
    verb: str,
    reported_as: Callable[[], BaseException] | None,
) -> None:
    call = StuckCall(reported_as)
    settled: list[object] = []
    delivery = make(call, settled)
    settling: asyncio.Task[Any] = asyncio.create_task(SETTLE[verb](delivery))
    async with asyncio.timeout(10):
        await call.entered.wait()
    settling.cancel()
    await asyncio.wait([settling])
    assert settling.cancelled()
    assert settled == []  # neither settled nor handed back by the transport


class FailingCall:
    """An SDK settlement call that fails at once with `error()`."""

    def __init__(self, error: Callable[[], BaseException]) -> None:
        self.error = error

    async def __call__(self, *args: object, **kwargs: object) -> None:
        raise self.error()


@pytest.mark.parametrize("error", [service_bus_error, lock_lost, link_closed])
async def test_an_azure_dead_letter_that_fails_raises_and_leaves_the_delivery_releasable(
    error: Callable[[], BaseException],
) -> None:
    """As on every transport: the consumer, told, logs once and releases it
    after its backoff, instead of counting a dead letter that is not there."""
    delivery = azure_delivery(FailingCall(error), [])  # type: ignore[arg-type]
    with pytest.raises(PublishError, match="could not dead-letter message order-1"):
        await delivery.dead_letter("rejected", "refused")
    assert delivery.settled is None
