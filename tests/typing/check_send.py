"""Checked by mypy in tests/test_typing.py: send() returns what the request declares."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import assert_type

import attrs

from mediator import (
    Mediator,
    Request,
    RequestHandler,
    RequestMap,
    StreamingRequestHandler,
    StreamRequest,
)


@attrs.frozen(kw_only=True)
class UserView:
    name: str


@attrs.frozen(kw_only=True)
class GetUser(Request[UserView]):
    user_id: int


@attrs.frozen(kw_only=True)
class DeleteUser(Request[None]):
    user_id: int


@attrs.frozen(kw_only=True)
class ListUsers(StreamRequest[UserView]):
    pass


class GetUserHandler(RequestHandler[GetUser, UserView]):
    async def handle(self, request: GetUser) -> UserView:
        return UserView(name="ada")


class ListUsersHandler(StreamingRequestHandler[ListUsers, UserView]):
    async def handle(self, request: ListUsers) -> AsyncIterator[UserView]:
        yield UserView(name="ada")


class Untyped:
    pass


async def check(mediator: Mediator) -> None:
    assert_type(await mediator.send(GetUser(user_id=1)), UserView)
    assert_type(await mediator.send(DeleteUser(user_id=1)), None)
    assert_type(await mediator.send(Untyped()), object)
    async for user in mediator.stream(ListUsers()):
        assert_type(user, UserView)


requests = RequestMap()
requests.bind(GetUser, GetUserHandler)
requests.bind(ListUsers, ListUsersHandler)
