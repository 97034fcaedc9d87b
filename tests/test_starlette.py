"""mediator.starlette: a Service in a Starlette or FastAPI application
(docs/web.md), over httpx's ASGI transport and under uvicorn as a process."""

from __future__ import annotations

import concurrent.futures
import importlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from brokers.memory import InMemoryMessageBroker
from mediator import (
    NotificationEvent,
    RequestHandler,
    RequestMap,
    Service,
    current_correlation_id,
)
from mediator import Request as Command
from mediator.starlette import (
    STATE_KEY,
    CorrelationIdMiddleware,
    error_responses,
    get_mediator,
    get_service,
    lifespan,
)
from tests.examples_runner import TIMEOUT, example_command

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@asynccontextmanager
async def served(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, and a client over the ASGI transport."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """examples/fastapi_app.py, freshly imported (its own service and orders)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.delenv("MEDIATOR_BROKER_URL", raising=False)
    sys.modules.pop("fastapi_app", None)
    yield importlib.import_module("fastapi_app")
    sys.modules.pop("fastapi_app", None)


# -- a plain Starlette application (no FastAPI) --------------------------------


class Refused(Exception):
    pass


class TooLate(Refused):
    pass


@attrs.frozen(kw_only=True)
class Noted(NotificationEvent, name="web.noted"):
    text: str


@attrs.frozen(kw_only=True)
class Note(Command[str]):
    text: str


class NoteHandler(RequestHandler[Note, str]):
    async def handle(self, request: Note) -> str:
        if request.text == "refused":
            raise Refused("not this one")
        if request.text == "late":
            raise TooLate("too late")
        if request.text == "broken":
            raise RuntimeError("a bug")
        self.events.append(Noted(text=request.text))
        return request.text.upper()


def note_service() -> Service:
    requests = RequestMap()
    requests.bind(Note, NoteHandler)
    return Service(
        InMemoryMessageBroker(channel_prefix="notes"), name="notes", request_map=requests
    )


async def note(request: Request) -> JSONResponse:
    mediator = get_mediator(request)
    answer = await mediator.send(Note(text=request.path_params["text"]))
    return JSONResponse({"answer": answer, "correlation_id": current_correlation_id()})


async def about(request: Request) -> JSONResponse:
    service = get_service(request)
    return JSONResponse(
        {
            "running": service.running,
            "same_mediator": get_mediator(request) is service.mediator,
        }
    )


def note_app(service: Service, **options: Any) -> Starlette:
    app = Starlette(
        routes=[Route("/note/{text}", note, methods=["POST"]), Route("/about", about)],
        lifespan=lifespan(service),
        **options,
    )
    app.add_middleware(CorrelationIdMiddleware)
    return app


def published(service: Service) -> list[Any]:
    broker = service.broker
    assert isinstance(broker, InMemoryMessageBroker)
    return list(broker.messages)


async def test_the_service_runs_while_the_app_does_and_stops_after() -> None:
    service = note_service()
    app = note_app(service)
    assert not service.running
    async with served(app) as client:
        assert service.ready
        response = await client.get("/about")
        assert response.json() == {"running": True, "same_mediator": True}
        assert getattr(app.state, STATE_KEY) is service
    assert not service.running
    assert service.not_ready_because() == "not started"
    assert not hasattr(app.state, STATE_KEY)


async def test_without_the_lifespan_the_dependency_says_what_is_missing() -> None:
    app = note_app(note_service())
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        with pytest.raises(RuntimeError, match=r"lifespan=mediator\.starlette\.lifespan"):
            await client.get("/about")


def test_the_service_is_found_in_the_lifespan_state_as_a_server_passes_it() -> None:
    service = note_service()
    app = Starlette()
    request = Request({"type": "http", "app": app, "state": {STATE_KEY: service}})
    assert get_service(request) is service
    assert get_mediator(request) is service.mediator


async def test_the_correlation_id_of_the_request_is_on_the_published_envelope() -> None:
    service = note_service()
    async with served(note_app(service)) as client:
        response = await client.post("/note/hello", headers={"X-Correlation-ID": "checkout-1"})
    assert response.status_code == 200
    assert response.json() == {"answer": "HELLO", "correlation_id": "checkout-1"}
    assert response.headers["x-correlation-id"] == "checkout-1"
    [envelope] = published(service)
    assert envelope.message_name == "web.noted"
    assert envelope.headers["correlation_id"] == "checkout-1"


@pytest.mark.parametrize("given", [None, "", "x" * 129, "two words", "a\u00e9"])
async def test_a_request_without_a_usable_correlation_id_gets_a_new_one(given: str | None) -> None:
    service = note_service()
    headers = {} if given is None else {"X-Correlation-ID": given}
    async with served(note_app(service)) as client:
        response = await client.post(
            "/note/hello", headers=[(k.encode(), v.encode()) for k, v in headers.items()]
        )
    returned = response.headers["x-correlation-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", returned)
    assert response.json()["correlation_id"] == returned
    assert published(service)[0].headers["correlation_id"] == returned


async def test_the_middleware_takes_another_header_and_replaces_the_apps_own() -> None:
    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse(
            current_correlation_id() or "", headers={"request-id": "the endpoint's"}
        )

    app = Starlette(routes=[Route("/", endpoint)])
    app.add_middleware(CorrelationIdMiddleware, header="Request-ID")
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        response = await client.get("/", headers={"Request-ID": "r-7"})
    assert response.text == "r-7"
    assert response.headers.get_list("request-id") == ["r-7"]


async def test_mapped_errors_answer_their_status_and_the_others_stay_500() -> None:
    service = note_service()
    app = note_app(service, exception_handlers=error_responses({Refused: 409, TooLate: 410}))
    async with served(app) as client:
        refused = await client.post("/note/refused", headers={"X-Correlation-ID": "c-1"})
        late = await client.post("/note/late")
        broken = await client.post("/note/broken")
    assert refused.status_code == 409
    assert refused.json() == {"error": "Refused", "detail": "not this one"}
    assert refused.headers["x-correlation-id"] == "c-1"
    assert late.status_code == 410  # the most specific type given
    assert late.json() == {"error": "TooLate", "detail": "too late"}
    assert broken.status_code == 500
    assert published(service) == []


def test_error_responses_refuses_what_is_not_an_error_status() -> None:
    with pytest.raises(ValueError, match="400 to 599"):
        error_responses({Refused: 200})
    with pytest.raises(TypeError, match="not an exception type"):
        error_responses({"Refused": 409})  # type: ignore[dict-item]


async def test_the_apps_own_lifespan_runs_inside_with_the_service_started() -> None:
    service = note_service()
    seen: list[str] = []

    @asynccontextmanager
    async def own(app: Starlette) -> AsyncIterator[Mapping[str, Any]]:
        seen.append(await get_mediator_of(app).send(Note(text="warm")))
        yield {"cache": "warm"}
        assert service.running
        seen.append("closed")

    def get_mediator_of(app: Starlette) -> Any:
        return getattr(app.state, STATE_KEY).mediator

    app = Starlette(lifespan=lifespan(service, inner=own))
    async with app.router.lifespan_context(app) as state:
        assert state == {"cache": "warm", STATE_KEY: service}
        assert seen == ["WARM"]
    assert seen == ["WARM", "closed"]
    assert not service.running


async def test_a_service_that_cannot_start_fails_the_apps_start_up() -> None:
    service = note_service()

    @service.on_startup
    async def unreachable() -> None:
        raise ConnectionError("no database")

    app = note_app(service)
    with pytest.raises(ConnectionError, match="no database"):
        async with app.router.lifespan_context(app):
            pass
    assert not service.running


async def test_the_active_span_of_the_request_is_the_parent_on_the_envelope() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from mediator.otel import OpenTelemetry

    tracing = TracerProvider()
    service = note_service()
    service.interceptors.append(OpenTelemetry(tracer_provider=tracing))
    app = note_app(service)
    trace_ids: list[str] = []

    def instrumented(inner: ASGIApp) -> ASGIApp:
        # What an ASGI instrumentation does: the request's span is the active one.
        async def serve(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await inner(scope, receive, send)
                return
            with tracing.get_tracer("server").start_as_current_span("POST") as span:
                trace_ids.append(format(span.get_span_context().trace_id, "032x"))
                await inner(scope, receive, send)

        return serve

    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(instrumented(app))
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                assert (await client.post("/note/traced")).status_code == 200
    finally:
        tracing.shutdown()
    [envelope] = published(service)
    assert envelope.headers["traceparent"].split("-")[1] == trace_ids[0]


def test_importing_it_without_starlette_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "mediator.starlette")
    monkeypatch.setitem(sys.modules, "starlette.requests", None)
    with pytest.raises(ImportError, match=r"pip install 'mediator-toolkit\[starlette\]'"):
        importlib.import_module("mediator.starlette")


def test_the_core_imports_neither_starlette_nor_fastapi() -> None:
    code = (
        "import sys, mediator, mediator.otel, mediator.testing, mediator.container; "
        "print(sorted(m for m in sys.modules if m.startswith(('starlette', 'fastapi'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "[]"
    code = "import sys, mediator.starlette; print('fastapi' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "False"


# -- the FastAPI example --------------------------------------------------------


async def test_the_example_places_an_order_and_bills_it(
    example: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    service = example.service
    async with served(example.app) as client:
        assert (await client.get("/readyz")).json() == {"ready": True, "reason": None}
        response = await client.post(
            "/orders",
            json={"order_id": 1, "total_cents": 4200},
            headers={"X-Correlation-ID": "checkout-1"},
        )
        again = await client.post("/orders", json={"order_id": 1, "total_cents": 4200})
        invalid = await client.post("/orders", json={"order_id": "one"})
    assert response.status_code == 201
    assert response.json() == {"order_id": 1, "correlation_id": "checkout-1"}
    assert again.status_code == 409
    assert again.json() == {"error": "OrderExists", "detail": "order 1 is already placed"}
    assert invalid.status_code == 422  # FastAPI's own handlers still answer
    [envelope] = published(service)
    assert envelope.message_name == "orders.placed"
    assert envelope.headers["correlation_id"] == "checkout-1"
    # The stop drained the billing consumer: the order was billed before it returned.
    messages = [record.getMessage() for record in caplog.records]
    billed = messages.index("billed order 1: 4200 cents (correlation checkout-1)")
    assert billed < messages.index("service orders-web stopped")
    assert service.cancelled_at_stop == 0


class Output:
    """The lines a process writes on one stream, read by a thread."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        """The first line (from the ones not seen yet) that `pattern` matches."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r} in {self.lines}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the stream ended without {pattern!r}: {self.lines}")
            self.lines.append(line)
            if match := re.search(pattern, line):
                return match

    def rest(self) -> list[str]:
        self._thread.join(timeout=TIMEOUT)
        while (line := self._queue.get_nowait()) is not None:
            self.lines.append(line)
        return self.lines


def test_under_uvicorn_sigterm_finishes_the_request_in_flight_drains_and_exits_0() -> None:
    command, env = example_command("fastapi_app.py", PORT="0")
    env.pop("MEDIATOR_BROKER_URL", None)
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        output = Output(process.stderr)
        port = output.wait_for(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")[1]
        base = f"http://127.0.0.1:{port}"
        # A request in flight at the signal: the receipt waits for billing,
        # which can only start once the order below is placed.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(httpx.get, f"{base}/orders/7/receipt", timeout=TIMEOUT)
            output.wait_for(r"waiting for the receipt of order 7")
            response = httpx.post(
                f"{base}/orders",
                json={"order_id": 7, "total_cents": 990},
                headers={"X-Correlation-ID": "checkout-7"},
                timeout=TIMEOUT,
            )
            assert response.status_code == 201
            # Billing takes 0.2 s: the signal comes while it and the receipt are in flight.
            process.send_signal(signal.SIGTERM)
            receipt = waiting.result(timeout=TIMEOUT)
        assert (receipt.status_code, receipt.json()) == (200, {"order_id": 7, "billed_cents": 990})
        assert process.wait(timeout=TIMEOUT) == 0, output.rest()
        lines = output.rest()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()
    billed = lines.index("INFO fastapi_app: billed order 7: 990 cents (correlation checkout-7)")
    assert billed < lines.index("INFO mediator.service: service orders-web stopped")
