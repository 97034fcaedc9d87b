"""Middlewares: order, scoping to some requests, the logging middleware."""

from __future__ import annotations

import logging
from typing import Any

import attrs
import pytest

from mediator import (
    Handle,
    LoggingMiddleware,
    Mediator,
    MiddlewareChain,
    Request,
    RequestHandler,
    RequestMap,
)


@attrs.frozen(kw_only=True)
class Greet(Request[str]):
    name: str
    audited: bool = False


@attrs.frozen(kw_only=True)
class Farewell(Request[str]):
    name: str


class GreetHandler(RequestHandler[Greet, str]):
    async def handle(self, request: Greet) -> str:
        return f"hello {request.name}"


class FarewellHandler(RequestHandler[Farewell, str]):
    async def handle(self, request: Farewell) -> str:
        return f"bye {request.name}"


class Tag:
    """Records its passage and decorates the response, diator style."""

    def __init__(self, label: str, trail: list[str]) -> None:
        self.label = label
        self.trail = trail

    async def __call__(self, request: Any, handle: Handle) -> Any:
        self.trail.append(f"{self.label}>")
        response = await handle(request)
        self.trail.append(f"<{self.label}")
        return f"{response}+{self.label}"


def mediator_with(chain: MiddlewareChain) -> Mediator:
    requests = RequestMap()
    requests.bind(Greet, GreetHandler)
    requests.bind(Farewell, FarewellHandler)
    return Mediator(request_map=requests, middleware_chain=chain)


async def test_the_first_middleware_added_is_the_outermost() -> None:
    trail: list[str] = []
    chain = MiddlewareChain()
    chain.add(Tag("outer", trail))
    chain.add(Tag("inner", trail))
    assert await mediator_with(chain).send(Greet(name="ada")) == "hello ada+inner+outer"
    assert trail == ["outer>", "inner>", "<inner", "<outer"]


async def test_middlewares_added_after_the_mediator_was_built_apply() -> None:
    trail: list[str] = []
    chain = MiddlewareChain()
    mediator = mediator_with(chain)
    assert await mediator.send(Greet(name="ada")) == "hello ada"
    chain.add(Tag("late", trail))
    assert await mediator.send(Greet(name="ada")) == "hello ada+late"
    chain.set([])
    assert await mediator.send(Greet(name="ada")) == "hello ada"


async def test_only_limits_a_middleware_to_a_type_or_a_predicate() -> None:
    trail: list[str] = []
    chain = MiddlewareChain()
    chain.add(Tag("greet-only", trail), only=Greet)
    chain.add(Tag("audited", trail), only=lambda request: getattr(request, "audited", False))
    mediator = mediator_with(chain)
    assert await mediator.send(Farewell(name="ada")) == "bye ada"
    assert await mediator.send(Greet(name="ada")) == "hello ada+greet-only"
    assert await mediator.send(Greet(name="ada", audited=True)) == "hello ada+audited+greet-only"


async def test_wrap_composes_around_any_handle() -> None:
    trail: list[str] = []
    chain = MiddlewareChain([Tag("a", trail)])

    async def handle(request: str) -> str:
        return request.upper()

    assert await chain.wrap(handle)("x") == "X+a"


async def test_logging_middleware_logs_outcome_when_enabled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    chain = MiddlewareChain([LoggingMiddleware(level=logging.INFO)])
    with caplog.at_level(logging.INFO, logger="mediator.requests"):
        await mediator_with(chain).send(Greet(name="ada"))
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith("Greet handled in ")


async def test_logging_middleware_logs_failures_and_reraises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(RequestHandler[Greet, str]):
        async def handle(self, request: Greet) -> str:
            raise ValueError("no greeting today")

    requests = RequestMap()
    requests.bind(Greet, Broken)
    mediator = Mediator(
        request_map=requests,
        middleware_chain=MiddlewareChain([LoggingMiddleware(level=logging.INFO)]),
    )
    with (
        caplog.at_level(logging.INFO, logger="mediator.requests"),
        pytest.raises(ValueError, match="no greeting"),
    ):
        await mediator.send(Greet(name="ada"))
    assert "Greet failed after" in caplog.records[0].getMessage()


async def test_logging_middleware_is_silent_when_its_logger_is_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("mediator.tests.off")
    logger.setLevel(logging.WARNING)
    chain = MiddlewareChain([LoggingMiddleware(logger, level=logging.DEBUG)])
    with caplog.at_level(logging.DEBUG):
        assert await mediator_with(chain).send(Greet(name="ada")) == "hello ada"
    assert [r for r in caplog.records if r.name == "mediator.tests.off"] == []
