"""The unit of work: one transaction per send (or delivery), and the session
handlers write through (docs/outbox.md, "The unit of work")."""

from __future__ import annotations

from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from mediator._exceptions import MediatorError
from mediator.outbox._sqlite import IMMEDIATE

if TYPE_CHECKING:
    from mediator.outbox._outbox import Outbox

__all__ = ["OutboxError", "UnitOfWork", "current_session"]


class OutboxError(MediatorError):
    """The outbox was used outside what it can make atomic: no unit of work
    open, another outbox's unit of work, an unsupported database."""


class _Work:
    """The unit of work open in this context: its session, and what it wrote."""

    __slots__ = ("keys", "outbox", "owned", "session", "wrote")

    def __init__(self, outbox: Outbox, session: AsyncSession, owned: bool) -> None:
        self.outbox = outbox
        self.session = session
        self.owned = owned
        """Whether the unit of work commits (False: the caller's own session)."""
        self.wrote = False
        self.keys: set[str] = set()
        """Partition keys already locked in this transaction."""


_work: ContextVar[_Work | None] = ContextVar("mediator_unit_of_work", default=None)


def current_session() -> AsyncSession:
    """The `AsyncSession` of the unit of work in progress: write through it in
    a handler, and the writes commit with the events the handler raises.

    ```python
    class PlaceOrderHandler(RequestHandler[PlaceOrder, int]):
        async def handle(self, request: PlaceOrder) -> int:
            session = current_session()
            order = Order(total=request.total)
            session.add(order)
            await session.flush()
            self.events.append(OrderPlaced(order_id=order.id))
            return order.id
    ```

    Raises OutboxError outside a unit of work.
    """
    work = _work.get()
    if work is None:
        raise OutboxError(
            "current_session() was called outside a unit of work; build the Mediator with "
            "Mediator(unit_of_work=outbox.unit_of_work), give the EventConsumer an "
            "inbox=Inbox(outbox, consumer=...), or open one with "
            "`async with outbox.unit_of_work():`"
        )
    return work.session


class UnitOfWork:
    """One transaction: ``async with outbox.unit_of_work() as session:``.

    Commits when the block succeeded, rolls back when it raised; a unit of
    work opened inside another one joins it, and only the outermost commits.
    """

    __slots__ = ("_outbox", "_token", "_work")

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._work: _Work | None = None
        self._token: Token[_Work | None] | None = None

    async def __aenter__(self) -> AsyncSession:
        current = _work.get()
        if current is not None:
            if current.outbox is not self._outbox:
                raise OutboxError(
                    f"a unit of work of {current.outbox!r} is open in this context; one "
                    f"transaction cannot span two databases. Send through {self._outbox!r} "
                    "outside it, or use one Outbox for both"
                )
            return current.session  # joined: the outer unit of work commits
        outbox = self._outbox
        work = _Work(outbox, outbox.sessions(), owned=True)
        token = _work.set(work)
        if outbox.dialect == "sqlite":
            try:
                # Takes SQLite's write lock now (with sqlite_engine), not at the
                # first write, which fails if another transaction committed since.
                await work.session.connection(execution_options=IMMEDIATE)
            except BaseException:
                _work.reset(token)
                await work.session.close()
                raise
        self._work, self._token = work, token
        return work.session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        work, token = self._work, self._token
        if work is None or token is None:
            return
        self._work = self._token = None
        _work.reset(token)
        session = work.session
        try:
            if exc_type is None:
                try:
                    await session.commit()
                except BaseException:
                    # SQLite keeps a transaction open when COMMIT fails (a deferred
                    # constraint): the connection is discarded, which rolls it back.
                    await session.invalidate()
                    raise
        finally:
            # Closing rolls back whatever was not committed.
            await session.close()
        if work.wrote:
            self._outbox._committed()
