"""How a consumer handles one delivery: the delivery limit, decode, the
interceptors' scope, the handlers (in an inbox transaction where there is
one), the follow-up events, settlement, and the listeners' `Settled` record.

`DeliveryHandling` is the base of `EventConsumer`, which takes the
deliveries (subscriptions, slots, stopping) and owns the state declared here.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Protocol

import attrs

from mediator._broker import Delivery, SubscribingBroker
from mediator._codec import MessageCodec, Received
from mediator._container import Container, Resolver
from mediator._context import _message
from mediator._emitter import EventEmitter
from mediator._event_map import EventBinding, EventMap, HandlerCall, follow_ups_of
from mediator._events import Event
from mediator._exceptions import MessageDecodeError
from mediator._interceptors import Consuming, Interceptor, consuming_scope
from mediator._limits import quote
from mediator._message import Message
from mediator._policies import ErrorPolicy
from mediator._recovery import NOTHING, Dispatched, run_bindings
from mediator._settlement import (
    HANDLED,
    HANDLER_FAILED,
    REJECTED,
    ConsumerStats,
    Report,
    Settlement,
)

__all__ = ["ConsumerInbox", "DeliveryHandling", "Settled"]

logger = logging.getLogger("mediator.consumer")

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
    duration: float = 0.0
    """Seconds from taking the delivery to the end of its settlement: the
    decode, the handlers (their retries included), the follow-ups and the
    settlement."""


class DeliveryHandling:
    """The per-delivery path of `EventConsumer`: `_process` and what it calls."""

    broker: SubscribingBroker
    event_map: EventMap
    stats: ConsumerStats
    _codec: MessageCodec
    _container: Container | None
    _emitter: EventEmitter
    _policy: ErrorPolicy
    _incoming: tuple[Callable[[Message], None], ...]
    _interceptors: tuple[Interceptor, ...]
    _inbox: ConsumerInbox | None
    _inbox_bindings: dict[type[Event], tuple[EventBinding, ...]]
    _plain: bool
    """Nothing to run around the handlers: `_process` calls them itself."""
    _settlement: Settlement
    _listeners: list[Callable[[Settled], None]]
    _running: bool
    _failure: BaseException | None

    def _fail(self, error: BaseException, why: str) -> None:
        """Stop the consumer with `error`; `EventConsumer` defines it."""
        raise NotImplementedError

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
        # `handlers_for`'s cache, read first (a bind clears it in place).
        known = self.event_map._by_type
        set_message = _message.set
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
            # Timed only for listeners: a consumer without any reads no clock.
            started = time.perf_counter() if listeners else 0.0
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
                                    set_message(received)
                                    bindings = known.get(type(event)) or handlers_for(type(event))
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
                                            if dispatched is not NOTHING:
                                                outcome = await self._outcome_of(
                                                    dispatched, event, None
                                                )
                                        else:
                                            if more:
                                                outcome = await self._outcome_of(
                                                    Dispatched(more), event, None
                                                )
                                    else:
                                        dispatched = await run_bindings(
                                            bindings, event, None, self._policy
                                        )
                                        if dispatched is not NOTHING:
                                            outcome = await self._outcome_of(
                                                dispatched, event, None
                                            )
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
                    self._report(report, delivery, received, event, started)
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
        self,
        report: Report,
        delivery: Delivery,
        received: Received | None,
        event: Event | None,
        started: float,
    ) -> None:
        settled = Settled(
            outcome=report[0],
            reason=report[1],
            channel=delivery.channel,
            message=None if received is None else received.message(),
            event=event,
            duration=time.perf_counter() - started,
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
