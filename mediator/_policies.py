"""Error policies: what happens when an event handler raises."""

from __future__ import annotations

import math
import random

import attrs

__all__ = [
    "Backoff",
    "DeadLetter",
    "ErrorPolicy",
    "FailFast",
    "FinalPolicy",
    "Ignore",
    "LogAndContinue",
    "Retry",
]


@attrs.frozen
class FailFast:
    """Re-raise the handler's exception to whoever emitted the event.

    The default for local dispatch: a failing in-process handler is a bug the
    caller of `Mediator.send` must see, and it keeps the guarantee that
    nothing is published to the broker when a local handler failed. In a
    consumer it releases the message for redelivery and stops the consumer,
    whose `run()` raises the exception.
    """


@attrs.frozen
class LogAndContinue:
    """Log the exception with the event and handler, then go on with the next handler."""


@attrs.frozen
class Ignore:
    """Swallow the exception silently (it is still logged at DEBUG level)."""


@attrs.frozen
class DeadLetter:
    """Consumers: settle the message to the transport's dead-letter place,
    with the exception text as the description. Local (emitter) dispatch has
    no message to dead-letter, so there it logs like `LogAndContinue`."""


@attrs.frozen(kw_only=True)
class Backoff:
    """Exponential backoff with jitter: ``initial * multiplier**(n-1)``, capped
    at `maximum`, then spread by ±`jitter` (a fraction)."""

    initial: float = attrs.field(default=0.05, validator=attrs.validators.ge(0))
    multiplier: float = attrs.field(default=2.0, validator=attrs.validators.ge(1))
    maximum: float = attrs.field(default=5.0, validator=attrs.validators.ge(0))
    jitter: float = attrs.field(
        default=0.1, validator=[attrs.validators.ge(0), attrs.validators.le(1)]
    )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based).

        Any attempt number is fine: past the cap the delay stays at `maximum`
        (before jitter), so a retry loop can count for as long as it runs.
        """
        base = self._grown(attempt - 1)
        if self.jitter:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, base)

    def _grown(self, steps: int) -> float:
        """``initial * multiplier**steps`` capped at `maximum`, never computing a
        power past the cap (it would overflow a float after ~1,000 steps)."""
        initial, multiplier, maximum = float(self.initial), float(self.multiplier), self.maximum
        if steps <= 0 or initial == 0 or multiplier == 1:
            return min(maximum, initial)
        # Decided on logarithms, so the size of `steps` never reaches a power.
        if initial >= maximum or steps * math.log(multiplier) >= math.log(maximum / initial):
            return maximum
        try:
            return min(maximum, initial * multiplier**steps)
        except OverflowError:  # a tiny initial or an infinite maximum: past any finite delay
            return maximum


FinalPolicy = FailFast | LogAndContinue | Ignore | DeadLetter


@attrs.frozen(kw_only=True)
class Retry:
    """Call the handler again, up to `attempts` calls in all, waiting `backoff`
    between calls; when the last one fails, apply `then`."""

    attempts: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    backoff: Backoff = attrs.field(factory=Backoff)
    then: FinalPolicy = attrs.field(factory=FailFast)


ErrorPolicy = FailFast | LogAndContinue | Ignore | DeadLetter | Retry
"""One of the policy objects above."""
