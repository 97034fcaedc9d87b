"""`BrokerLifecycle`: ``start()``/``stop()``/``async with`` for every transport."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

from mediator._exceptions import MessageTooLargeError
from mediator._limits import quote
from mediator._message import DEFAULT_MAX_MESSAGE_SIZE, Message, encode_message

__all__ = ["BrokerLifecycle", "close_all"]

logger = logging.getLogger("mediator.transport")


async def close_all(closables: Iterable[Any], what: str = "subscription") -> None:
    """`close()` each of `closables` concurrently; a failure is logged, never
    raised, so one broken link does not keep the others open."""
    items = list(closables)
    if not items:
        return
    results = await asyncio.gather(*(item.close() for item in items), return_exceptions=True)
    for item, result in zip(items, results, strict=True):
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            logger.warning("closing %s %r failed: %r", what, item, result)


class BrokerLifecycle:
    """``start()``/``stop()``/``async with`` for every transport, and the
    subscriptions it must close.

    A transport overrides the hooks `_open`, `_close` and `_close_client`;
    `stop()` closes every live subscription concurrently, then `_close`,
    then the client only if the broker built it (`owns_client`).
    """

    _owns_client: bool = False
    _subscriptions: set[Any]

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if max_message_size < 1:
            raise ValueError(
                f"{type(self).__name__}(max_message_size={max_message_size}): must be a "
                "positive number of bytes"
            )
        self._subscriptions = set()
        self.max_message_size = max_message_size
        """The largest envelope, in bytes, this broker publishes, and the
        limit its consumers decode with unless told otherwise."""

    def encode(self, message: Message) -> bytes:
        """`message` as the bytes to publish, refused with MessageTooLargeError
        when they exceed `max_message_size`."""
        data = encode_message(message)
        if len(data) > self.max_message_size:
            raise MessageTooLargeError(
                f"the envelope of {quote(message.message_name, 200)} ({message.message_id}) is "
                f"{len(data)} bytes, and {type(self).__name__}'s consumers refuse more than "
                f"{self.max_message_size} (max_message_size): send less per event (a "
                "reference to the data rather than the data), or raise max_message_size on "
                "the broker, which its consumers follow"
            )
        return data

    @property
    def owns_client(self) -> bool:
        """Whether `stop()` closes the client (True when `from_url` or the
        like built it)."""
        return self._owns_client

    async def start(self) -> None:
        """Open what the transport needs before use; publishing and
        subscribing also work without it where the SDK connects on demand."""
        await self._open()

    async def stop(self) -> None:
        """Close every subscription (concurrently), then what the transport
        opened, then the client if the broker made it."""
        await close_all(self._subscriptions)
        self._subscriptions.clear()
        try:
            await self._close()
        finally:
            if self._owns_client:
                await self._close_client()

    async def _open(self) -> None:
        """Hook: connect or check the connection."""

    async def _close(self) -> None:
        """Hook: close senders, channels and the like (never the client)."""

    async def _close_client(self) -> None:
        """Hook: close the client the broker built itself."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
