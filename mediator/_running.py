"""The run/stop shape shared by what runs until stopped: the consumer, the
service, the outbox relay."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

__all__ = ["RunsUntilStopped"]


class RunsUntilStopped:
    """`run()` starts, then waits for `stop()`, a cancellation of the task
    running it, or a failure, and cleans up on each way out (as a task group
    cleans up its children); ``async with`` starts and stops. A failure is
    raised once, by `run()` or by leaving the ``async with`` block.

    A subclass defines `start()` (which sets `_stop_requested` to a fresh
    event and clears `_failure`) and `_shutdown()` (idempotent; every caller
    waits for the same cleanup: `_one_cleanup`).
    """

    _stop_requested: asyncio.Event | None = None
    _failure: BaseException | None = None
    _cleanup: asyncio.Future[None] | None = None

    async def _one_cleanup(self, begin: Callable[[], Awaitable[None]] | None) -> None:
        """Wait for the cleanup in progress, beginning it with `begin()` when
        none is (None: nothing to clean up); every caller (`run()`, each
        `stop()`) waits for the same one, shielded from its own cancellation."""
        if self._cleanup is None:
            if begin is None:
                return
            self._cleanup = asyncio.ensure_future(begin())
        cleanup = self._cleanup
        try:
            await asyncio.shield(cleanup)
        finally:
            if self._cleanup is cleanup and cleanup.done():
                self._cleanup = None

    async def start(self) -> None:
        raise NotImplementedError

    async def _shutdown(self) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        """Start, then run until `stop()` is called, the task running this is
        cancelled, or a failure, whose exception this raises; each way out
        cleans up before it returns."""
        await self.start()
        assert self._stop_requested is not None
        try:
            await self._stop_requested.wait()
        finally:
            await self._shutdown()
        self._raise_failure()

    async def stop(self) -> None:
        """Stop and clean up; returns when done (also from another task than `run()`)."""
        if self._stop_requested is not None:
            self._stop_requested.set()
        await self._shutdown()

    def _record_failure(self, error: BaseException) -> None:
        """Keep the first failure and make `run()` stop."""
        if self._failure is None:
            self._failure = error
        if self._stop_requested is not None:
            self._stop_requested.set()

    def _raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
        if exc is None:
            self._raise_failure()
