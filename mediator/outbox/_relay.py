"""The relay: publishes committed outbox rows to a broker, round after round,
until stopped (docs/outbox.md, "The relay")."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence

from mediator._broker import MessageBroker, describe_broker
from mediator._interceptors import Interceptor
from mediator._limits import quote
from mediator._policies import Backoff
from mediator._running import RunsUntilStopped
from mediator.outbox._outbox import Outbox
from mediator.outbox._relay_listen import CommitListener
from mediator.outbox._relay_publish import BatchPublisher
from mediator.outbox._relay_rows import CLEANUP_BATCH, Leases, RelayStatements
from mediator.outbox._relay_stats import NOTHING, ProgressLog, RelayRound, RelayStats
from mediator.outbox._tables import utcnow

__all__ = ["OutboxRelay"]

logger = logging.getLogger("mediator.outbox")

_CLEANUP_STATEMENTS = 10
"""Statements one cleanup pass runs at most, each deleting `CLEANUP_BATCH` rows."""


def _relay_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _positive(owner: str, **values: float | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ValueError(f"{owner}({name}={value}): must be above 0")


class OutboxRelay(RunsUntilStopped):
    """Publishes the rows committed to an `Outbox` through `broker`, in
    batches, with retries, leases shared with other relays, and cleanup.

    ```python
    relay = OutboxRelay(outbox, RedisStreamMessageBroker.from_url("redis://localhost:6379", "shop"))
    async with relay:             # a task next to the mediator
        ...
    await relay.run()             # or the whole process: until stop() or cancellation
    ```

    `stop()` lets the round in progress finish within `drain_timeout`
    seconds; `run()` raises the error that ended the relay's loop, if one
    did. `interceptors` run around each publish (`Interceptor.relaying`).
    """

    def __init__(
        self,
        outbox: Outbox,
        broker: MessageBroker,
        *,
        name: str | None = None,
        batch_size: int = 100,
        max_attempts: int = 20,
        backoff: Backoff | None = None,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        retention: float | None = 3600.0,
        cleanup_interval: float = 60.0,
        listen: bool = True,
        drain_timeout: float = 10.0,
        progress_interval: float | None = 60.0,
        interceptors: Sequence[Interceptor] = (),
    ) -> None:
        _positive(
            "OutboxRelay",
            batch_size=batch_size,
            max_attempts=max_attempts,
            lease=lease,
            poll_interval=poll_interval,
            cleanup_interval=cleanup_interval,
            drain_timeout=drain_timeout,
            progress_interval=progress_interval,
        )
        if retention is not None and retention < 0:
            raise ValueError(f"OutboxRelay(retention={retention}): must be 0 or more, or None")
        if not callable(getattr(broker, "send_message", None)):
            raise TypeError(
                f"OutboxRelay(broker={broker!r}): the relay publishes through a broker with "
                "send_message (and send_messages); pass one from brokers/"
            )
        if broker is outbox:
            raise ValueError(
                f"OutboxRelay({outbox!r}, broker={broker!r}): the relay publishes the outbox's "
                "rows to a real broker; pass one from brokers/, not the outbox itself"
            )
        if name is not None and not 0 < len(name) <= 255:
            raise ValueError(
                f"OutboxRelay(name={name[:40]!r}...): name the relay with 1 to 255 characters "
                "(it is stored in locked_by)"
            )
        self.outbox = outbox
        self.broker = broker
        if outbox.channel_prefix is None:
            # The outbox's writes are traced with the channels the rows go to.
            outbox.channel_prefix = getattr(broker, "channel_prefix", None)
        if outbox.max_message_size is None:
            # Refused at the send, not dead in the table: the broker's limit.
            outbox.max_message_size = getattr(broker, "max_message_size", None)
        self.name = name or _relay_name()
        """The relay's name in ``locked_by``; no two relays may share it."""
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.backoff = backoff or Backoff(initial=1.0, multiplier=2.0, maximum=300.0)
        """Delay before a failed row is tried again, by attempt; also the
        relay's own pause after a round in which nothing could be published."""
        self.lease = dt.timedelta(seconds=lease)
        self.poll_interval = poll_interval
        self.retention = None if retention is None else dt.timedelta(seconds=retention)
        self.cleanup_interval = cleanup_interval
        self.listen = listen and outbox.dialect == "postgresql"
        """Whether the relay LISTENs for commits (PostgreSQL only)."""
        self.drain_timeout = drain_timeout
        self.progress_interval = progress_interval
        """Seconds between progress lines at INFO; None writes none."""
        self.interceptors: tuple[Interceptor, ...] = tuple(interceptors)
        """Around each publish of a batch (their `Interceptor.relaying`)."""
        self.stats = RelayStats()
        self._statements = RelayStatements(outbox, batch_size)
        self._leases = Leases(outbox, self._statements, self.name, self.lease)
        self._publisher = BatchPublisher(
            outbox,
            broker,
            self._statements,
            self._leases,
            name=self.name,
            max_attempts=max_attempts,
            backoff=self.backoff,
            interceptors=self.interceptors,
            stats=self.stats,
        )
        self._progress = ProgressLog(outbox, self.name, self.stats, progress_interval)
        self._wake = asyncio.Event()
        self._commits = CommitListener(outbox, self.name, poll_interval, self._wake.set)
        self._listeners: list[Callable[[RelayRound], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._stop_requested: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._unhook: Callable[[], None] | None = None
        self._next_cleanup = 0.0

    def __repr__(self) -> str:
        return f"<OutboxRelay {self.name!r} of {self.outbox.tables.outbox.name}>"

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Start relaying in a task of its own; returns once the relay listens
        for commits (PostgreSQL), or polls if it cannot yet."""
        if self.running:
            return
        await self._shutdown()  # what a loop that ended left behind
        self._stop_requested = stopping = asyncio.Event()
        self._failure = None
        if self.listen and not self._commits.listening:
            await self._commits.start()
        self._unhook = self.outbox._wake_me(self._wake.set)
        self._progress.log_start(
            broker=describe_broker(self.broker),
            listening=self.listening,
            listen=self.listen,
            poll_interval=self.poll_interval,
        )
        task = asyncio.create_task(self._loop(stopping), name=f"outbox relay {self.name}")
        task.add_done_callback(functools.partial(self._ended, stopping))
        self._task = task

    def _ended(self, stopping: asyncio.Event, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            if stopping.is_set():
                return  # cancelled by stop() after drain_timeout
            error: BaseException = RuntimeError(
                f"{self!r}: its task was cancelled while it ran (a broker raising "
                "CancelledError?); its rows are taken again when their lease expires"
            )
        else:
            failure = task.exception()
            if failure is None:
                return
            error = failure
        logger.error("outbox relay %s: its loop failed; stopping", self.name, exc_info=error)
        self._record_failure(error)

    async def _shutdown(self) -> None:
        task = self._task
        if self._cleanup is None and task is not None and task is asyncio.current_task():
            # stop() from inside a round (a listener): the loop ends after it.
            self._signal_stop()
            return
        await self._one_cleanup(None if task is None else functools.partial(self._close, task))

    def _signal_stop(self) -> None:
        if self._stop_requested is not None:
            self._stop_requested.set()
        self._wake.set()
        if self._unhook is not None:
            self._unhook()
            self._unhook = None

    async def _close(self, task: asyncio.Task[None]) -> None:
        self._signal_stop()
        try:
            done, _ = await asyncio.wait({task}, timeout=self.drain_timeout)
            if not done:
                logger.warning(
                    "outbox relay %s: the round in progress outlasted drain_timeout=%s s; "
                    "cancelled, its rows are taken again when their lease expires",
                    self.name,
                    self.drain_timeout,
                )
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            if self._task is task:
                self._task = None
            await self._commits.stop()

    @property
    def running(self) -> bool:
        """Whether the relay's task is running."""
        return self._task is not None and not self._task.done()

    @property
    def listening(self) -> bool:
        """Whether the relay is woken by NOTIFY (else it polls)."""
        return self._commits.listening

    # -- the loop ------------------------------------------------------------

    async def _loop(self, stopping: asyncio.Event) -> None:
        failures = 0  # rounds in a row that published nothing, or failed
        self._progress.begin()
        try:
            while not stopping.is_set():
                if self.listen and not self._commits.listening:
                    await self._commits.start()
                if self._progress.due():
                    await self._progress.log_progress()
                # Cleared before the round: a commit during it wakes the next one.
                self._wake.clear()
                try:
                    done = await self.run_once()
                    if not done.claimed:
                        await self._cleanup_if_due()
                except Exception as exc:
                    failures += 1
                    self.stats.errors += 1
                    delay = self.backoff.delay(failures)
                    logger.warning(
                        "outbox relay %s: a round failed (%s); trying again in %.2f s",
                        self.name,
                        quote(repr(exc)),
                        delay,
                        exc_info=not _is_database_error(exc),
                    )
                    await self._pause(delay, stopping)
                    continue
                if done.claimed and (done.published or not done.retried):
                    failures = 0
                    continue  # more may be waiting
                if done.claimed:
                    # Nothing went out: the broker refuses everything for now.
                    failures += 1
                    await self._pause(self.backoff.delay(failures), stopping)
                    continue
                failures = 0
                await self._idle()
        finally:
            self._progress.log_stop()
            await self._commits.stop()

    async def _pause(self, seconds: float, stopping: asyncio.Event) -> None:
        """Wait `seconds`, or less if the relay is stopped (commits do not wake it)."""
        try:
            async with asyncio.timeout(seconds):
                await stopping.wait()
        except TimeoutError:
            pass

    async def _idle(self) -> None:
        """Wait for a commit, a notification, the next retry due, the poll, or
        the next progress line."""
        timeout = self.poll_interval
        next_line = self._progress.next_line
        if next_line is not None:
            # Woken for the progress line too: it is written between rounds.
            timeout = max(0.0, min(timeout, next_line - time.monotonic()))
        next_due = self._publisher.next_due
        if next_due is not None:
            until_due = (next_due - utcnow()).total_seconds()
            if until_due <= timeout:
                self._publisher.next_due = None
                timeout = max(0.0, until_due)
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def run_once(self) -> RelayRound:
        """Claim one batch of due rows, publish it, record the outcome.

        The loop of `start()`/`run()` calls this; call it yourself to drive a
        relay step by step (in a test, or from a scheduler of your own).
        """
        rows = await self._leases.claim()
        if not rows:
            return NOTHING
        self.stats.rounds += 1
        self.stats.claimed += len(rows)
        outcome = await self._publisher.publish(rows)
        for listener in tuple(self._listeners):
            listener(outcome)
        return outcome

    # -- cleanup ----------------------------------------------------------------

    async def _cleanup_if_due(self) -> None:
        if self.retention is None or time.monotonic() < self._next_cleanup:
            return
        self._next_cleanup = time.monotonic() + self.cleanup_interval
        await self.cleanup()

    async def cleanup(self) -> int:
        """Delete sent rows older than the retention (and partition-key rows
        not written to for as long); returns how many sent rows went."""
        if self.retention is None:
            return 0
        cutoff = {"cutoff": utcnow() - self.retention}
        deleted = 0
        for _ in range(_CLEANUP_STATEMENTS):
            async with self.outbox.writer.begin() as connection:
                result = await connection.execute(self._statements.delete_sent, cutoff)
            deleted += int(result.rowcount)
            if result.rowcount < CLEANUP_BATCH:
                break
        if self.outbox.dialect != "sqlite":
            for _ in range(_CLEANUP_STATEMENTS):
                async with self.outbox.writer.begin() as connection:
                    result = await connection.execute(self._statements.delete_keys, cutoff)
                if result.rowcount < CLEANUP_BATCH:
                    break
        self.stats.cleaned += deleted
        return deleted

    # -- observing ---------------------------------------------------------------

    def add_listener(self, listener: Callable[[RelayRound], None]) -> Callable[[], None]:
        """Call `listener` with each `RelayRound` that claimed rows, after the
        outcome is recorded and counted; returns a function that removes it."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove


def _is_database_error(error: BaseException) -> bool:
    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(error, SQLAlchemyError | OSError)
