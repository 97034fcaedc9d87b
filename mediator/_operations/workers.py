"""``mediator run --workers N``: the parent that starts the workers, forwards
signals to them and restarts those that fail (docs/running.md, "Workers")."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import sys

import attrs

from mediator._operations.exit_status import FAILED, GAVE_UP, SEVERITY, STOPPED, USAGE

__all__ = [
    "MAX_RESTART_DELAY",
    "RESTART_DELAY",
    "RESTART_LIMIT",
    "RESTART_WINDOW",
    "WORKER_VARIABLE",
    "RestartPolicy",
    "Supervisor",
    "worker_command",
]

logger = logging.getLogger("mediator.cli")

WORKER_VARIABLE = "MEDIATOR_WORKER"
"""Set to the worker's number (0, 1, ...) in each process ``--workers`` starts."""
RESTART_DELAY = 1.0
"""Seconds before a failed worker's first restart (``--restart-delay``)."""
MAX_RESTART_DELAY = 30.0
"""The restart delay doubles with each further restart up to this."""
RESTART_LIMIT = 5
"""Restarts of one worker within `RESTART_WINDOW` before the parent gives up
(``--restart-limit``)."""
RESTART_WINDOW = 60.0
"""Seconds over which restarts are counted; a worker that ran this long
before failing is restarted after `RESTART_DELAY` again."""


@attrs.frozen
class RestartPolicy:
    """How the parent of ``--workers`` replaces a worker that exits unexpectedly."""

    delay: float = RESTART_DELAY
    """Seconds before the first restart; each further one doubles it, up to
    `max_delay`. It starts again from here once a worker ran `window` seconds."""
    limit: int = RESTART_LIMIT
    """Restarts of one worker within `window` seconds; one more failure gives up."""
    max_delay: float = MAX_RESTART_DELAY
    window: float = RESTART_WINDOW

    def next_delay(self, previous: float | None) -> float:
        if previous is None:
            return self.delay
        return min(previous * 2, max(self.max_delay, self.delay))


@attrs.define
class _Worker:
    number: int
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    delay: float | None = None
    """The last restart delay, None before the first restart (or after a long run)."""
    restarts: collections.deque[float] = attrs.field(factory=collections.deque)
    """When it was restarted, within the policy's window."""
    status: int = STOPPED
    """What its last exit says, as an exit status of `mediator run`."""


class Supervisor:
    """Runs `count` workers of `command`, replaces those that fail, forwards
    SIGTERM and SIGINT, and gives up when a worker keeps failing."""

    def __init__(self, command: list[str], count: int, policy: RestartPolicy) -> None:
        self.command = command
        self.policy = policy
        self.workers = [_Worker(number) for number in range(count)]
        self.stopping = asyncio.Event()
        self.signals: list[signal.Signals] = []
        self.gave_up: tuple[int, str] | None = None
        """The exit status and reason when the parent stopped the workers itself."""

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            await asyncio.gather(*(self._keep(worker) for worker in self.workers))
        except BaseException:
            # Whatever went wrong in here, the workers must not outlive the
            # parent unasked: they drain and exit on their own.
            self._stop(signal.SIGTERM)
            raise
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        statuses = [worker.status for worker in self.workers]
        if self.gave_up is not None:
            statuses.append(self.gave_up[0])
        status = max(statuses, key=SEVERITY.index)
        logger.info("every worker has exited; exit status %d", status)
        if self.gave_up is not None:
            # Last, so that it is the line an operator reads first.
            sys.stderr.write(f"mediator run: {self.gave_up[1]}\n")
        return status

    def _on_signal(self, signum: signal.Signals) -> None:
        self.signals.append(signum)
        if len(self.signals) == 1 and not self.stopping.is_set():
            logger.info("%s: stopping %d workers (draining)", signum.name, len(self.workers))
        else:
            logger.warning("%s again: forwarded, the workers stop at once", signum.name)
        self._stop(signum)

    def _stop(self, signum: signal.Signals) -> None:
        self.stopping.set()
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)

    def _give_up(self, status: int, reason: str) -> None:
        if self.stopping.is_set():
            return
        logger.error("%s", reason)
        self.gave_up = (status, reason)
        self._stop(signal.SIGTERM)

    async def _keep(self, worker: _Worker) -> None:
        """Run `worker` until the parent stops; restart it when it fails."""
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            env = {**os.environ, WORKER_VARIABLE: str(worker.number)}
            try:
                # A session of its own: a terminal's Ctrl-C reaches the parent
                # only, which forwards one signal, rather than two reaching each worker.
                process = await asyncio.create_subprocess_exec(
                    *self.command, env=env, start_new_session=True
                )
            except OSError as exc:
                self._give_up(FAILED, f"cannot start worker {worker.number}: {exc}")
                worker.status = FAILED
                return
            worker.process, worker.started_at = process, loop.time()
            if worker.restarts:
                logger.warning("worker %d restarted: pid %d", worker.number, process.pid)
            else:
                logger.info("worker %d started: pid %d", worker.number, process.pid)
            if self.stopping.is_set():
                # The stop came while it was being started: it gets the signal too.
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(self.signals[0] if self.signals else signal.SIGTERM)
            code = await process.wait()
            ran = loop.time() - worker.started_at
            what = f"worker {worker.number} (pid {process.pid}) {_describe(code)}"
            if self.stopping.is_set():
                worker.status = self._stopped_status(code)
                if code < 0 and worker.status == STOPPED:
                    what += ", before it had started anything"
                log = logger.info if worker.status == STOPPED else logger.warning
                log("%s", what)
                return
            if code == STOPPED:
                logger.info("%s: its service ended by itself; not restarting it", what)
                worker.status = STOPPED
                return
            worker.status = FAILED
            if code == USAGE:
                worker.status = USAGE
                self._give_up(
                    USAGE,
                    f"{what}, a usage error that restarting cannot fix: stopped the other "
                    "workers; correct the command line (its message is above)",
                )
                return
            now = loop.time()
            while worker.restarts and worker.restarts[0] <= now - self.policy.window:
                worker.restarts.popleft()
            if len(worker.restarts) >= self.policy.limit:
                failures = len(worker.restarts) + 1
                self._give_up(
                    GAVE_UP,
                    f"{what} after {ran:.1f} s: {failures} failure{'s' * (failures > 1)} "
                    f"within {self.policy.window:g} s, more than --restart-limit "
                    f"{self.policy.limit} restarts allow; gave up restarting it and stopped "
                    "the other workers (its errors are above)",
                )
                return
            if ran >= self.policy.window:
                worker.delay = None  # it ran a while: not a crash loop, restart quickly
            worker.delay = self.policy.next_delay(worker.delay)
            worker.restarts.append(now)
            logger.error(
                "%s after %.1f s; restarting it in %g s (restart %d of at most %d within %g s)",
                what,
                ran,
                worker.delay,
                len(worker.restarts),
                self.policy.limit,
                self.policy.window,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(worker.delay):
                    await self.stopping.wait()
        worker.status = STOPPED  # stopped while waiting to be restarted: nothing ran

    def _stopped_status(self, code: int) -> int:
        """What a worker's exit says once the parent stops the workers."""
        if code in SEVERITY:
            return code
        if -code in {s.value for s in self.signals} or (-code == signal.SIGTERM and self.gave_up):
            # Ended by the forwarded signal itself, before its handlers were
            # installed (while Python started): it had not started anything.
            return STOPPED
        return FAILED


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


def worker_command(argv: list[str]) -> list[str]:
    """`mediator run` with the same options, without ``--workers``: what each worker runs."""
    return [sys.executable, "-m", "mediator", *_without_workers(argv)]


def _without_workers(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out
