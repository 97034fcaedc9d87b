"""Circuit breakers: stop calling a dependency that keeps failing, fail fast
while it recovers, then try it again (docs/circuit-breaker.md).

```python
payments = CircuitBreaker("payments", failures=5, window=60.0, reset_after=30.0)
chain.add(CircuitBreakerMiddleware(payments, fallback=pay_later), only=PlaceOrder)

publishing = CircuitBreaker("broker")
service = Service(
    broker,
    middleware_chain=chain,
    interceptors=[CircuitBreakerInterceptor(publishing)],
    circuits=[payments, publishing],
)
```
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

from mediator._exceptions import MediatorError, TransportError
from mediator._interceptors import Interceptor, Publishing
from mediator._limits import quote
from mediator._middlewares import Handle

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerInterceptor",
    "CircuitBreakerMiddleware",
    "CircuitOpenError",
    "CircuitState",
    "Fallback",
]

logger = logging.getLogger("mediator.circuit")

Fallback = Callable[[Any, Exception], Awaitable[Any]]
"""``async def fallback(request, error) -> response``: answers a request its
circuit did not let through (`error` is the `CircuitOpenError`) or that failed
with a counted failure (`error` is that failure)."""

_Ticket = tuple[int, bool]
"""An admitted call: the breaker's generation when it was admitted, and
whether it is a half-open probe."""


class CircuitState(enum.StrEnum):
    """Where a `CircuitBreaker` is; each value is its name in stats."""

    CLOSED = "closed"
    """Calls go through; failures are counted."""
    OPEN = "open"
    """Calls fail fast with `CircuitOpenError` until `reset_after` has passed."""
    HALF_OPEN = "half_open"
    """`half_open_probes` calls go through to test the dependency; the rest fail fast."""


class CircuitOpenError(MediatorError):
    """A circuit breaker refused a call: its dependency failed too often
    lately. Retry after `retry_after` seconds, or answer the call another way
    (`CircuitBreakerMiddleware(fallback=...)`)."""

    def __init__(
        self, message: str, *, circuit: str, state: CircuitState, retry_after: float
    ) -> None:
        super().__init__(message)
        self.circuit = circuit
        """The `CircuitBreaker.name` of the circuit that refused the call."""
        self.state = state
        """`CircuitState.OPEN`, or `CircuitState.HALF_OPEN` while probes are out."""
        self.retry_after = retry_after
        """Seconds until the circuit lets a probe through (0 when half-open)."""


def _every_failure(exc: Exception) -> bool:
    return True


def _transport_failure(exc: Exception) -> bool:
    return isinstance(exc, TransportError)


class CircuitBreaker:
    """Counts the failures of the calls it guards and, after `failures` of
    them within `window` seconds, opens: calls fail fast with
    `CircuitOpenError` for `reset_after` seconds. Then it is half-open: it lets
    `half_open_probes` calls through; once they all succeed it closes, and a
    failed one opens it again.

    ```python
    breaker = CircuitBreaker("payments", failures=5, window=60.0, reset_after=30.0)
    with breaker.guard():
        await payments.charge(order)
    ```

    `counts` says which exceptions are failures of the dependency (a
    `ValueError` from validating the request, say, is not); the others pass
    through uncounted. `clock` returns seconds (`time.monotonic`); tests give
    a fake one. Its state changes synchronously, so it is safe to share
    between the tasks of one event loop.
    """

    __slots__ = (
        "_clock",
        "_counts",
        "_failure_times",
        "_generation",
        "_last_failure",
        "_opened_at",
        "_opened_because",
        "_probe_successes",
        "_probes",
        "_rejected",
        "_state",
        "_times_opened",
        "failures",
        "half_open_probes",
        "name",
        "reset_after",
        "window",
    )

    def __init__(
        self,
        name: str,
        *,
        failures: int = 5,
        window: float = 60.0,
        reset_after: float = 30.0,
        half_open_probes: int = 1,
        clock: Callable[[], float] = time.monotonic,
        counts: Callable[[Exception], bool] = _every_failure,
    ) -> None:
        if failures < 1:
            raise ValueError(f"CircuitBreaker({name!r}, failures={failures}): must be at least 1")
        if window <= 0:
            raise ValueError(f"CircuitBreaker({name!r}, window={window}): must be above 0 seconds")
        if reset_after < 0:
            raise ValueError(
                f"CircuitBreaker({name!r}, reset_after={reset_after}): must be 0 or more seconds"
            )
        if half_open_probes < 1:
            raise ValueError(
                f"CircuitBreaker({name!r}, half_open_probes={half_open_probes}): must be at least 1"
            )
        self.name = name
        """Names the circuit in errors, log lines and stats."""
        self.failures = failures
        """Failures within `window` that open the circuit."""
        self.window = window
        """Seconds a failure counts for."""
        self.reset_after = reset_after
        """Seconds the circuit stays open before it lets probes through."""
        self.half_open_probes = half_open_probes
        """Calls let through when half-open; all must succeed to close it."""
        self._clock = clock
        self._counts = counts
        self._state = CircuitState.CLOSED
        self._failure_times: deque[float] = deque(maxlen=failures)
        self._generation = 0
        self._opened_at: float | None = None
        self._opened_because = ""
        self._probes = 0
        self._probe_successes = 0
        self._rejected = 0
        self._times_opened = 0
        self._last_failure: str | None = None

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self.state.value}>"

    # -- what it shows -------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """Closed, open, or half-open (an open circuit becomes half-open once
        `reset_after` has passed)."""
        return self._refresh(self._clock())

    @property
    def failures_in_window(self) -> int:
        """Failures counted within the last `window` seconds (up to `failures`)."""
        since = self._clock() - self.window
        return sum(1 for at in self._failure_times if at >= since)

    @property
    def opened_at(self) -> float | None:
        """The `clock` reading when the circuit last opened; None when closed."""
        return self._opened_at

    @property
    def rejected(self) -> int:
        """Calls refused with `CircuitOpenError` since the breaker was made."""
        return self._rejected

    @property
    def times_opened(self) -> int:
        """How often the circuit has opened since the breaker was made."""
        return self._times_opened

    @property
    def last_failure(self) -> str | None:
        """The last counted failure, as its `repr` (at most 1 KiB), or None."""
        return self._last_failure

    def stats(self) -> dict[str, Any]:
        """The state and counters, as `Service.stats()["circuits"]` lists them."""
        now = self._clock()
        state = self._refresh(now)
        return {
            "name": self.name,
            "state": state.value,
            "failures_in_window": self.failures_in_window,
            "opened_at": self._opened_at,
            "retry_after": self._retry_after(now) if state is CircuitState.OPEN else None,
            "rejected": self._rejected,
            "times_opened": self._times_opened,
            "last_failure": self._last_failure,
        }

    # -- guarding a call -----------------------------------------------------

    def guard(self) -> AbstractContextManager[None]:
        """A context manager around one call to the dependency: entering it
        raises `CircuitOpenError` when the circuit refuses the call; leaving
        it records the call's outcome (a cancellation records none)."""
        return _Guard(self, _every_failure)

    def _admit(self) -> _Ticket:
        """Let one call through, or raise `CircuitOpenError`; the call's end
        is then recorded with `_succeeded`, `_failed` or `_abandoned`."""
        now = self._clock()
        state = self._refresh(now)
        if state is CircuitState.CLOSED:
            return (self._generation, False)
        if state is CircuitState.HALF_OPEN and (
            self._probes + self._probe_successes < self.half_open_probes
        ):
            self._probes += 1
            return (self._generation, True)
        self._rejected += 1
        raise self._refusal(state, now)

    def _succeeded(self, ticket: _Ticket) -> None:
        """The call `ticket` admitted succeeded."""
        generation, probe = ticket
        if generation != self._generation or not probe:
            return
        self._probes -= 1
        self._probe_successes += 1
        if self._probe_successes >= self.half_open_probes:
            self._close()

    def _failed(self, ticket: _Ticket, exc: Exception) -> bool:
        """The call `ticket` admitted raised `exc`; whether it counted as a
        failure (`counts`)."""
        if not self._counts(exc):
            self._abandoned(ticket)
            return False
        generation, probe = ticket
        if generation != self._generation:
            return True  # admitted before the last change of state: its verdict is stale
        self._last_failure = quote(exc)
        now = self._clock()
        if probe:
            self._probes -= 1
            self._open(now, f"a probe call failed: {self._last_failure}")
            return True
        times = self._failure_times
        times.append(now)
        if len(times) == self.failures and times[0] >= now - self.window:
            self._open(
                now,
                f"{self.failures} failure{'s' if self.failures != 1 else ''} within "
                f"{self.window:g} s, the last {self._last_failure}",
            )
        return True

    def _abandoned(self, ticket: _Ticket) -> None:
        """The call `ticket` admitted ended without a verdict (cancelled, or an
        exception `counts` leaves out): a probe's place goes to the next call."""
        generation, probe = ticket
        if probe and generation == self._generation:
            self._probes -= 1

    # -- transitions (synchronous: no await between a check and its change) ---

    def _refresh(self, now: float) -> CircuitState:
        if self._state is CircuitState.OPEN and self._retry_after(now) <= 0:
            self._state = CircuitState.HALF_OPEN
            self._generation += 1
            self._probes = self._probe_successes = 0
            logger.debug(
                "circuit %r is half-open: letting %d probe call(s) through",
                self.name,
                self.half_open_probes,
            )
        return self._state

    def _open(self, now: float, because: str) -> None:
        self._state = CircuitState.OPEN
        self._generation += 1
        self._opened_at = now
        self._opened_because = because
        self._probes = self._probe_successes = 0
        self._times_opened += 1
        logger.warning(
            "circuit %r opened: %s; calls fail fast for %g s, then %d probe call(s) go through",
            self.name,
            because,
            self.reset_after,
            self.half_open_probes,
        )

    def _close(self) -> None:
        opened_for = self._clock() - self._opened_at if self._opened_at is not None else 0.0
        self._state = CircuitState.CLOSED
        self._generation += 1
        self._opened_at = None
        self._probes = self._probe_successes = 0
        self._failure_times.clear()
        logger.info(
            "circuit %r closed: %d probe call(s) succeeded after %.1f s open",
            self.name,
            self.half_open_probes,
            opened_for,
        )

    def _retry_after(self, now: float) -> float:
        opened_at = self._opened_at if self._opened_at is not None else now
        return opened_at + self.reset_after - now

    def _refusal(self, state: CircuitState, now: float) -> CircuitOpenError:
        if state is CircuitState.OPEN:
            opened_at = self._opened_at if self._opened_at is not None else now
            retry_after = self._retry_after(now)
            message = (
                f"circuit {self.name!r} is open: it opened {now - opened_at:.1f} s ago after "
                f"{self._opened_because}, and lets a probe call through in {retry_after:.1f} s; "
                "until then calls fail fast: retry after that, or answer with a fallback "
                "(CircuitBreakerMiddleware(..., fallback=...))"
            )
        else:
            retry_after = 0.0
            message = (
                f"circuit {self.name!r} is half-open: {self._probes} probe call(s) are testing "
                "the dependency and other calls fail fast until they succeed; retry in a moment"
            )
        return CircuitOpenError(message, circuit=self.name, state=state, retry_after=retry_after)


class _Guard(AbstractContextManager[None]):
    """One guarded call (`CircuitBreaker.guard`)."""

    __slots__ = ("_breaker", "_counts", "_ticket")

    def __init__(self, breaker: CircuitBreaker, counts: Callable[[Exception], bool]) -> None:
        self._breaker = breaker
        self._counts = counts
        self._ticket: _Ticket = (-1, False)

    def __enter__(self) -> None:
        self._ticket = self._breaker._admit()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            self._breaker._succeeded(self._ticket)
        elif isinstance(exc, Exception) and self._counts(exc):
            self._breaker._failed(self._ticket, exc)
        else:
            self._breaker._abandoned(self._ticket)


class CircuitBreakerMiddleware:
    """Sends requests through `breaker`: a middleware for a `MiddlewareChain`,
    limited to a request type with ``only=``.

    ```python
    async def pay_later(request: PlaceOrder, error: Exception) -> OrderPlaced:
        return OrderPlaced(order_id=request.order_id, status="pending")

    chain.add(CircuitBreakerMiddleware(payments, fallback=pay_later), only=PlaceOrder)
    ```

    Without a fallback, a refused request raises `CircuitOpenError` and a
    failed one its own exception. With one, `fallback(request, error)`
    answers both instead (re-raise `error` in it to let failures through);
    a failure `counts` leaves out always propagates.
    """

    __slots__ = ("breaker", "fallback")

    def __init__(self, breaker: CircuitBreaker, *, fallback: Fallback | None = None) -> None:
        self.breaker = breaker
        """The circuit every request through this middleware shares."""
        self.fallback = fallback
        """Answers refused and failed requests; None to let them raise."""

    def __repr__(self) -> str:
        return f"CircuitBreakerMiddleware({self.breaker!r})"

    async def __call__(self, request: Any, handle: Handle) -> Any:
        breaker = self.breaker
        try:
            ticket = breaker._admit()
        except CircuitOpenError as refused:
            if self.fallback is None:
                raise
            return await self.fallback(request, refused)
        try:
            response = await handle(request)
        except Exception as exc:
            if breaker._failed(ticket, exc) and self.fallback is not None:
                return await self.fallback(request, exc)
            raise
        except BaseException:
            breaker._abandoned(ticket)
            raise
        breaker._succeeded(ticket)
        return response


class CircuitBreakerInterceptor(Interceptor):
    """Publishes each batch an `EventEmitter` sends to its broker through
    `breaker`: while the broker is down, sends fail fast with
    `CircuitOpenError` instead of each waiting for its timeout.

    ```python
    broker_circuit = CircuitBreaker("broker", failures=3, reset_after=10.0)
    service = Service(
        broker, interceptors=[CircuitBreakerInterceptor(broker_circuit)], circuits=[broker_circuit]
    )
    ```

    Only transport failures count (`TransportError`: `PublishError`,
    `BrokerUnavailableError`, ...), and of those the ones the breaker's
    `counts` accepts; a message the broker refuses (`MessageTooLargeError`)
    says nothing about the broker's health.
    """

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        """The circuit of the broker the emitter publishes to."""

    def __repr__(self) -> str:
        return f"CircuitBreakerInterceptor({self.breaker!r})"

    def publishing(self, publishing: Publishing) -> AbstractContextManager[None]:
        """Admit the batch, or raise `CircuitOpenError`; record how its publish ended."""
        return _Guard(self.breaker, _transport_failure)
