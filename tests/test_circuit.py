"""Circuit breakers: the state machine on a fake clock, the middleware through
a real Mediator, the publish interceptor through a real EventEmitter, and
their states in Service.stats()."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import attrs
import pytest

from brokers.memory import InMemoryMessageBroker
from mediator import (
    CircuitBreaker,
    CircuitBreakerInterceptor,
    CircuitBreakerMiddleware,
    CircuitOpenError,
    CircuitState,
    EventEmitter,
    Mediator,
    MediatorError,
    Message,
    MessageTooLargeError,
    MiddlewareChain,
    NotificationEvent,
    PublishError,
    Request,
    RequestHandler,
    RequestMap,
    Service,
)


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Boom(ConnectionError):
    pass


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def breaker(
    clock: FakeClock,
    name: str = "payments",
    *,
    half_open_probes: int = 1,
    counts: Callable[[Exception], bool] = lambda exc: True,
) -> CircuitBreaker:
    """3 failures within 10 s open it for 30 s."""
    return CircuitBreaker(
        name,
        failures=3,
        window=10.0,
        reset_after=30.0,
        half_open_probes=half_open_probes,
        clock=clock,
        counts=counts,
    )


def fail(circuit: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(Boom), circuit.guard():
            raise Boom("payments service timed out")


def succeed(circuit: CircuitBreaker) -> None:
    with circuit.guard():
        pass


# -- the state machine -----------------------------------------------------------


def test_opens_after_n_failures_within_the_window(clock: FakeClock) -> None:
    circuit = breaker(clock)
    fail(circuit, 2)
    assert circuit.state is CircuitState.CLOSED
    assert circuit.failures_in_window == 2
    clock.advance(9.0)
    fail(circuit)
    assert circuit.state is CircuitState.OPEN
    assert circuit.state == "open"
    assert circuit.opened_at == clock.now
    assert circuit.times_opened == 1
    assert circuit.last_failure == "Boom('payments service timed out')"


def test_failures_outside_the_window_do_not_count(clock: FakeClock) -> None:
    circuit = breaker(clock)
    fail(circuit, 2)
    clock.advance(10.5)
    assert circuit.failures_in_window == 0
    fail(circuit, 2)
    assert circuit.state is CircuitState.CLOSED
    assert circuit.failures_in_window == 2
    fail(circuit)
    assert circuit.state is CircuitState.OPEN


def test_successes_do_not_clear_failures_still_in_the_window(clock: FakeClock) -> None:
    circuit = breaker(clock)
    fail(circuit, 2)
    succeed(circuit)
    fail(circuit)
    assert circuit.state is CircuitState.OPEN


def test_an_open_circuit_rejects_with_a_clear_error(clock: FakeClock) -> None:
    circuit = breaker(clock)
    fail(circuit, 3)
    clock.advance(12.0)
    calls = 0
    with pytest.raises(CircuitOpenError) as refused, circuit.guard():
        calls += 1
    assert calls == 0
    error = refused.value
    assert isinstance(error, MediatorError)
    assert error.circuit == "payments"
    assert error.state is CircuitState.OPEN
    assert error.retry_after == pytest.approx(18.0)
    assert str(error) == (
        "circuit 'payments' is open: it opened 12.0 s ago after 3 failures within 10 s, "
        "the last Boom('payments service timed out'), and lets a probe call through in "
        "18.0 s; until then calls fail fast: retry after that, or answer with a fallback "
        "(CircuitBreakerMiddleware(..., fallback=...))"
    )
    assert circuit.rejected == 1


def test_half_opens_after_reset_after_and_a_successful_probe_closes(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    circuit = breaker(clock)
    with caplog.at_level(logging.INFO, logger="mediator.circuit"):
        fail(circuit, 3)
        clock.advance(29.9)
        assert circuit.state is CircuitState.OPEN
        clock.advance(0.1)
        assert circuit.state is CircuitState.HALF_OPEN
        succeed(circuit)
    assert circuit.state is CircuitState.CLOSED
    assert circuit.opened_at is None
    assert circuit.failures_in_window == 0
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "circuit 'payments' opened: 3 failures within 10 s, the last "
            "Boom('payments service timed out'); calls fail fast for 30 s, "
            "then 1 probe call(s) go through",
        ),
        ("INFO", "circuit 'payments' closed: 1 probe call(s) succeeded after 30.0 s open"),
    ]
    fail(circuit, 2)
    assert circuit.state is CircuitState.CLOSED  # the count started again


def test_a_failed_probe_opens_the_circuit_again(clock: FakeClock) -> None:
    circuit = breaker(clock)
    fail(circuit, 3)
    clock.advance(30.0)
    fail(circuit)
    assert circuit.state is CircuitState.OPEN
    assert circuit.opened_at == clock.now
    assert circuit.times_opened == 2
    with pytest.raises(CircuitOpenError, match="after a probe call failed: Boom"):
        succeed(circuit)
    clock.advance(30.0)
    succeed(circuit)
    assert circuit.state is CircuitState.CLOSED


def test_more_probes_must_all_succeed_to_close(clock: FakeClock) -> None:
    circuit = breaker(clock, half_open_probes=2)
    fail(circuit, 3)
    clock.advance(30.0)
    succeed(circuit)
    assert circuit.state is CircuitState.HALF_OPEN
    succeed(circuit)
    assert circuit.state is CircuitState.CLOSED


async def test_half_open_lets_only_the_probe_through_concurrent_calls(clock: FakeClock) -> None:
    circuit = breaker(clock)
    fail(circuit, 3)
    clock.advance(30.0)
    release = asyncio.Event()
    entered: list[int] = []

    async def call(number: int) -> str:
        with circuit.guard():
            entered.append(number)
            await release.wait()
            return "ok"

    tasks = [asyncio.create_task(call(n)) for n in range(5)]
    await asyncio.sleep(0)
    assert entered == [0]
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] == "ok"
    assert all(isinstance(r, CircuitOpenError) for r in results[1:])
    assert all(r.state is CircuitState.HALF_OPEN for r in results[1:])  # type: ignore[union-attr]
    assert "is half-open: 1 probe call(s) are testing" in str(results[1])
    assert circuit.state is CircuitState.CLOSED
    assert circuit.rejected == 4


async def test_a_cancelled_probe_frees_its_place(clock: FakeClock) -> None:
    circuit = breaker(clock)
    fail(circuit, 3)
    clock.advance(30.0)

    async def hang() -> None:
        with circuit.guard():
            await asyncio.Event().wait()

    task = asyncio.create_task(hang())
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpenError):
        succeed(circuit)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert circuit.state is CircuitState.HALF_OPEN
    succeed(circuit)
    assert circuit.state is CircuitState.CLOSED


def test_calls_admitted_before_the_circuit_opened_do_not_move_it(clock: FakeClock) -> None:
    circuit = breaker(clock)
    late = circuit.guard()
    late.__enter__()
    fail(circuit, 3)
    clock.advance(30.0)
    late.__exit__(None, None, None)  # a success from before: not a probe
    assert circuit.state is CircuitState.HALF_OPEN


def test_counts_leaves_some_exceptions_out(clock: FakeClock) -> None:
    circuit = breaker(clock, counts=lambda exc: not isinstance(exc, ValueError))
    for _ in range(5):
        with pytest.raises(ValueError, match="quantity"), circuit.guard():
            raise ValueError("quantity must be positive")
    assert circuit.state is CircuitState.CLOSED
    assert circuit.failures_in_window == 0
    assert circuit.last_failure is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"failures": 0}, r"CircuitBreaker\('payments', failures=0\): must be at least 1"),
        ({"window": 0}, r"window=0\): must be above 0 seconds"),
        ({"reset_after": -1}, r"reset_after=-1\): must be 0 or more seconds"),
        ({"half_open_probes": 0}, r"half_open_probes=0\): must be at least 1"),
    ],
)
def test_bad_settings_are_refused(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CircuitBreaker("payments", **options)  # type: ignore[arg-type]


def test_stats(clock: FakeClock) -> None:
    circuit = breaker(clock)
    assert circuit.stats() == {
        "name": "payments",
        "state": "closed",
        "failures_in_window": 0,
        "opened_at": None,
        "retry_after": None,
        "rejected": 0,
        "times_opened": 0,
        "last_failure": None,
    }
    fail(circuit, 3)
    clock.advance(5.0)
    assert circuit.stats() == {
        "name": "payments",
        "state": "open",
        "failures_in_window": 3,
        "opened_at": 1000.0,
        "retry_after": 25.0,
        "rejected": 0,
        "times_opened": 1,
        "last_failure": "Boom('payments service timed out')",
    }
    assert repr(circuit) == "<CircuitBreaker 'payments' open>"


# -- per request type: the middleware ---------------------------------------------


@attrs.frozen(kw_only=True)
class PlaceOrder(Request[str]):
    order_id: int


@attrs.frozen(kw_only=True)
class CheckStock(Request[str]):
    sku: str


class Payments:
    down = False
    calls = 0


class PlaceOrderHandler(RequestHandler[PlaceOrder, str]):
    async def handle(self, request: PlaceOrder) -> str:
        Payments.calls += 1
        if request.order_id < 0:
            raise ValueError(f"order_id {request.order_id} is negative")
        if Payments.down:
            raise Boom("payments service timed out")
        return f"placed {request.order_id}"


class CheckStockHandler(RequestHandler[CheckStock, str]):
    async def handle(self, request: CheckStock) -> str:
        return f"{request.sku} in stock"


@pytest.fixture
def payments() -> type[Payments]:
    Payments.down = False
    Payments.calls = 0
    return Payments


def mediator_with(middleware: CircuitBreakerMiddleware) -> Mediator:
    requests = RequestMap()
    requests.bind(PlaceOrder, PlaceOrderHandler)
    requests.bind(CheckStock, CheckStockHandler)
    chain = MiddlewareChain()
    chain.add(middleware, only=PlaceOrder)
    return Mediator(request_map=requests, middleware_chain=chain)


async def test_the_middleware_opens_per_request_type(
    clock: FakeClock, payments: type[Payments]
) -> None:
    circuit = breaker(clock, counts=lambda exc: not isinstance(exc, ValueError))
    mediator = mediator_with(CircuitBreakerMiddleware(circuit))
    assert await mediator.send(PlaceOrder(order_id=1)) == "placed 1"
    with pytest.raises(ValueError, match="negative"):
        await mediator.send(PlaceOrder(order_id=-1))
    payments.down = True
    for _ in range(3):
        with pytest.raises(Boom):
            await mediator.send(PlaceOrder(order_id=2))
    assert circuit.state is CircuitState.OPEN
    calls = payments.calls
    with pytest.raises(CircuitOpenError, match="circuit 'payments' is open"):
        await mediator.send(PlaceOrder(order_id=3))
    assert payments.calls == calls  # failed fast: the handler was not called
    assert await mediator.send(CheckStock(sku="A-1")) == "A-1 in stock"  # another type

    payments.down = False
    clock.advance(30.0)
    assert await mediator.send(PlaceOrder(order_id=4)) == "placed 4"
    assert circuit.state is CircuitState.CLOSED


async def test_the_fallback_answers_when_open_and_on_counted_failures(
    clock: FakeClock, payments: type[Payments]
) -> None:
    answered: list[tuple[PlaceOrder, str]] = []

    async def pay_later(request: PlaceOrder, error: Exception) -> str:
        answered.append((request, type(error).__name__))
        return f"order {request.order_id} accepted, payment pending"

    circuit = breaker(clock, counts=lambda exc: not isinstance(exc, ValueError))
    mediator = mediator_with(CircuitBreakerMiddleware(circuit, fallback=pay_later))
    payments.down = True
    for order_id in range(3):
        reply = await mediator.send(PlaceOrder(order_id=order_id))
        assert reply == f"order {order_id} accepted, payment pending"
    assert circuit.state is CircuitState.OPEN
    calls = payments.calls
    assert await mediator.send(PlaceOrder(order_id=7)) == "order 7 accepted, payment pending"
    assert payments.calls == calls
    assert [name for _, name in answered] == ["Boom", "Boom", "Boom", "CircuitOpenError"]
    assert answered[-1][0] == PlaceOrder(order_id=7)
    clock.advance(30.0)
    payments.down = False
    with pytest.raises(ValueError, match="negative"):  # not counted: no fallback either
        await mediator.send(PlaceOrder(order_id=-1))
    assert circuit.state is CircuitState.HALF_OPEN


# -- per broker: the publish interceptor -----------------------------------------


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int


class FlakyBroker(InMemoryMessageBroker):
    """Fails every publish while `down` is set, as a broker that is unreachable."""

    down = False
    attempts = 0
    too_large = False

    async def send_message(self, message: Message) -> None:
        self.attempts += 1
        if self.too_large:
            raise MessageTooLargeError("the message is over the broker's 1 MiB limit")
        if self.down:
            raise PublishError("broker at 127.0.0.1:6379 did not answer within 5 s")
        await super().send_message(message)

    async def send_messages(self, messages: Sequence[Message]) -> None:
        for message in messages:
            await self.send_message(message)


async def test_the_interceptor_fails_publishes_fast_while_the_broker_is_down(
    clock: FakeClock,
) -> None:
    broker = FlakyBroker(channel_prefix="circuit")
    circuit = breaker(clock, "broker")
    emitter = EventEmitter(message_broker=broker, interceptors=[CircuitBreakerInterceptor(circuit)])
    await emitter.emit(OrderPlaced(order_id=1))
    broker.too_large = True
    for _ in range(4):  # a refused message says nothing about the broker
        with pytest.raises(MessageTooLargeError):
            await emitter.emit(OrderPlaced(order_id=2))
    assert circuit.state is CircuitState.CLOSED
    broker.too_large = False
    broker.down = True
    for _ in range(3):
        with pytest.raises(PublishError):
            await emitter.emit(OrderPlaced(order_id=3))
    assert circuit.state is CircuitState.OPEN
    attempts = broker.attempts
    with pytest.raises(CircuitOpenError, match="circuit 'broker' is open"):
        await emitter.emit_all([OrderPlaced(order_id=4), OrderPlaced(order_id=5)])
    assert broker.attempts == attempts

    broker.down = False
    clock.advance(30.0)
    await emitter.emit_all([OrderPlaced(order_id=6), OrderPlaced(order_id=7)])
    assert circuit.state is CircuitState.CLOSED
    assert [m.payload["order_id"] for m in broker.messages] == [1, 6, 7]


# -- state visible: Service.stats() ---------------------------------------------


async def test_service_stats_list_the_circuits_and_an_open_one_keeps_it_ready(
    clock: FakeClock,
) -> None:
    broker = InMemoryMessageBroker(channel_prefix="circuit")
    payments_circuit = breaker(clock)
    broker_circuit = breaker(clock, "broker")
    service = Service(broker, name="shop", circuits=[payments_circuit])
    service.circuits.append(broker_circuit)
    assert "circuits" not in Service(broker).stats()
    fail(payments_circuit, 3)
    async with service:
        stats = service.stats()
        assert service.ready
    assert [(c["name"], c["state"]) for c in stats["circuits"]] == [
        ("payments", "open"),
        ("broker", "closed"),
    ]
    assert stats["circuits"][0] == payments_circuit.stats()
