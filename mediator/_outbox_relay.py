"""The relay: publishes committed outbox rows to a broker, in batches."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
from sqlalchemy import (
    BindParameter,
    bindparam,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)

from mediator._broker import MessageBroker
from mediator._exceptions import MessageDecodeError
from mediator._interceptors import Interceptor, Publishing, intercept_publish, overrides
from mediator._limits import quote
from mediator._message import Message, MessageCodec
from mediator._outbox import Outbox, as_utc, utcnow
from mediator._outbox_tables import DEAD, PENDING, SENT
from mediator._policies import Backoff
from mediator._running import RunsUntilStopped
from mediator._service import describe_broker

__all__ = ["OutboxRelay", "RelayRound", "RelayStats"]

logger = logging.getLogger("mediator.outbox")

_CLEANUP_BATCH = 1000
"""Rows one cleanup statement deletes; a pass runs at most `_CLEANUP_STATEMENTS`."""
_CLEANUP_STATEMENTS = 10
_LISTEN_RETRY = 5.0
"""Seconds between attempts to LISTEN again after the connection was lost."""


@attrs.define
class RelayStats:
    """Counters for health checks; read them from `OutboxRelay.stats`."""

    rounds: int = 0
    """Rounds that claimed at least one row."""
    claimed: int = 0
    """Rows claimed."""
    published: int = 0
    """Rows the broker took (marked sent)."""
    retried: int = 0
    """Failed publishes scheduled again, after a backoff."""
    dead: int = 0
    """Rows moved to dead after `max_attempts` failures (or an envelope that cannot be read)."""
    released: int = 0
    """Rows given back unpublished (behind a failed row of their key, or in an outage)."""
    cleaned: int = 0
    """Sent rows deleted once older than the retention."""
    lost: int = 0
    """Rows whose lease another relay had taken when their outcome was
    recorded; the outcome was dropped (the row is that relay's)."""
    errors: int = 0
    """Rounds that failed on the database or unexpectedly, retried after a backoff."""


@attrs.frozen(kw_only=True)
class RelayRound:
    """What one round (claim a batch, publish it, record the outcome) did."""

    claimed: int = 0
    published: int = 0
    retried: int = 0
    dead: int = 0
    released: int = 0
    lost: int = 0
    """Rows whose outcome was dropped: another relay holds them now."""


_NOTHING = RelayRound()


@attrs.frozen
class _Row:
    id: int
    partition_key: str | None
    body: str
    attempts: int


def _relay_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _positive(owner: str, **values: float | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ValueError(f"{owner}({name}={value}): must be above 0")


class OutboxRelay(RunsUntilStopped):
    """Publishes the rows committed to an `Outbox` through `broker`.

    ```python
    relay = OutboxRelay(outbox, RedisStreamBroker.from_url("redis://localhost:6379", "shop"))
    async with relay:             # a task next to the mediator
        ...
    await relay.run()             # or the whole process: until stop() or cancellation
    ```

    Each round claims up to `batch_size` due rows in id (commit) order under
    a lease of `lease` seconds, publishes them with the broker's
    `send_messages` (one batch), marks them sent, and goes again at once
    while rows keep coming. A failed batch is published again row by row:
    a row that fails gets ``attempts + 1`` and a `next_attempt_at` after
    `backoff` (capped exponential), and is dead after `max_attempts`, while
    the rows behind it go on; rows of its partition key wait behind it
    until it is sent or dead, so a key's rows keep their order.

    Claiming on PostgreSQL: ``FOR UPDATE SKIP LOCKED`` under a lease
    (``locked_by``, ``locked_until``), so several relays share the rows and
    those of a relay killed mid-batch are taken over when its lease expires;
    woken by ``LISTEN``/``NOTIFY`` on commit. On SQLite: one statement under
    the database's write lock; run one relay per database. Everywhere: woken
    at once by commits in this process, and every `poll_interval` seconds
    otherwise (the fallback when a notification is lost).

    The lease is renewed every third of it while a batch is being published,
    and every outcome is recorded only for the rows this relay still holds
    (``locked_by`` = `name`, unique per relay): a relay that lost a row's
    lease leaves it to the relay that took it, with a WARNING.

    Sent rows are deleted once older than `retention` seconds (None: kept),
    checked every `cleanup_interval` seconds. `stop()` lets the round in
    progress finish (up to `drain_timeout` seconds), then returns; `run()`
    raises the error that ended the relay's loop, if one did.

    Logs (logger ``mediator.outbox``, INFO): a line when it starts (its
    name, the table, the broker, listening or polling), one every
    `progress_interval` seconds (None: none) with the rows published,
    retried and dead since the last line, the rows pending and how long the
    oldest due one has waited (one aggregate query per interval; after an
    idle line, quiet intervals write nothing), and one when it stops, with
    its totals. `interceptors` run around each publish (`Interceptor.relaying`;
    `mediator.otel.OpenTelemetry` traces it, linked to the sends).
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
        self._relaying = overrides(self.interceptors, "relaying")
        self.stats = RelayStats()
        self._codec = MessageCodec(lambda name: None, max_size=2**31)
        self._send_messages: Any = getattr(broker, "send_messages", None)
        self._listeners: list[Callable[[RelayRound], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._stop_requested: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._wake = asyncio.Event()
        self._unhook: Callable[[], None] | None = None
        self._listener: tuple[Any, Any] | None = None
        self._next_listen = 0.0
        self._next_due: dt.datetime | None = None
        self._next_cleanup = 0.0
        self._started_at = 0.0
        self._next_progress = 0.0
        self._last_line = (0.0, 0, 0, 0)
        """When the last progress line was written, and the published,
        retried and dead counters then."""
        self._quiet = False
        """Whether the last progress line said the relay was idle."""
        self._build_statements()

    def __repr__(self) -> str:
        return f"<OutboxRelay {self.name!r} of {self.outbox.tables.outbox.name}>"

    def _build_statements(self) -> None:
        table = self.outbox.tables.outbox
        now: BindParameter[dt.datetime] = bindparam("now")
        earlier = table.alias("earlier")
        # A keyed row waits while an earlier row of its key is held by a relay
        # or waiting for its retry; an earlier row that is due is claimed in
        # the same batch, ahead of it (the batch is in id order).
        blocked = (
            select(literal(1))
            .where(
                earlier.c.partition_key == table.c.partition_key,
                earlier.c.id < table.c.id,
                earlier.c.status == PENDING,
                or_(earlier.c.next_attempt_at > now, earlier.c.locked_until >= now),
            )
            .exists()
        )
        due = (
            select(table.c.id)
            .where(
                table.c.status == PENDING,
                table.c.next_attempt_at <= now,
                or_(table.c.locked_until.is_(None), table.c.locked_until < now),
                or_(table.c.partition_key.is_(None), ~blocked),
            )
            .order_by(table.c.id)
            .limit(self.batch_size)
        )
        lease: dict[str, Any] = {"locked_by": bindparam("me"), "locked_until": bindparam("until")}
        returned = (table.c.id, table.c.partition_key, table.c.body, table.c.attempts)
        self._claim_lock: Any = None
        if self.outbox.dialect == "postgresql":
            claimable = due.with_for_update(skip_locked=True, of=table).cte("claimable")
            self._claim: Any = (
                update(table)
                .where(table.c.id == claimable.c.id)
                .values(**lease)
                .returning(*returned)
            )
            # Claims take turns (each is one short statement), so that no relay
            # claims a keyed row while another is claiming an earlier row of the
            # same key; SKIP LOCKED passes over rows other relays are marking.
            self._claim_lock = select(func.pg_advisory_xact_lock(self.outbox.tables.claim_lock))
        else:
            # SQLite runs one writing statement at a time: the claim is atomic.
            self._claim = (
                update(table).where(table.c.id.in_(due)).values(**lease).returning(*returned)
            )
        # Every change of a claimed row is made only while this relay holds
        # it: after its lease expired another relay may have claimed it.
        held_ids = table.c.id.in_(bindparam("ids", expanding=True))
        mine = (table.c.locked_by == bindparam("me"), table.c.status == PENDING)
        self._renew = (
            update(table)
            .where(held_ids, *mine)
            .values(locked_until=bindparam("until"))
            .returning(table.c.id)
        )
        self._mark_sent = (
            update(table)
            .where(held_ids, *mine)
            .values(status=SENT, sent_at=bindparam("at"), locked_by=None, locked_until=None)
            .returning(table.c.id)
        )
        self._mark_failed = (
            update(table)
            .where(table.c.id == bindparam("row"), *mine)
            .values(
                status=bindparam("new_status"),
                attempts=bindparam("new_attempts"),
                next_attempt_at=bindparam("due"),
                last_error=bindparam("error"),
                locked_by=None,
                locked_until=None,
            )
        )
        self._release = (
            update(table).where(held_ids, *mine).values(locked_by=None, locked_until=None)
        )
        old_sent = (
            select(table.c.id)
            .where(table.c.status == SENT, table.c.sent_at < bindparam("cutoff"))
            .order_by(table.c.id)
            .limit(_CLEANUP_BATCH)
        )
        self._delete_sent = delete(table).where(table.c.id.in_(old_sent))
        keys = self.outbox.tables.keys
        old_keys = (
            select(keys.c.partition_key)
            .where(keys.c.touched_at < bindparam("cutoff"))
            .limit(_CLEANUP_BATCH)
        )
        self._delete_keys = delete(keys).where(keys.c.partition_key.in_(old_keys))
        # One aggregate for the progress line: the pending rows, and when the
        # oldest of those due was written.
        self._backlog = select(
            func.count(),
            func.min(case((table.c.next_attempt_at <= now, table.c.created_at))),
        ).where(table.c.status == PENDING)

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Start relaying in a task of its own; returns once the relay listens
        for commits (PostgreSQL), or polls if it cannot yet."""
        if self.running:
            return
        await self._shutdown()  # what a loop that ended left behind
        self._stop_requested = stopping = asyncio.Event()
        self._failure = None
        if self.listen and self._listener is None:
            await self._start_listening()
        self._unhook = self.outbox._wake_me(self._wake.set)
        self._log_start()
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
            await self._stop_listening()

    @property
    def running(self) -> bool:
        """Whether the relay's task is running."""
        return self._task is not None and not self._task.done()

    @property
    def listening(self) -> bool:
        """Whether the relay is woken by NOTIFY (else it polls)."""
        return self._listener is not None

    # -- the loop ------------------------------------------------------------

    async def _loop(self, stopping: asyncio.Event) -> None:
        failures = 0  # rounds in a row that published nothing, or failed
        self._started_at = time.monotonic()
        self._progress_from(self._started_at)
        self._quiet = False
        try:
            while not stopping.is_set():
                if self.listen and self._listener is None:
                    await self._start_listening()
                if self.progress_interval is not None and time.monotonic() >= self._next_progress:
                    await self._log_progress()
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
            self._log_stop()
            await self._stop_listening()

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
        if self.progress_interval is not None:
            # Woken for the progress line too: it is written between rounds.
            timeout = max(0.0, min(timeout, self._next_progress - time.monotonic()))
        if self._next_due is not None:
            until_due = (self._next_due - utcnow()).total_seconds()
            if until_due <= timeout:
                self._next_due = None
                timeout = max(0.0, until_due)
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass

    # -- one round -------------------------------------------------------------

    async def run_once(self) -> RelayRound:
        """Claim one batch of due rows, publish it, record the outcome.

        The loop of `start()`/`run()` calls this; call it yourself to drive a
        relay step by step (in a test, or from a scheduler of your own).
        """
        rows = await self._claim_rows()
        if not rows:
            return _NOTHING
        self.stats.rounds += 1
        self.stats.claimed += len(rows)
        return await self._relay(rows)

    async def _claim_rows(self) -> list[_Row]:
        now = utcnow()
        parameters = {"now": now, "until": now + self.lease, "me": self.name}
        async with self.outbox.writer.begin() as connection:
            if self._claim_lock is not None:
                await connection.execute(self._claim_lock)
            result = await connection.execute(self._claim, parameters)
            rows = [_Row(*row) for row in result]
        rows.sort(key=lambda row: row.id)  # RETURNING promises no order
        return rows

    async def _relay(self, rows: list[_Row]) -> RelayRound:
        ready: list[tuple[_Row, Message]] = []
        failed: list[tuple[_Row, str, bool]] = []  # (row, error, retry at all)
        for row in rows:
            try:
                message = self._codec.decode_message(row.body)
            except MessageDecodeError as exc:
                # Written by something else than the Outbox: no attempt can mend it.
                failed.append((row, f"the row's envelope cannot be read: {exc}", False))
                continue
            if row.partition_key is not None:
                message = attrs.evolve(message, partition_key=row.partition_key)
            ready.append((row, message))
        sent: list[_Row] = []
        released: list[_Row] = []
        lost: set[int] = set()
        if ready:
            async with self._renewing([row.id for row, _ in ready], lost):
                try:
                    await self._publish([message for _, message in ready])
                except Exception as exc:
                    if len(ready) == 1:
                        failed.append((ready[0][0], _describe(exc), True))
                    else:
                        await self._one_by_one(ready, sent, failed, released)
                else:
                    sent = [row for row, _ in ready]
        outcome = await self._record(sent, failed, released, lost)
        for listener in tuple(self._listeners):
            listener(outcome)
        return outcome

    @asynccontextmanager
    async def _renewing(self, ids: list[int], lost: set[int]) -> AsyncIterator[None]:
        """Renew the lease of rows `ids` while the block publishes them; rows
        found taken by another relay are added to `lost`."""
        done = asyncio.Event()
        renewing = asyncio.create_task(self._renew_leases(ids, lost, done))
        try:
            yield
        except BaseException:
            renewing.cancel()
            raise
        finally:
            # A renewal under way finishes: cancelled, it would cost the connection.
            done.set()
            await asyncio.gather(renewing, return_exceptions=True)

    async def _renew_leases(self, ids: list[int], lost: set[int], done: asyncio.Event) -> None:
        # A third of the lease: one renewal can fail and the next still comes in time.
        every = self.lease.total_seconds() / 3
        while True:
            try:
                async with asyncio.timeout(every):
                    await done.wait()
                return
            except TimeoutError:
                pass
            held = [row for row in ids if row not in lost]
            if not held:
                return
            now = utcnow()
            try:
                async with self.outbox.writer.begin() as connection:
                    result = await connection.execute(
                        self._renew, {"ids": held, "me": self.name, "until": now + self.lease}
                    )
                    kept = set(result.scalars())
            except Exception as exc:
                logger.warning(
                    "outbox relay %s: renewing the lease of %d row(s) failed (%s); "
                    "trying again in %.2f s",
                    self.name,
                    len(held),
                    quote(repr(exc)),
                    every,
                )
                continue
            for row in held:
                if row not in kept:
                    self._lost(row, lost, "while publishing it")

    def _lost(self, row: int, lost: set[int], when: str) -> None:
        lost.add(row)
        logger.warning(
            "outbox relay %s: row %d is no longer leased to it (%s): its lease expired and "
            "another relay took it; the outcome here is dropped, the row is that relay's",
            self.name,
            row,
            when,
        )

    async def _publish(self, messages: Sequence[Message]) -> None:
        if self._relaying:
            publishing = Publishing(messages=messages, broker=self.broker)
            await intercept_publish(self._relaying, publishing, self._send, "relaying")
        else:
            await self._send(messages)

    async def _send(self, messages: Sequence[Message]) -> None:
        if self._send_messages is not None:
            await self._send_messages(messages)
        else:
            for message in messages:
                await self.broker.send_message(message)

    async def _one_by_one(
        self,
        ready: list[tuple[_Row, Message]],
        sent: list[_Row],
        failed: list[tuple[_Row, str, bool]],
        released: list[_Row],
    ) -> None:
        """Find the rows a failed batch failed on: each alone, in order. A row
        behind a failed row of its key is given back; two failures in a row
        read as an outage, and the rest is given back for a later round."""
        held: set[str] = set()
        in_a_row = 0
        for index, (row, message) in enumerate(ready):
            if row.partition_key is not None and row.partition_key in held:
                released.append(row)
                continue
            try:
                await self._publish((message,))
            except Exception as exc:
                failed.append((row, _describe(exc), True))
                if row.partition_key is not None:
                    held.add(row.partition_key)
                in_a_row += 1
                if in_a_row >= 2:
                    released.extend(later for later, _ in ready[index + 1 :])
                    return
            else:
                sent.append(row)
                in_a_row = 0

    async def _record(
        self,
        sent: list[_Row],
        failed: list[tuple[_Row, str, bool]],
        released: list[_Row],
        lost: set[int],
    ) -> RelayRound:
        now = utcnow()
        me = self.name
        updates: list[dict[str, Any]] = []
        for row, error, retry in failed:
            attempts = row.attempts + 1
            retrying = retry and attempts < self.max_attempts
            due = now + dt.timedelta(seconds=self.backoff.delay(attempts)) if retrying else now
            updates.append(
                {
                    "row": row.id,
                    "new_status": PENDING if retrying else DEAD,
                    "new_attempts": attempts,
                    "due": due,
                    "error": error,
                    "me": me,
                }
            )
        recorded: set[int] = set()
        async with self.outbox.writer.begin() as connection:
            if sent:
                ids = [r.id for r in sent]
                result = await connection.execute(
                    self._mark_sent, {"ids": ids, "at": now, "me": me}
                )
                recorded.update(result.scalars())
            for values in updates:
                result = await connection.execute(self._mark_failed, values)
                if result.rowcount:
                    recorded.add(values["row"])
            if released:
                ids = [r.id for r in released]
                await connection.execute(self._release, {"ids": ids, "me": me})
        for row in [*sent, *(row for row, _, _ in failed)]:
            if row.id not in recorded and row.id not in lost:
                self._lost(row.id, lost, "when recording its outcome")
        retried = dead = 0
        for (row, error, _), values in zip(failed, updates, strict=True):
            if row.id not in recorded:
                continue
            attempts, due = values["new_attempts"], values["due"]
            if values["new_status"] == PENDING:
                retried += 1
                if self._next_due is None or due < self._next_due:
                    self._next_due = due
                logger.warning(
                    "outbox relay %s: publishing row %d failed (attempt %d of %d), next "
                    "attempt at %s: %s",
                    self.name,
                    row.id,
                    attempts,
                    self.max_attempts,
                    due.isoformat(),
                    error,
                )
            else:
                dead += 1
                logger.error(
                    "outbox relay %s: row %d is dead after %d attempt(s): %s",
                    self.name,
                    row.id,
                    attempts,
                    error,
                )
        published = sum(1 for row in sent if row.id in recorded)
        stats = self.stats
        stats.published += published
        stats.retried += retried
        stats.dead += dead
        stats.released += len(released)
        stats.lost += len(lost)
        return RelayRound(
            claimed=len(sent) + len(failed) + len(released),
            published=published,
            retried=retried,
            dead=dead,
            released=len(released),
            lost=len(lost),
        )

    # -- cleanup ----------------------------------------------------------------

    async def _cleanup_if_due(self) -> None:
        if self.retention is None or time.monotonic() < self._next_cleanup:
            return
        self._next_cleanup = time.monotonic() + self.cleanup_interval
        await self.cleanup()

    async def cleanup(self) -> int:
        """Delete sent rows older than the retention (and partition-key rows
        not written to for as long); returns how many sent rows went. The
        loop does this every `cleanup_interval` seconds when it is idle."""
        if self.retention is None:
            return 0
        cutoff = {"cutoff": utcnow() - self.retention}
        deleted = 0
        for _ in range(_CLEANUP_STATEMENTS):
            async with self.outbox.writer.begin() as connection:
                result = await connection.execute(self._delete_sent, cutoff)
            deleted += int(result.rowcount)
            if result.rowcount < _CLEANUP_BATCH:
                break
        if self.outbox.dialect != "sqlite":
            for _ in range(_CLEANUP_STATEMENTS):
                async with self.outbox.writer.begin() as connection:
                    result = await connection.execute(self._delete_keys, cutoff)
                if result.rowcount < _CLEANUP_BATCH:
                    break
        self.stats.cleaned += deleted
        return deleted

    # -- LISTEN / NOTIFY -----------------------------------------------------------

    async def _start_listening(self) -> None:
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
        self._wake.set()

    def _connection_lost(self, *args: object) -> None:
        logger.warning(
            "outbox relay %s: the LISTEN connection closed; polling until it is back", self.name
        )
        self._listener = None
        self._next_listen = time.monotonic() + _LISTEN_RETRY
        self._wake.set()

    async def _stop_listening(self) -> None:
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

    # -- logs --------------------------------------------------------------------

    def _log_start(self) -> None:
        if self.listening:
            woken = f"woken by LISTEN/NOTIFY, polling every {self.poll_interval:g} s as a fallback"
        elif self.listen:
            woken = f"polling every {self.poll_interval:g} s until it can LISTEN"
        else:
            woken = f"polling every {self.poll_interval:g} s"
        progress = (
            "no progress lines"
            if self.progress_interval is None
            else f"progress every {self.progress_interval:g} s"
        )
        logger.info(
            "outbox relay %s started: table %s (%s) to %s, %s; %s",
            self.name,
            self.outbox.tables.outbox.name,
            self.outbox.dialect,
            describe_broker(self.broker),
            woken,
            progress,
        )

    def _progress_from(self, now: float) -> None:
        stats = self.stats
        self._last_line = (now, stats.published, stats.retried, stats.dead)
        if self.progress_interval is not None:
            self._next_progress = now + self.progress_interval

    async def _backlog_now(self) -> tuple[int, float | None]:
        """The pending rows, and the seconds the oldest due one has waited."""
        now = utcnow()
        async with self.outbox.engine.connect() as connection:
            pending, oldest = (await connection.execute(self._backlog, {"now": now})).one()
        waited = None if oldest is None else max(0.0, (now - as_utc(oldest)).total_seconds())
        return int(pending), waited

    async def _log_progress(self) -> None:
        """The progress line: one every `progress_interval` seconds while there
        is something to say; after an idle line, nothing until there is."""
        stats = self.stats
        since, published, retried, dead = self._last_line
        published, retried, dead = (
            stats.published - published,
            stats.retried - retried,
            stats.dead - dead,
        )
        now = time.monotonic()
        try:
            pending, waited = await self._backlog_now()
        except Exception as exc:
            backlog = f"the pending rows cannot be counted ({quote(repr(exc))})"
            idle = False
        else:
            if pending == 0:
                backlog = "nothing pending"
            elif waited is None:
                backlog = f"{pending} pending, none due yet"
            else:
                backlog = f"{pending} pending, the oldest due one waiting {_seconds(waited)}"
            idle = pending == 0 and not (published or retried or dead)
        if idle and self._quiet:
            self._next_progress = now + (self.progress_interval or 0.0)
            return  # said already: the next line comes when there is something to say
        self._quiet = idle
        self._progress_from(now)
        logger.info(
            "outbox relay %s: %d published, %d retried, %d dead in the last %s; %s%s",
            self.name,
            published,
            retried,
            dead,
            _seconds(now - since),
            backlog,
            " (idle: no more lines until there is something to say)" if idle else "",
        )

    def _log_stop(self) -> None:
        stats = self.stats
        logger.info(
            "outbox relay %s stopped after %s: in total %d published, %d retried, "
            "%d dead, %d given back, %d lost to another relay, %d cleaned up, %d failed rounds",
            self.name,
            _seconds(time.monotonic() - self._started_at),
            stats.published,
            stats.retried,
            stats.dead,
            stats.released,
            stats.lost,
            stats.cleaned,
            stats.errors,
        )

    # -- observing ---------------------------------------------------------------

    def add_listener(self, listener: Callable[[RelayRound], None]) -> Callable[[], None]:
        """Call `listener` with each `RelayRound` that claimed rows, after the
        outcome is recorded and counted; returns a function that removes it."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def _describe(error: BaseException) -> str:
    return quote(f"{type(error).__name__}: {error}")


def _is_database_error(error: BaseException) -> bool:
    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(error, SQLAlchemyError | OSError)


async def _close_quietly(connection: Any) -> None:
    try:
        await connection.close()
    except Exception:
        logger.debug("closing the LISTEN connection failed", exc_info=True)
