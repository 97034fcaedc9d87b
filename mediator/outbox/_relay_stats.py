"""The relay's counters, and its INFO lines: started, progress with the
backlog, stopped (docs/outbox.md, "Logs")."""

from __future__ import annotations

import logging
import time

import attrs
from sqlalchemy import bindparam, case, func, select

from mediator._limits import quote
from mediator.outbox._outbox import Outbox
from mediator.outbox._tables import PENDING, as_utc, utcnow

__all__ = ["NOTHING", "ProgressLog", "RelayRound", "RelayStats"]

logger = logging.getLogger("mediator.outbox")


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
    """Rows whose outcome was dropped: another relay had taken their lease."""
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


NOTHING = RelayRound()
"""A round that claimed no row."""


class ProgressLog:
    """The relay's lines at INFO: when it starts, every `interval` seconds
    while there is something to say (None: never), and when it stops."""

    def __init__(
        self, outbox: Outbox, name: str, stats: RelayStats, interval: float | None
    ) -> None:
        self.outbox = outbox
        self.name = name
        self.stats = stats
        self.interval = interval
        table = outbox.tables.outbox
        # One aggregate for the progress line: the pending rows, and when the
        # oldest of those due was written.
        self._backlog = select(
            func.count(),
            func.min(case((table.c.next_attempt_at <= bindparam("now"), table.c.created_at))),
        ).where(table.c.status == PENDING)
        self._started_at = 0.0
        self._next_line = 0.0
        self._last_line = (0.0, 0, 0, 0)
        """When the last progress line was written, and the published,
        retried and dead counters then."""
        self._quiet = False
        """Whether the last progress line said the relay was idle."""

    def log_start(
        self, *, broker: str, listening: bool, listen: bool, poll_interval: float
    ) -> None:
        if listening:
            woken = f"woken by LISTEN/NOTIFY, polling every {poll_interval:g} s as a fallback"
        elif listen:
            woken = f"polling every {poll_interval:g} s until it can LISTEN"
        else:
            woken = f"polling every {poll_interval:g} s"
        progress = (
            "no progress lines" if self.interval is None else f"progress every {self.interval:g} s"
        )
        logger.info(
            "outbox relay %s started: table %s (%s) to %s, %s; %s",
            self.name,
            self.outbox.tables.outbox.name,
            self.outbox.dialect,
            broker,
            woken,
            progress,
        )

    def begin(self) -> None:
        """The relay's loop starts: the first progress line counts from now."""
        self._started_at = time.monotonic()
        self._progress_from(self._started_at)
        self._quiet = False

    @property
    def next_line(self) -> float | None:
        """When (`time.monotonic`) the next progress line is due; None: never."""
        return None if self.interval is None else self._next_line

    def due(self) -> bool:
        return self.interval is not None and time.monotonic() >= self._next_line

    def _progress_from(self, now: float) -> None:
        stats = self.stats
        self._last_line = (now, stats.published, stats.retried, stats.dead)
        if self.interval is not None:
            self._next_line = now + self.interval

    async def _backlog_now(self) -> tuple[int, float | None]:
        """The pending rows, and the seconds the oldest due one has waited."""
        now = utcnow()
        async with self.outbox.engine.connect() as connection:
            pending, oldest = (await connection.execute(self._backlog, {"now": now})).one()
        waited = None if oldest is None else max(0.0, (now - as_utc(oldest)).total_seconds())
        return int(pending), waited

    async def log_progress(self) -> None:
        """The progress line; after an idle line, nothing until there is something to say."""
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
            self._next_line = now + (self.interval or 0.0)
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

    def log_stop(self) -> None:
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


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
