"""Running an event's handlers under their error policies; the one loop the
emitter (local dispatch) and the consumer (broker deliveries) share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import attrs

from mediator._container import Resolver
from mediator._event_map import EventBinding
from mediator._events import Event
from mediator._policies import DeadLetter, ErrorPolicy, FailFast, FinalPolicy, Ignore, Retry

__all__ = ["NOTHING", "Dispatched", "Recovery", "recover", "run_bindings"]

logger = logging.getLogger("mediator.events")


@attrs.frozen
class Recovery:
    """How a failed call ended: recovered by a retry (`final` is None and
    `follow_ups` holds what the successful call raised) or not (`final` is the
    policy to apply now and `error` the last exception)."""

    follow_ups: list[Event] | None
    final: FinalPolicy | None
    error: Exception
    retries: int


async def recover(
    binding: EventBinding,
    event: Event,
    resolver: Resolver | None,
    policy: ErrorPolicy,
    error: Exception,
) -> Recovery:
    """Retry `binding` on `event` after it raised `error`, per `policy`."""
    attempt = 1
    while isinstance(policy, Retry) and attempt < policy.attempts:
        delay = policy.backoff.delay(attempt)
        logger.warning(
            "%s failed on %s (attempt %d of %d), retrying in %.3fs: %r",
            binding.handler_name,
            type(event).__qualname__,
            attempt,
            policy.attempts,
            delay,
            error,
        )
        attempt += 1
        await asyncio.sleep(delay)
        try:
            follow_ups = await binding.call(event, resolver)
        except Exception as again:
            error = again
        else:
            return Recovery(follow_ups, None, error, attempt - 1)
    final = policy.then if isinstance(policy, Retry) else policy
    return Recovery(None, final, error, attempt - 1)


class Dispatched:
    """What running an event's handlers came to. (A plain slotted class: it
    is built once per dispatched event, on the send path.)"""

    __slots__ = ("dead_letter", "fail", "follow_ups", "retries")

    def __init__(
        self,
        follow_ups: Sequence[Event] = (),
        fail: Exception | None = None,
        dead_letter: str | None = None,
        retries: int = 0,
    ) -> None:
        self.follow_ups = follow_ups
        """Events the handlers raised, in handler order."""
        self.fail = fail
        """A handler's error under `FailFast`: the handlers after it did not run."""
        self.dead_letter = dead_letter
        """The first handler that ended in `DeadLetter`, with its error."""
        self.retries = retries
        """Handler calls repeated under `Retry`."""


NOTHING = Dispatched()
"""What `run_bindings` returns when every handler succeeded at once and
raised no events: one object, so a caller tests the common case with ``is``."""


async def run_bindings(
    bindings: tuple[EventBinding, ...],
    event: Event,
    resolver: Resolver | None,
    default_policy: ErrorPolicy,
    first_error: Exception | None = None,
) -> Dispatched:
    """Call each binding on `event` in order, each failure under the
    binding's policy (else `default_policy`); stop at a fail-fast failure.
    LogAndContinue and DeadLetter failures are logged at ERROR, Ignore at DEBUG.

    `first_error`: the first binding was called already and raised it (a
    caller that tries the common case inline goes on here)."""
    follow_ups: list[Event] | None = None
    dead_letter: str | None = None
    retries = 0
    failed = first_error
    for binding in bindings:
        if failed is None:
            try:
                more = await binding.call(event, resolver)
            except Exception as exc:
                failed = exc
        if failed is not None:
            raised, failed = failed, None
            policy = binding.policy or default_policy
            recovery = await recover(binding, event, resolver, policy, raised)
            retries += recovery.retries
            more = recovery.follow_ups
            final, error = recovery.final, recovery.error
            if isinstance(final, FailFast):
                return Dispatched(follow_ups or (), error, dead_letter, retries)
            if isinstance(final, DeadLetter) and dead_letter is None:
                dead_letter = f"{binding.handler_name}: {error!r}"
            if final is not None:
                (logger.debug if isinstance(final, Ignore) else logger.error)(
                    "%s failed on %s (event_id=%s); %s",
                    binding.handler_name,
                    type(event).__qualname__,
                    event.event_id,
                    type(final).__name__,
                    exc_info=error,
                )
        if more:
            if follow_ups is None:
                follow_ups = []
            follow_ups.extend(more)
    if follow_ups is None and dead_letter is None and not retries:
        return NOTHING  # the common case allocates nothing
    return Dispatched(follow_ups or (), None, dead_letter, retries)
