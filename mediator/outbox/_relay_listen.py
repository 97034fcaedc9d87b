"""LISTEN/NOTIFY: a PostgreSQL relay is woken by the notification the
outbox's trigger sends on commit, on a connection of its own."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from mediator._limits import quote
from mediator.outbox._outbox import Outbox

__all__ = ["CommitListener"]

logger = logging.getLogger("mediator.outbox")

_LISTEN_RETRY = 5.0
"""Seconds between attempts to LISTEN again after the connection was lost."""


class CommitListener:
    """Calls `wake` on each notification of the outbox's channel, and when
    the connection is lost (the relay polls until it listens again)."""

    def __init__(
        self, outbox: Outbox, name: str, poll_interval: float, wake: Callable[[], None]
    ) -> None:
        self.outbox = outbox
        self.name = name
        self.poll_interval = poll_interval
        self._wake = wake
        self._listener: tuple[Any, Any] | None = None
        self._next_listen = 0.0
        self._discarding: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        return self._listener is not None

    async def start(self) -> None:
        """LISTEN, unless the last attempt failed less than 5 s ago; a
        failure is logged, and the relay polls meanwhile."""
        if time.monotonic() < self._next_listen:
            return
        connection = None
        try:
            connection = await self.outbox.engine.connect()
            raw = await connection.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            await driver.add_listener(self.outbox.tables.channel, self._notified)
            driver.add_termination_listener(self._connection_lost)
        except Exception as exc:
            self._next_listen = time.monotonic() + _LISTEN_RETRY
            logger.warning(
                "outbox relay %s: cannot LISTEN (%s); polling every %s s meanwhile",
                self.name,
                quote(repr(exc)),
                self.poll_interval,
            )
            if connection is not None:
                await _close_quietly(connection)
            return
        self._listener = (connection, driver)

    def _notified(self, *args: object) -> None:
        self._wake()

    def _connection_lost(self, *args: object) -> None:
        logger.warning(
            "outbox relay %s: the LISTEN connection closed; polling until it is back", self.name
        )
        listener, self._listener = self._listener, None
        self._next_listen = time.monotonic() + _LISTEN_RETRY
        if listener is not None:
            # Given back to the pool as dead, not left to the garbage collector.
            self._discarding = asyncio.get_running_loop().create_task(_invalidate(listener[0]))
        self._wake()

    async def stop(self) -> None:
        """UNLISTEN and close the connection, if there is one."""
        discarding, self._discarding = self._discarding, None
        if discarding is not None:
            await discarding
        listener, self._listener = self._listener, None
        if listener is None:
            return
        connection, driver = listener
        try:
            driver.remove_termination_listener(self._connection_lost)
            await driver.remove_listener(self.outbox.tables.channel, self._notified)
        except Exception:
            logger.debug("UNLISTEN failed; the connection is closed anyway", exc_info=True)
        await _close_quietly(connection)


async def _close_quietly(connection: Any) -> None:
    try:
        await connection.close()
    except Exception:
        logger.debug("closing the LISTEN connection failed", exc_info=True)


async def _invalidate(connection: Any) -> None:
    try:
        await connection.invalidate()
    except Exception:
        logger.debug("discarding the lost LISTEN connection failed", exc_info=True)
