"""Retrying a failed handler call as its error policy says; shared by the
emitter (local dispatch) and the consumer (broker deliveries)."""

from __future__ import annotations

import asyncio
import logging

import attrs

from mediator._container import Resolver
from mediator._event_map import EventBinding
from mediator._events import Event
from mediator._policies import ErrorPolicy, FinalPolicy, Retry

__all__ = ["Recovery", "recover"]

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
