"""The EventConsumer: subscribe to broker channels by pattern, get typed events."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Protocol

import attrs

from mediator._broker import Delivery, SubscribingBroker, Subscription
from mediator._container import Container, Resolver, as_container
from mediator._context import _message
from mediator._emitter import EventEmitter
from mediator._event_map import EventBinding, EventMap, HandlerCall, follow_ups_of
from mediator._events import Event
from mediator._exceptions import MessageDecodeError, SubscriptionLostError
from mediator._interceptors import Consuming, Interceptor, consuming_scope, overrides
from mediator._limits import quote
from mediator._message import DEFAULT_MAX_MESSAGE_SIZE, Message, MessageCodec, Received
from mediator._policies import Backoff, DeadLetter, ErrorPolicy, Retry
from mediator._recovery import NOTHING, Dispatched, run_bindings
from mediator._running import RunsUntilStopped
from mediator._settlement import (
    DEFAULT_REDELIVERY_BACKOFF,
    HANDLED,
    HANDLER_FAILED,
    REJECTED,
    ConsumerStats,
    Report,
    Settlement,
)
from mediator._transport import close_all
from mediator._waiting import describe, watch

__all__ = ["ConsumerInbox", "ConsumerStats", "EventConsumer", "Settled"]

logger = logging.getLogger("mediator.consumer")

_CANCEL_GRACE = 1.0
"""Seconds (at least; `drain_timeout` when longer) a stop waits for the
deliveries it cancelled to settle before it goes on without them."""

_YIELD_EVERY = 64
"""Deliveries one task handles in a row before it lets other tasks run:
handlers that never wait would otherwise hold the loop for a whole
partition's backlog."""


@attrs.frozen
class _Outcome:
    dead_letter: str | None = None
    rejected: str | None = None
    release: str | None = None
    fail: BaseException | None = None
    duplicate: bool = False


_HANDLED = _Outcome()
_DUPLICATE = _Outcome(duplicate=True)


class _Undone(Exception):
    """Leaves an inbox's transaction with a delivery that did not succeed, so
    that its writes (the inbox record with them) are rolled back."""

    def __init__(self, outcome: _Outcome) -> None:
        self.outcome = outcome


class _TransactionLost(BaseException):
    """Raised past the error policies when a handler call left the inbox's
    transaction unusable: retrying inside it cannot succeed, so the delivery
    is released and its redelivery begins a fresh transaction."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class ConsumerInbox(Protocol):
    """What ``EventConsumer(inbox=...)`` needs; `mediator.outbox.Inbox` is one."""

    def handling(self, message: Message) -> AbstractAsyncContextManager[bool]:
        """The transaction of one delivery. Entering records the message id and
        gives False when it was recorded before (a duplicate); leaving commits,
        leaving with an exception rolls back."""
        ...

    def attempt(self) -> AbstractAsyncContextManager[object]:
        """One handler call inside that transaction (a savepoint): leaving with
        an exception undoes the call's writes only."""
        ...

    # Optional: ``lost(error) -> bool``, whether a call's error left the
    # transaction unusable (a lost connection), see `Inbox.lost`; and
    # ``async close()``, called when the consumer stops.


@attrs.frozen(kw_only=True)
class Settled:
    """One delivery, settled: what `EventConsumer.add_listener` callbacks get."""

    outcome: str
    """"handled" (acknowledged), "released" (given back), "dead_lettered", or
    "duplicate" (acknowledged unhandled: the inbox saw its id before)."""
    reason: str | None
    """Why it was released or dead-lettered (a dead-letter reason, or the
    release's cause); None when handled."""
    channel: str
    """The logical channel it came from."""
    message: Message | None
    """The decoded envelope; None when it could not be decoded."""
    event: Event | None
    """The decoded event; None when it could not be decoded."""


class EventConsumer(RunsUntilStopped):
    """Receives events from a broker and runs the handlers bound in an EventMap.

    ```python
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe("app:notification_event:*")
    async with consumer:          # every subscription is live here
        ...                       # handlers run as messages arrive
    ```

    Each delivery is decoded with the envelope codec into its registered
    class and handed to the handlers bound to it, in bind order, each under
    its error policy (`Retry(then=DeadLetter())` unless the binding or the
    map says otherwise). All succeeded: the delivery is acknowledged. One
    ended in `DeadLetter`: the message is dead-lettered with the exception
    text. `FailFast`: the delivery is released for redelivery and the
    consumer stops; `run()` (or leaving ``async with``) raises the error.
    Messages that cannot be decoded are logged, counted and dead-lettered.

    A delivery released `max_deliveries` times (counted by the transport) is
    dead-lettered as "too_many_deliveries" instead of going round again.

    At most `max_concurrency` deliveries are handled at once; the consumer
    takes no more from the broker until a slot frees (backpressure). On stop
    it takes no new deliveries, gives in-flight ones `drain_timeout` seconds
    to finish, then cancels them and releases their deliveries.

    Each decoded delivery is handled and settled inside the `consuming` of
    every `Interceptor` in `interceptors`, which may read its headers and
    set context for the handlers (tracing is one).

    Events that handlers raise are emitted through `event_emitter` (by
    default one over the same map, container and broker), carrying the
    consumed message's correlation id and its id as causation id.

    With an `inbox` (`mediator.outbox.Inbox`), each delivery is handled in
    one database transaction that records its message id: committed when
    every handler succeeded, rolled back otherwise. A message id recorded
    before is acknowledged without being handled and counted in
    `stats.duplicates`.
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
        self._policy: ErrorPolicy = (
            default_policy or event_map.default_policy or Retry(then=DeadLetter())
        )
        self._incoming = tuple(incoming)
        self._interceptors = overrides(interceptors, "consuming")
        self._inbox = inbox
        self._inbox_bindings: dict[type[Event], tuple[EventBinding, ...]] = {}
        self._plain = not (self._interceptors or self._incoming or inbox or self._container)
        """Nothing to run around the handlers: `_process` calls them itself."""
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
        self._failure: BaseException | None = None
        self._listeners: list[Callable[[Settled], None]] = []

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

    async def _process(self, delivery: Delivery, group: str | None = None) -> None:
        """Handle `delivery`, then, while the consumer runs, each delivery its
        transport says must follow it (`next_in_order`, e.g. the next record
        of a Kafka partition) in the same task: no task, slot or wake-up of
        the reader per delivery where order makes them wait for each other
        anyway.

        One loop for every consumer: the delivery limit, decode, the
        interceptors' scope (where there are any), the handlers, the
        follow-ups, settlement. With nothing configured around the handlers
        (no interceptor, hook, inbox or container) they are called right here,
        and the current message is set in this task's own context without a
        reset (see `_read`): the next delivery replaces it."""
        stats = self.stats
        decode = self._codec.decode_received
        handlers_for = self.event_map.handlers_for
        plain = self._plain
        interceptors = self._interceptors
        settlement = self._settlement
        limit = settlement.max_deliveries
        listeners = self._listeners  # changed in place only
        # `ack_nowait` of the deliveries' class, looked up again only when the
        # class changes (never, in practice: one transport's deliveries).
        kind: type[Delivery] | None = None
        ack_nowait: Callable[[Delivery], bool] | None = None
        until_yield = _YIELD_EVERY
        current: Delivery | None = delivery
        while current is not None:
            delivery = current
            stats.received += 1
            stats.in_flight += 1
            received: Received | None = None
            event: Event | None = None
            report: Report | None = None
            try:
                if not until_yield:
                    until_yield = _YIELD_EVERY
                    # Here, with this delivery taken, rather than between two
                    # deliveries: a transport that offers the next one to its
                    # reader when nobody took it by the loop's next turn
                    # (Kafka) would otherwise give it to a new task, ending
                    # this chain every `_YIELD_EVERY` deliveries.
                    try:
                        await asyncio.sleep(0)
                    except asyncio.CancelledError:
                        report = await self._settle_stopped(delivery, None)
                        raise
                if delivery.delivery_count > limit:
                    report = await settlement.delivered_too_often(delivery)
                else:
                    try:
                        received, event = decode(delivery.data)
                    except MessageDecodeError as exc:
                        report = await self._undecodable(delivery, exc)
                    else:
                        consuming: Consuming | None = None
                        # Entered by hand, so that a consumer without
                        # interceptors pays for no context manager.
                        scope: AbstractContextManager[object] | None = None
                        if interceptors:
                            consuming = Consuming(
                                message=received.message(),
                                channel=delivery.channel,
                                group=group,
                                broker=self.broker,
                                delivery_count=delivery.delivery_count,
                            )
                            scope = consuming_scope(interceptors, consuming)
                            scope.__enter__()
                        try:
                            outcome: _Outcome | None = None
                            try:
                                if not plain:
                                    outcome = await self._handle(received.message(), event)
                                else:
                                    _message.set(received)
                                    bindings = handlers_for(type(event))
                                    if len(bindings) == 1:
                                        # One handler, called here; run_bindings
                                        # takes over only if it raised.
                                        binding = bindings[0]
                                        function = binding.function
                                        try:
                                            if function is not None:
                                                more = await function(event)
                                                if more is not None:
                                                    more = follow_ups_of(more, function)
                                            else:
                                                more = await binding.call(event, None)
                                        except Exception as exc:
                                            dispatched = await run_bindings(
                                                bindings, event, None, self._policy, first_error=exc
                                            )
                                        else:
                                            dispatched = Dispatched(more) if more else NOTHING
                                    else:
                                        dispatched = await run_bindings(
                                            bindings, event, None, self._policy
                                        )
                                    if dispatched is not NOTHING:
                                        outcome = await self._outcome_of(dispatched, event, None)
                            except asyncio.CancelledError:
                                report = await self._settle_stopped(delivery, received.message_id)
                                raise
                            if outcome is None or outcome is _HANDLED:
                                # Settlement.ack, written out: it runs for every
                                # record. A transport that acknowledges in memory
                                # does it without a coroutine (`ack_nowait`).
                                if type(delivery) is not kind:
                                    kind = type(delivery)
                                    ack_nowait = getattr(kind, "ack_nowait", None)
                                if ack_nowait is None or not ack_nowait(delivery):
                                    await delivery.ack()
                                stats.handled += 1
                                report = HANDLED
                            else:
                                report = await self._settle(delivery, outcome, received.message_id)
                            if consuming is not None:
                                consuming.outcome, consuming.reason = report
                        except BaseException as exc:
                            if scope is None or not scope.__exit__(
                                type(exc), exc, exc.__traceback__
                            ):
                                raise
                        else:
                            if scope is not None:
                                scope.__exit__(None, None, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                report = await self._unexpected(delivery, received, exc)
            finally:
                stats.in_flight -= 1
                if listeners and report is not None:
                    self._report(report, delivery, received, event)
            until_yield -= 1
            # The delivery to handle next in this task, taken from its
            # transport now; none once the consumer stops (what is not taken
            # stays with the transport, unsettled).
            running = self._running and self._failure is None
            current = delivery.next_in_order() if running else None

    async def _settle_stopped(self, delivery: Delivery, message_id: uuid.UUID | None) -> Report:
        """Release a delivery whose handlers a stop cancelled, in a task of its
        own: this one's cancellation is delivered already, so an error the
        transport reports now is a failure of the release, not a cancellation
        (the kit raises an SDK error in a cancelled task as the cancellation)."""
        release = self._settlement.release(
            delivery, "stopped before its handlers finished", message_id, wait=False
        )
        return await asyncio.shield(asyncio.ensure_future(release))

    async def _undecodable(self, delivery: Delivery, error: MessageDecodeError) -> Report:
        logger.warning(
            "dead-lettering message %s from %s: %s",
            error.message_id,
            quote(delivery.channel, 200),
            quote(str(error)),
        )
        return await self._settlement.dead_letter(delivery, error.reason.value, error.detail)

    async def _unexpected(
        self, delivery: Delivery, received: Received | None, error: Exception
    ) -> Report:
        message_id = None if received is None else received.message_id
        logger.exception(
            "handling message %s from %s failed unexpectedly",
            message_id,
            quote(delivery.channel, 200),
        )
        return await self._settlement.release(delivery, f"unexpected error: {error!r}", message_id)

    def _report(
        self, report: Report, delivery: Delivery, received: Received | None, event: Event | None
    ) -> None:
        settled = Settled(
            outcome=report[0],
            reason=report[1],
            channel=delivery.channel,
            message=None if received is None else received.message(),
            event=event,
        )
        for listener in tuple(self._listeners):
            listener(settled)

    async def _handle(self, message: Message, event: Event) -> _Outcome:
        token = _message.set(message)
        try:
            for hook in self._incoming:
                try:
                    hook(message)
                except Exception as exc:
                    logger.warning(
                        "message %s rejected by %r: %s", message.message_id, hook, quote(repr(exc))
                    )
                    return _Outcome(rejected=repr(exc))
            if self._inbox is not None:
                return await self._dispatch_once(message, event)
            if self._container is None:
                return await self._dispatch(event, None)
            async with self._container.scope() as resolver:
                return await self._dispatch(event, resolver)
        finally:
            _message.reset(token)

    async def _dispatch_once(self, message: Message, event: Event) -> _Outcome:
        """`_dispatch` in the inbox's transaction, kept only if it succeeded."""
        assert self._inbox is not None
        try:
            async with self._inbox.handling(message) as first:
                if not first:
                    return _DUPLICATE
                bindings = self._attempts_of(type(event))
                if self._container is None:
                    outcome = await self._dispatch(event, None, bindings)
                else:
                    async with self._container.scope() as resolver:
                        outcome = await self._dispatch(event, resolver, bindings)
                if outcome is not _HANDLED:
                    raise _Undone(outcome)
        except _Undone as undone:
            return undone.outcome
        except _TransactionLost as lost:
            logger.warning(
                "message %s: its inbox transaction was lost (%r); released for redelivery",
                message.message_id,
                lost.error,
            )
            return _Outcome(release=f"its inbox transaction was lost: {lost.error!r}")
        except Exception as exc:
            # The database refused to begin or to commit: nothing was kept.
            logger.exception("the inbox transaction of message %s failed", message.message_id)
            return _Outcome(release=f"its inbox transaction failed: {exc!r}")
        return _HANDLED

    def _attempts_of(self, event_type: type[Event]) -> tuple[EventBinding, ...]:
        """The bindings of `event_type`, each call in an inbox attempt (a
        savepoint), so that a handler that raised leaves no writes behind:
        its retry starts clean, and under LogAndContinue nothing half-done is kept."""
        bindings = self._inbox_bindings.get(event_type)
        if bindings is None:
            assert self._inbox is not None
            attempt = self._inbox.attempt
            lost: Callable[[BaseException], bool] | None = getattr(self._inbox, "lost", None)

            def in_attempt(call: HandlerCall) -> HandlerCall:
                async def attempted(event: Event, resolver: Resolver | None) -> list[Event] | None:
                    try:
                        async with attempt():
                            return await call(event, resolver)
                    except Exception as exc:
                        # The database's failure, not the handler's: past the policies.
                        if lost is not None and lost(exc):
                            raise _TransactionLost(exc) from exc
                        raise

                return attempted

            bindings = tuple(
                attrs.evolve(binding, call=in_attempt(binding.call), function=None)
                for binding in self.event_map.handlers_for(event_type)
            )
            self._inbox_bindings[event_type] = bindings
        return bindings

    async def _settle(self, delivery: Delivery, outcome: _Outcome, message_id: uuid.UUID) -> Report:
        settlement = self._settlement
        if outcome is _HANDLED:
            return await settlement.ack(delivery)
        if outcome is _DUPLICATE:
            return await settlement.duplicate(delivery)
        if outcome.fail is not None:
            self._fail(outcome.fail, "a fail-fast handler failed")
            return await settlement.release(
                delivery, f"fail-fast handler raised {outcome.fail!r}", message_id, wait=False
            )
        if outcome.release is not None:
            return await settlement.release(delivery, outcome.release, message_id)
        if outcome.rejected is not None:
            return await settlement.dead_letter(delivery, REJECTED, outcome.rejected)
        assert outcome.dead_letter is not None
        return await settlement.dead_letter(delivery, HANDLER_FAILED, outcome.dead_letter)

    async def _dispatch(
        self,
        event: Event,
        resolver: Resolver | None,
        bindings: tuple[EventBinding, ...] | None = None,
    ) -> _Outcome:
        if bindings is None:
            bindings = self.event_map.handlers_for(type(event))
        dispatched = await run_bindings(bindings, event, resolver, self._policy)
        return await self._outcome_of(dispatched, event, resolver)

    async def _outcome_of(
        self, dispatched: Dispatched, event: Event, resolver: Resolver | None
    ) -> _Outcome:
        """What handling came to, once the follow-up events are published."""
        self.stats.retried += dispatched.retries
        if dispatched.fail is not None:
            return _Outcome(fail=dispatched.fail)
        follow_ups, dead_letter = dispatched.follow_ups, dispatched.dead_letter
        if follow_ups:
            try:
                await self._emitter.emit_all(follow_ups, resolver)
            except Exception as exc:
                # Handled, but what it raised did not get out: try it all again.
                logger.exception("emitting the follow-ups of %s failed", event.event_id)
                return _Outcome(release=f"publishing its follow-up events failed: {exc!r}")
        return _HANDLED if dead_letter is None else _Outcome(dead_letter=dead_letter)

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
