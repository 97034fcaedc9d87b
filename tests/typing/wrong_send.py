"""Must NOT type-check: using a response as the wrong type is caught by mypy."""

from __future__ import annotations

import attrs

from mediator import Mediator, Request


@attrs.frozen(kw_only=True)
class GetCount(Request[int]):
    pass


async def check(mediator: Mediator) -> None:
    count: str = await mediator.send(GetCount())  # error: int is not str
    print(count)
