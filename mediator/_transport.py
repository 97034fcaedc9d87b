"""The pieces every transport shares: lifecycle, reconnection, error mapping,
the delivery and subscription bases, dead-letter records.

A transport module holds only what its SDK needs; the rest is here, once.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar

import attrs

from mediator._exceptions import (
    MediatorError,
    MessageTooLargeError,
    SubscriptionLostError,
    TransportError,
)
from mediator._limits import DEAD_LETTER_BODY_LIMIT, quote
from mediator._message import DEFAULT_MAX_MESSAGE_SIZE, Message, encode_message
from mediator._policies import Backoff

__all__ = [
    "BrokerLifecycle",
    "DeadLetterRecord",
    "DeliveryBase",
    "ErrorRow",
    "ErrorTable",
    "ReconnectingSubscription",
    "Reconnection",
    "being_cancelled",
    "close_all",
    "describe_error",
    "map_errors",
]

logger = logging.getLogger("mediator.transport")

RECONNECT = Backoff(initial=0.1, multiplier=2, maximum=5.0, jitter=0.2)
"""The default backoff between reconnect attempts: 0.1 s doubling to 5 s, ±20 %."""


def being_cancelled() -> bool:
    """Whether the running task has a cancellation pending.

    A client library may turn a cancellation that lands mid-command into a
    connection error; a subscription's reconnect loop checks this first, so
    that stopping a consumer is never mistaken for a lost connection.
    """
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no loop running: nothing to cancel
        return False
    return task is not None and task.cancelling() > 0


@contextlib.contextmanager
def map_errors(
    what: str,
    mapping: Mapping[type[BaseException] | tuple[type[BaseException], ...], type[TransportError]],
) -> Iterator[None]:
    """Turn an SDK's exceptions into the library's `TransportError` tree, as
    httpx maps its transports' errors; the SDK's error stays the `__cause__`.

    ```python
    with map_errors("connecting to Redis at 127.0.0.1:6379", {
        redis_errors.AuthenticationError: CredentialError,
        (redis_errors.ConnectionError, OSError): BrokerUnavailableError,
    }):
        await client.ping()
    ```

    The first matching entry wins, so list subclasses before their bases.
    Errors of the library itself, and errors the mapping does not name, pass
    through unchanged.
    """
    try:
        yield
    except MediatorError:
        raise
    except Exception as exc:
        for source, target in mapping.items():
            if isinstance(exc, source):
                raise target(f"{what} failed: {quote(str(exc) or repr(exc))}") from exc
        raise


Kinds = type[BaseException] | tuple[type[BaseException], ...]


@attrs.frozen
class ErrorRow:
    """SDK errors of one kind as one library error, and what to check (an
    `ErrorTable` row)."""

    kinds: Kinds
    """The SDK's exception classes."""
    error: type[TransportError]
    """The library's error they become."""
    check: str
    """What the user should check or do, one sentence."""


def _rows(rows: Iterable[ErrorRow]) -> tuple[ErrorRow, ...]:
    return tuple(rows)


@attrs.define(frozen=True)
class ErrorTable:
    """One transport's classification of its SDK's errors, kept in one place
    as httpx keeps one map per transport: rows of SDK errors (a refused
    credential, a missing entity, a lost connection), each the library error
    it becomes with what to check, and everything else the SDK raises as the
    error a call site names.

    ```python
    ERRORS = ErrorTable(
        sdk=(redis_errors.RedisError, OSError),
        rows=[
            ErrorRow(redis_errors.AuthenticationError, CredentialError,
                     "check the user and password"),
            ErrorRow((redis_errors.ConnectionError, OSError), BrokerUnavailableError,
                     "check the address, and that Redis runs"),
        ],
    )
    with ERRORS.mapped("PING to Redis at 127.0.0.1:6379"):
        await client.ping()
    ```

    A cancellation that the SDK reports as one of its errors (it landed
    mid-command) is raised as the cancellation it is, here, for every
    transport.
    """

    sdk: tuple[type[BaseException], ...]
    """What the SDK raises, base classes included."""
    rows: tuple[ErrorRow, ...] = attrs.field(default=(), converter=_rows)
    """First match wins: list subclasses before their bases."""
    describe: Callable[[BaseException], str] | None = None
    """How an SDK error reads in a message; `describe_error` by default."""

    def row(self, error: BaseException) -> ErrorRow | None:
        """The row `error` falls in, or None."""
        for row in self.rows:
            if isinstance(error, row.kinds):
                return row
        return None

    def lift(
        self, error: BaseException, what: str, otherwise: type[TransportError]
    ) -> TransportError:
        """`error` (one of `sdk`) as the library's: the error of its row, with
        what to check, or `otherwise`; saying what failed. Raise it ``from
        error``."""
        text = (self.describe or describe_error)(error)
        row = self.row(error)
        if row is not None:
            return row.error(f"{what} failed: {text}; {row.check}")
        return otherwise(f"{what} failed: {text}")

    @contextlib.contextmanager
    def mapped(self, what: str, otherwise: type[TransportError] = TransportError) -> Iterator[None]:
        """Run the block with the SDK's errors lifted (`lift`); the library's
        own errors and anything else pass through."""
        try:
            yield
        except MediatorError:
            raise
        except self.sdk as exc:
            if being_cancelled():
                raise asyncio.CancelledError from exc
            raise self.lift(exc, what, otherwise) from exc


def describe_error(error: BaseException) -> str:
    """``Type: message`` of `error`, bounded for a log line; its repr when
    it has no message (some clients' reprs drop the server's words)."""
    text = str(error)
    return quote(f"{type(error).__name__}: {text}" if text else repr(error))


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


class Reconnection:
    """The retry loop of a subscription after a failed receive: re-raise a
    pending cancellation, stop when closed, else log and wait a capped
    backoff. An outage of any length is survived.

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


@attrs.frozen(kw_only=True)
class DeadLetterRecord:
    """One dead-lettered message, the same shape on every broker
    (`broker.dead_letters()` returns them oldest first).

    `data` is at most the first 64 KiB of the body; `size` and `sha256`
    describe the whole body, so an oversize message is identifiable without
    being stored whole.
    """

    channel: str
    """The logical channel (or the transport's destination) it came from."""
    reason: str
    """Why: a `DecodeFailure` value, "handler_failed", "rejected", "too_many_deliveries"."""
    description: str
    """The detail: the decode error, or the handler's exception."""
    delivery_count: int
    """Deliveries before it was dead-lettered (where the transport counts)."""
    data: bytes
    """The body, or its first 64 KiB when `size` is larger."""
    size: int
    """The size of the whole body in bytes."""
    sha256: str
    """The SHA-256 of the whole body, in hex."""

    @property
    def truncated(self) -> bool:
        """Whether `data` is only a prefix of the body."""
        return len(self.data) < self.size

    @classmethod
    def of(
        cls, channel: str, data: bytes, reason: str, description: str, delivery_count: int = 1
    ) -> DeadLetterRecord:
        """A record of `data`, bounded, with a bounded `description`."""
        return cls(
            channel=channel,
            reason=reason,
            description=quote(description),
            delivery_count=delivery_count,
            data=bytes(data[:DEAD_LETTER_BODY_LIMIT]),
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )

    def fields(self) -> dict[str, str | bytes]:
        """The record as flat string fields (for a Redis stream entry, AMQP
        headers and the like); `from_fields` reads them back."""
        return {
            "channel": self.channel,
            "reason": self.reason,
            "description": self.description,
            "delivery_count": str(self.delivery_count),
            "size": str(self.size),
            "sha256": self.sha256,
            "data": self.data,
        }

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> DeadLetterRecord:
        """Read back what `fields` wrote (keys and values as str or bytes)."""

        def text(name: str, default: str = "") -> str:
            value = fields.get(name, fields.get(name.encode(), default))
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

        raw = fields.get("data", fields.get(b"data", b""))
        data = raw if isinstance(raw, bytes) else str(raw).encode()
        return cls(
            channel=text("channel"),
            reason=text("reason"),
            description=text("description"),
            delivery_count=int(text("delivery_count", "1") or 1),
            data=data,
            size=int(text("size", str(len(data))) or len(data)),
            sha256=text("sha256"),
        )


class DeliveryBase(abc.ABC):
    """A received message that is settled exactly once.

    A transport subclasses it with `_ack`, `_release` and `_dead_letter`; the
    public verbs refuse a second settlement with a RuntimeError naming the
    first, which catches a consumer bug instead of confusing the broker.
    """

    __slots__ = ("channel", "data", "delivery_count", "settled")

    holds_back_releases: ClassVar[bool] = False
    """True where the broker waits before delivering a released message again."""

    def __init__(self, channel: str, data: bytes, delivery_count: int = 1) -> None:
        self.channel = channel
        self.data = data
        self.delivery_count = delivery_count
        self.settled: str | None = None
        """How it was settled: "ack", "release" or "dead_letter"; None until then."""

    def next_in_order(self) -> DeliveryBase | None:
        """The delivery to handle after this one in the same task; None here
        (a transport that hands records on in order overrides it)."""
        return None

    def ack_nowait(self) -> bool:
        """Acknowledge at once, where the transport settles in memory
        (Kafka moves an offset): True when done; False when nothing was
        done and `ack()` is to be awaited, as here. The consumer tries this
        first, saving a coroutine a delivery."""
        return False

    def _settling(self, outcome: str) -> None:
        if self.settled is not None:
            raise RuntimeError(
                f"a delivery from {quote(self.channel, 200)} was already settled "
                f"({self.settled}); settle each delivery once"
            )
        self.settled = outcome

    # Each verb raises a cancellation that its SDK reported as its own error
    # (it landed mid-command) as the cancellation it is: no settle verb of any
    # transport swallows one.

    async def ack(self) -> None:
        """Done: the message will not be delivered again."""
        if self.settled is not None:
            self._settling("ack")  # raises, naming the first settlement
        self.settled = "ack"
        try:
            await self._ack()
        except Exception as exc:
            if being_cancelled():
                raise asyncio.CancelledError from exc
            raise

    async def release(self) -> None:
        """Give the message back for a later delivery (where the transport can)."""
        self._settling("release")
        try:
            await self._release()
        except Exception as exc:
            if being_cancelled():
                raise asyncio.CancelledError from exc
            raise

    async def dead_letter(self, reason: str, description: str) -> None:
        """Move the message to the transport's dead-letter place. When that
        fails the delivery is not settled: it can still be released."""
        self._settling("dead_letter")
        try:
            await self._dead_letter(reason, description)
        except Exception as exc:
            self.settled = None
            if being_cancelled():
                raise asyncio.CancelledError from exc
            raise

    @abc.abstractmethod
    async def _ack(self) -> None: ...

    @abc.abstractmethod
    async def _release(self) -> None: ...

    @abc.abstractmethod
    async def _dead_letter(self, reason: str, description: str) -> None: ...


D = TypeVar("D")


class ReconnectingSubscription(abc.ABC, Generic[D]):
    """A subscription that comes back by itself after its link fails.

    A transport says how to `_connect` (subscribe, open a receiver), how to
    `_receive` one batch, and how to `_disconnect`; the base runs the loop:
    receive, and on an error in `transient` drop the link, log a WARNING
    with the error, wait a capped backoff and connect again, logging once
    the subscription is back and how long it was away. An error that
    `_fatal` maps to an exception ends iteration with it: the consumer
    reading the subscription stops and reports it.

    ```python
    class ToySubscription(ReconnectingSubscription[ToyDelivery]):
        transient = (ConnectionError,)

        async def _connect(self) -> None:
            self._link = await self._client.subscribe(self.pattern)

        async def _receive(self) -> list[ToyDelivery]:
            return [ToyDelivery(m) for m in await self._link.read(timeout=1)]

        async def _disconnect(self) -> None:
            await self._link.close()
    ```
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


class BrokerLifecycle:
    """``start()``/``stop()``/``async with`` for every transport, and the
    subscriptions it must close.

    A transport overrides `_open` (check the connection; map errors),
    `_close` (close what it opened besides subscriptions) and
    `_close_client` (close a client the broker made itself, see
    `owns_client`). `stop()` closes every live subscription concurrently,
    then `_close`, then the owned client: a client you passed in stays yours.
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
        limit its consumers decode with (`EventConsumer` takes it unless told
        otherwise): one number, so nothing is published that its own
        consumers would dead-letter as too large."""

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
