"""The receive loop every transport shares: `ReconnectingSubscription`, and
`Reconnection`, its log-and-back-off step, for an SDK with a loop of its own."""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import ClassVar, Generic, TypeVar

from mediator._error_mapping import being_cancelled, describe_error
from mediator._exceptions import SubscriptionLostError, TransportError
from mediator._lifecycle import BrokerLifecycle
from mediator._limits import quote
from mediator._policies import Backoff

__all__ = ["RECONNECT", "ReconnectingSubscription", "Reconnection"]

logger = logging.getLogger("mediator.transport")

RECONNECT = Backoff(initial=0.1, multiplier=2, maximum=5.0, jitter=0.2)
"""The default backoff between reconnect attempts: 0.1 s doubling to 5 s, ±20 %."""


class Reconnection:
    """The retry step of a subscription after a failed receive: re-raise a
    pending cancellation, stop when closed, else log and wait a capped backoff.

    ```python
    retry = Reconnection(logger, Backoff(initial=0.1))
    ...
    except ConnectionError as exc:
        if not await retry.pause(f"lost {pattern!r}", exc, closed=self.closed):
            return
        continue
    retry.succeeded()
    ```
    """

    __slots__ = ("_attempt", "_backoff", "_logger")

    def __init__(self, logger: logging.Logger, backoff: Backoff = RECONNECT) -> None:
        self._logger = logger
        self._backoff = backoff
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """Failures since the last success."""
        return self._attempt

    def succeeded(self) -> None:
        """A receive worked: the next failure starts the backoff over."""
        self._attempt = 0

    async def pause(
        self,
        what: str,
        error: BaseException,
        *,
        closed: bool,
        then: str = "retrying",
        before_wait: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """After `error`: False when the subscription was closed (the caller
        ends), else log a WARNING, run `before_wait`, wait the backoff and
        return True. A pending cancellation is re-raised as such."""
        if being_cancelled():
            raise asyncio.CancelledError from error
        if closed:
            return False
        self._attempt += 1
        delay = self._backoff.delay(self._attempt)
        self._logger.warning(
            "%s (%s); %s in %.2fs (attempt %d)",
            what,
            describe_error(error),
            then,
            delay,
            self._attempt,
        )
        if before_wait is not None:
            await before_wait()
        await asyncio.sleep(delay)
        return True


D = TypeVar("D")


class ReconnectingSubscription(abc.ABC, Generic[D]):
    """A subscription that comes back by itself after its link fails.

    A transport says how to `_connect`, how to `_receive` one batch and how
    to `_disconnect`; the base runs the loop, reconnecting after an error in
    `transient` with a capped backoff, and ends with the exception `_fatal`
    maps an error to.
    """

    logger: ClassVar[logging.Logger] = logger
    """Where the reconnect lines go; a transport sets its own."""
    backoff: ClassVar[Backoff] = RECONNECT
    """The wait between reconnect attempts (capped, so any outage is survived)."""
    transient: ClassVar[tuple[type[BaseException], ...]] = (ConnectionError, OSError)
    """Errors of `_connect`/`_receive` worth reconnecting after."""

    def __init__(
        self, pattern: str, group: str | None, *, broker: BrokerLifecycle | None = None
    ) -> None:
        self.pattern = pattern
        self.group = group
        self.closed = False
        self._broker = broker
        self._connected = False
        self._lost_at: float | None = None
        if broker is not None:
            broker._subscriptions.add(self)

    def __repr__(self) -> str:
        group = "" if self.group is None else f" in group {self.group!r}"
        return f"<{type(self).__name__} {quote(self.pattern, 200)}{group}>"

    @property
    def connected(self) -> bool:
        """Whether the link is up (False while reconnecting)."""
        return self._connected and not self.closed

    async def open(self) -> None:
        """Connect once, raising what `_connect` raises: `subscribe()` calls
        this so that a subscription that cannot start says so at once."""
        await self._connect()
        self._connected = True

    @abc.abstractmethod
    async def _connect(self) -> None:
        """Open the link and subscribe; live when it returns."""

    @abc.abstractmethod
    async def _receive(self) -> Iterable[D]:
        """Wait for the next batch of deliveries (may be empty, e.g. on a timeout)."""

    @abc.abstractmethod
    async def _disconnect(self) -> None:
        """Drop the link; must not raise (log instead)."""

    def _fatal(self, error: BaseException) -> BaseException | None:
        """The exception to stop with when `error` cannot be mended by
        reconnecting (a refused credential, a deleted entity); None to retry."""
        return None

    async def _closing(self) -> None:
        """Hook: run once by `close()` before the link is dropped."""

    def __aiter__(self) -> AsyncIterator[D]:
        return self._deliveries()

    async def _deliveries(self) -> AsyncIterator[D]:
        retry = Reconnection(self.logger, self.backoff)
        loop = asyncio.get_running_loop()
        while not self.closed:
            # Some clients swallow a cancellation that lands as a command
            # completes (asyncio.wait_for on 3.11); the task still says so.
            if being_cancelled():
                raise asyncio.CancelledError
            try:
                if not self._connected:
                    await self._connect()
                    self._connected = True
                    if self._lost_at is not None:
                        # A transport whose link can open without working
                        # checks it inside _connect, so this line is true.
                        self.logger.warning(
                            "%r is back after %.1fs away", self, loop.time() - self._lost_at
                        )
                        self._lost_at = None
                batch = await self._receive()
            except self.transient as exc:
                fatal = self._fatal(exc)
                if fatal is not None:
                    self.logger.error("%r failed for good: %s", self, quote(str(fatal)))
                    raise fatal from exc
                self._connected = False
                if self._lost_at is None:
                    self._lost_at = loop.time()
                if await retry.pause(
                    f"lost {self!r}",
                    exc,
                    closed=self.closed,
                    then="reconnecting",
                    before_wait=self._disconnect,
                ):
                    continue
                return
            except TransportError:
                raise
            except Exception as exc:
                # Neither transient nor mapped: never let the SDK's own error
                # out raw, and say which subscription it ended.
                raise SubscriptionLostError(f"{self!r} failed: {describe_error(exc)}") from exc
            retry.succeeded()
            for delivery in batch:
                yield delivery

    async def close(self) -> None:
        """Stop receiving and drop the link; idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._broker is not None:
            self._broker._subscriptions.discard(self)
        try:
            await self._closing()
        finally:
            await self._disconnect()
