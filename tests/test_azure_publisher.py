"""How a publish is cut into Service Bus batches (brokers/azure/_publisher.py),
without a server: a stand-in sender hands out batches of the SDK's own class
with a small size limit and records what it is given."""

from __future__ import annotations

import os

import pytest

try:
    from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch
    from azure.servicebus.exceptions import MessageSizeExceededError

    from brokers.azure._publisher import send_in_batches
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise
    pytest.skip(f"azure-servicebus missing: {exc}", allow_module_level=True)

LIMIT = 1024
"""Bytes a batch may hold, as the sender link would announce it."""


class Batch(ServiceBusMessageBatch):
    """The SDK's batch, noting the ids of the messages it took."""

    def __init__(self) -> None:
        super().__init__(max_size_in_bytes=LIMIT)
        self.ids: list[str | None] = []

    def add_message(self, message: ServiceBusMessage) -> None:  # type: ignore[override]
        super().add_message(message)
        self.ids.append(message.message_id)


class Sender:
    """The part of a ServiceBusSender that batching uses."""

    def __init__(self) -> None:
        self.sent: list[tuple[list[str | None], float | None]] = []

    async def create_message_batch(self) -> Batch:
        return Batch()

    async def send_messages(self, batch: Batch, timeout: float | None) -> None:
        self.sent.append((batch.ids, timeout))


def message(n: int, size: int = 300) -> ServiceBusMessage:
    return ServiceBusMessage(b"x" * size, message_id=f"order-{n}", subject="OrderPlaced")


async def test_a_publish_too_big_for_one_batch_goes_out_in_several_in_order() -> None:
    sender = Sender()
    await send_in_batches(sender, [message(n) for n in range(7)], 15.0)  # type: ignore[arg-type]
    assert len(sender.sent) > 1
    assert [m for ids, _ in sender.sent for m in ids] == [f"order-{n}" for n in range(7)]
    assert {timeout for _, timeout in sender.sent} == {15.0}  # each batch's send is bounded


async def test_a_message_over_the_limit_is_named_and_nothing_is_sent() -> None:
    sender = Sender()
    outgoing = [message(1), message(2), message(3, size=2 * LIMIT), message(4)]
    with pytest.raises(MessageSizeExceededError) as caught:
        await send_in_batches(sender, outgoing, None)  # type: ignore[arg-type]
    assert caught.value.args[0] == "OrderPlaced (order-3)"
    assert sender.sent == []
