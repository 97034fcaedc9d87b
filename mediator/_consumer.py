"""The EventConsumer: subscribe to broker channels by pattern, get typed events.

It takes deliveries from its subscriptions within `max_concurrency` slots
and stops by draining them; `mediator._handling` handles each one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from mediator._broker import SubscribingBroker, Subscription
from mediator._codec import MessageCodec
from mediator._container import Container, Resolver, as_container
from mediator._emitter import EventEmitter
from mediator._event_map import EventMap
from mediator._exceptions import SubscriptionLostError
from mediator._handling import ConsumerInbox, DeliveryHandling, Settled
from mediator._interceptors import Interceptor, overrides
from mediator._lifecycle import close_all
from mediator._limits import quote
from mediator._message import DEFAULT_MAX_MESSAGE_SIZE, Message
from mediator._policies import Backoff, DeadLetter, ErrorPolicy, Retry
from mediator._running import RunsUntilStopped
from mediator._settlement import DEFAULT_REDELIVERY_BACKOFF, ConsumerStats, Settlement
from mediator._waiting import describe, watch

__all__ = ["ConsumerStats", "EventConsumer"]

logger = logging.getLogger("mediator.consumer")

_CANCEL_GRACE = 1.0
"""Seconds (at least; `drain_timeout` when longer) a stop waits for the
deliveries it cancelled to settle before it goes on without them."""


class EventConsumer(DeliveryHandling, RunsUntilStopped):
    """Receives events from a broker and runs the handlers bound in an EventMap.

    ```python
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe("app:notification_event:*")
    async with consumer:          # every subscription is live here
        ...                       # handlers run as messages arrive
    ```

    Each delivery is decoded into its registered class, handled by the
    handlers bound to it under their error policies, and settled; the docs'
    "Consumers" page says what each outcome does.
    """

    def __init__(
        self,
        broker: SubscribingBroker,
        event_map: EventMap,
        container: Container | Resolver | None = None,
        *,
        event_emitter: EventEmitter | None = None,
        max_concurrency: int = 16,
        drain_timeout: float = 10.0,
        default_policy: ErrorPolicy | None = None,
        incoming: Sequence[Callable[[Message], None]] = (),
        interceptors: Sequence[Interceptor] = (),
        max_message_size: int | None = None,
        max_deliveries: int = 10,
        redelivery_backoff: Backoff = DEFAULT_REDELIVERY_BACKOFF,
        inbox: ConsumerInbox | None = None,
        strict_json: bool = True,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.broker = broker
        self.event_map = event_map
        self.stats = ConsumerStats()
        self._container = as_container(container, "EventConsumer")
        self._emitter = event_emitter or EventEmitter(
            event_map=event_map, container=self._container, message_broker=broker
        )
        if max_message_size is None:
            # The broker's: what it publishes is what its consumers take.
            max_message_size = getattr(broker, "max_message_size", DEFAULT_MAX_MESSAGE_SIZE)
        self._codec = MessageCodec(
            event_map.event_class,
            max_size=max_message_size,
            strict_json=strict_json,
        )
        self._policy = default_policy or event_map.default_policy or Retry(then=DeadLetter())
        self._incoming = tuple(incoming)
        self._interceptors = overrides(interceptors, "consuming")
        self._inbox = inbox
        self._inbox_bindings = {}
        self._plain = not (self._interceptors or self._incoming or inbox or self._container)
        self._max_concurrency = max_concurrency
        self._settlement = Settlement(
            self.stats,
            max_deliveries=max_deliveries,
            backoff=redelivery_backoff,
            guarantee=broker.delivery_guarantee.value,
        )
        self._drain_timeout = drain_timeout
        self.cancelled_at_stop = 0
        """Deliveries the last stop cancelled because they outlived the drain
        timeout (each released for redelivery): 0 when every one drained."""
        self._wanted: list[tuple[str, str | None]] = []
        self._subscriptions: list[Subscription] = []
        self._readers: set[asyncio.Task[None]] = set()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None
        self._running = False
        self._stop_requested: asyncio.Event | None = None
        self._failure = None
        self._listeners = []

    # -- subscriptions -----------------------------------------------------

    async def subscribe(self, pattern: str, group: str | None = None) -> None:
        """Receive messages whose logical channel matches `pattern` (a Redis
        glob), optionally as a member of consumer `group`.

        Before start it is recorded; while running it is live when this returns.
        Overlapping patterns each get their own copy of a message.
        """
        self._wanted.append((pattern, group))
        if self._running:
            await self._open(pattern, group)

    async def _open(self, pattern: str, group: str | None) -> None:
        subscription = await self.broker.subscribe(pattern, group=group)
        self._subscriptions.append(subscription)
        reader = asyncio.create_task(self._read(subscription), name=f"consumer:{pattern}")
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Open every subscription; returns once all are live at the broker."""
        if self._running:
            return
        self._slots = asyncio.Semaphore(self._max_concurrency)
        self._settlement.stopping.clear()
        self._stop_requested = asyncio.Event()
        self._failure = None
        await self.broker.start()
        self._running = True
        try:
            for pattern, group in self._wanted:
                await self._open(pattern, group)
        except BaseException:
            await self._shutdown()
            raise

    @property
    def running(self) -> bool:
        """Whether the consumer is taking deliveries."""
        return self._running and self._failure is None

    def _stop_taking(self) -> list[asyncio.Task[None]]:
        readers = list(self._readers)
        for reader in readers:
            reader.cancel()
        return readers

    async def _close_subscriptions(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        await close_all(subscriptions)

    async def _shutdown(self) -> None:
        await self._one_cleanup(self._drain if self._running else None)

    async def _drain(self) -> None:
        self._running = False
        self._settlement.stopping.set()
        # Stop taking deliveries, let the ones in flight settle, and only then
        # close the subscriptions: on some transports (Service Bus) settling
        # needs the subscription's receiver.
        readers = self._stop_taking()
        # One deadline for the whole drain, readers and handlers together.
        deadline = asyncio.get_running_loop().time() + self._drain_timeout
        if readers:
            await asyncio.wait(readers, timeout=self._drain_timeout)
        self.cancelled_at_stop = 0
        if self._in_flight:
            left = max(0.0, deadline - asyncio.get_running_loop().time())
            _, late = await asyncio.wait(self._in_flight, timeout=left)
            for task in late:
                task.cancel()
            self.cancelled_at_stop = len(late)
            if late:
                logger.warning("cancelled %d deliveries still running after drain", len(late))
                # Bounded too: a handler that swallows its cancellation, or a
                # release stuck on a dead socket, must not hold the stop for ever.
                _, stuck = await asyncio.wait(late, timeout=max(self._drain_timeout, _CANCEL_GRACE))
                if stuck:
                    logger.error(
                        "%d deliveries did not end after being cancelled (a handler that "
                        "swallows CancelledError, or a settlement that hangs); stopping "
                        "without them: they stay unsettled, and an at-least-once broker "
                        "delivers them again",
                        len(stuck),
                    )
        await self._close_subscriptions()
        # A reader its transport kept alive past cancellation ends with the close.
        await asyncio.gather(*readers, return_exceptions=True)
        # The inbox's expiry beside the deliveries ends with them: nothing of
        # the consumer outlives its stop to use an engine disposed next.
        close_inbox = getattr(self._inbox, "close", None)
        if close_inbox is not None:
            await close_inbox()

    # -- receiving ---------------------------------------------------------

    async def _read(self, subscription: Subscription) -> None:
        slots = self._slots
        assert slots is not None
        deliveries = aiter(subscription)
        while True:
            # A slot first, then a delivery: nothing is taken from the broker
            # that cannot be handled right away.
            await slots.acquire()
            try:
                delivery = await anext(deliveries)
            except StopAsyncIteration:
                slots.release()
                if self._running and self._failure is None:
                    # Ended while the consumer runs: closed by someone else
                    # (its broker stopped). Say so rather than idle.
                    self._fail(
                        SubscriptionLostError(
                            f"subscription {quote(subscription.pattern, 200)} ended while the "
                            "consumer was running (was its broker stopped?); stop the consumer "
                            "before its broker"
                        ),
                        "a subscription ended",
                    )
                return
            except asyncio.CancelledError:
                slots.release()
                raise
            except Exception as exc:
                # A transport error its broker did not absorb: stop loudly
                # rather than keep running with a subscription that is dead.
                slots.release()
                self._fail(exc, f"subscription {quote(subscription.pattern, 200)} failed")
                return
            task = asyncio.create_task(self._process(delivery, subscription.group))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if self._slots is not None:
            self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            logger.error("delivery task failed", exc_info=task.exception())

    def _fail(self, error: BaseException, why: str) -> None:
        logger.error("%s; stopping the consumer", why, exc_info=error)
        self._record_failure(error)
        # Stop taking deliveries now; in-flight ones finish in stop()/run().
        self._stop_taking()

    # -- observing ----------------------------------------------------------

    def add_listener(self, listener: Callable[[Settled], None]) -> Callable[[], None]:
        """Call `listener` with a `Settled` record after each delivery is
        settled (and the stats counted); returns a function that removes it.

        For health checks, metrics and tests (`mediator.testing` waits on
        it). A listener runs on the consumer's path: keep it quick, and do
        not raise.
        """
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    async def wait_until(
        self, predicate: Callable[[ConsumerStats], bool], timeout: float = 5.0
    ) -> ConsumerStats:
        """Wait until `predicate(self.stats)` holds, checked again after every
        settled delivery; returns the stats. Raises `WaitTimeout` (a
        TimeoutError) saying what was awaited and what was settled meanwhile.

        ```python
        await consumer.wait_until(lambda stats: stats.handled >= 3, timeout=10)
        ```
        """
        await watch(self, lambda _: predicate(self.stats), f"stats: {describe(predicate)}", timeout)
        return self.stats
