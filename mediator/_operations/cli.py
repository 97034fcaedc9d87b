"""The ``mediator`` command: run a Service, write its AsyncAPI document or its
diagram (docs/operations.md, "The command"; docs/running.md).

```sh
mediator run shop.service:app --broker redis+streams://localhost:6379/0 --workers 2
mediator asyncapi shop.service:app --yaml -o asyncapi.yaml
mediator diagram shop.service:app
mediator dead-letters list --broker redis+streams://localhost:6379/0 --prefix shop
```
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mediator._exceptions import MediatorError
from mediator._operations import dead_letters_command, sagas_command
from mediator._operations.exit_status import DRAIN_CANCELLED, FAILED, FORCED, STOPPED, USAGE
from mediator._operations.health import TOKEN_VARIABLE, HealthServer
from mediator._operations.service import Service
from mediator._operations.workers import (
    MAX_RESTART_DELAY,
    RESTART_DELAY,
    RESTART_LIMIT,
    RESTART_WINDOW,
    WORKER_VARIABLE,
    RestartPolicy,
    Supervisor,
    worker_command,
)

__all__ = ["load_service", "main"]

logger = logging.getLogger("mediator.cli")

BROKER_URL_VARIABLE = "MEDIATOR_BROKER_URL"
"""Where ``mediator run`` reads the broker URL from when ``--broker`` is not given."""
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(process)d] %(message)s"

_EXPECTED = (MediatorError, OSError, ImportError, LookupError, ValueError, TimeoutError)
"""Failures a user causes or an operator fixes: reported in one line, without a traceback."""


class UsageError(Exception):
    """A command line that cannot be carried out (exit status 2)."""


def load_service(target: str) -> Service:
    """The Service named by ``module:attribute`` (a Service, or a function returning one).

    The current directory is importable, as it is for ``python -m``.
    """
    module_name, _, attribute = target.partition(":")
    attribute = attribute or "app"
    if not module_name:
        raise UsageError(
            f"{target!r} names no module; write module:attribute, e.g. shop.service:app"
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise UsageError(
                f"cannot import {module_name!r} ({exc}); run from the directory that holds it "
                "or add that directory to PYTHONPATH"
            ) from exc
        raise
    found: Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise UsageError(
                f"module {module_name!r} has no attribute {attribute!r}; point at a Service, "
                f"e.g. {module_name}:app where app = Service(...)"
            ) from None
    if not isinstance(found, Service) and callable(found):
        found = found()
    if not isinstance(found, Service):
        raise UsageError(
            f"{target} is a {type(found).__name__}, not a mediator.Service; point at a "
            "Service or a function returning one"
        )
    return found


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mediator", description="Run a mediator Service, or describe what it routes."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the service until SIGTERM or SIGINT",
        description="Start the service, handle messages, and on SIGTERM or SIGINT drain "
        "the deliveries in flight and exit 0; exit 1 with the reason when it fails, 3 when "
        "a second signal cut the drain short, 4 when the drain timeout cancelled deliveries, "
        "5 when a worker kept failing (see docs/running.md).",
    )
    run.add_argument("app", help="module:attribute naming a mediator.Service")
    run.add_argument(
        "--broker",
        metavar="URL",
        default=os.environ.get(BROKER_URL_VARIABLE),
        help=f"broker URL replacing the service's own (default: ${BROKER_URL_VARIABLE})",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="processes to run, each with its own consumers; groups share the work, and "
        "the parent restarts a worker that fails",
    )
    run.add_argument(
        "--drain-timeout",
        type=float,
        metavar="SECONDS",
        help="seconds a stop gives deliveries in flight (default: the service's, 10)",
    )
    run.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="standard library logging level (default: INFO)",
    )
    run.add_argument(
        "--health-port",
        type=int,
        metavar="PORT",
        help="serve the probes /livez and /readyz, /stats, /metrics, /dead-letters and a "
        "status page at / on this port (worker i uses PORT + i; docs/status-page.md)",
    )
    run.add_argument(
        "--health-host",
        default="127.0.0.1",
        metavar="HOST",
        help="(default: 127.0.0.1) any other address needs a secret in "
        f"${TOKEN_VARIABLE}, which every path but the probes then asks for",
    )
    run.add_argument(
        "--restart-delay",
        type=float,
        default=RESTART_DELAY,
        metavar="SECONDS",
        help="with --workers: seconds before a failed worker is restarted, doubling with "
        f"each further restart up to {MAX_RESTART_DELAY:g} (default: {RESTART_DELAY:g})",
    )
    run.add_argument(
        "--restart-limit",
        type=int,
        default=RESTART_LIMIT,
        metavar="N",
        help="with --workers: restarts of one worker within "
        f"{RESTART_WINDOW:g} s before giving up and stopping all "
        f"(default: {RESTART_LIMIT}; 0 never restarts)",
    )

    asyncapi = commands.add_parser(
        "asyncapi", help="write the service's AsyncAPI 3.0 document", description=""
    )
    asyncapi.add_argument("app", help="module:attribute naming a mediator.Service")
    asyncapi.add_argument("--yaml", action="store_true", help="YAML instead of JSON")
    asyncapi.add_argument("-o", "--output", metavar="FILE", help="write here, not to stdout")

    diagram = commands.add_parser(
        "diagram", help="write a Mermaid flowchart of what the service routes"
    )
    diagram.add_argument("app", help="module:attribute naming a mediator.Service")
    diagram.add_argument("-o", "--output", metavar="FILE", help="write here, not to stdout")
    dead_letters_command.add_parser(commands)
    sagas_command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default ``sys.argv[1:]``); returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _run(args, list(argv) if argv is not None else sys.argv[1:])
        if args.command == "dead-letters":
            return dead_letters_command.run(args)
        if args.command == "sagas":
            try:
                return sagas_command.run(args, load_service)
            except sagas_command.SagasUsage as exc:
                raise UsageError(str(exc)) from None
        service = load_service(args.app)
        if args.command == "asyncapi":
            from mediator._operations.asyncapi import asyncapi_document, dump

            text = dump(asyncapi_document(service), yaml=args.yaml)
        else:
            from mediator._operations.diagram import mermaid_diagram

            text = mermaid_diagram(service)
        _write(text, args.output)
    except UsageError as exc:
        parser.exit(USAGE, f"mediator {args.command}: {exc}\n")
    except _EXPECTED as exc:
        _report(args.command, exc)
        return FAILED
    return STOPPED


def _write(text: str, output: str | None) -> None:
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        Path(output).write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")


def _report(command: str, exc: BaseException) -> None:
    # One line an operator can act on; the details are in the log above it.
    text = str(exc).splitlines()[0] if str(exc) else ""
    sys.stderr.write(f"mediator {command}: {type(exc).__name__}: {text}\n")


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT, stream=sys.stderr)
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be 1 or more")
    if args.drain_timeout is not None and args.drain_timeout < 0:
        raise UsageError(f"--drain-timeout {args.drain_timeout}: must be 0 or more seconds")
    if args.restart_delay < 0:
        raise UsageError(f"--restart-delay {args.restart_delay}: must be 0 or more seconds")
    if args.restart_limit < 0:
        raise UsageError(f"--restart-limit {args.restart_limit}: must be 0 or more")
    if args.workers > 1 and os.environ.get(WORKER_VARIABLE) is None:
        policy = RestartPolicy(delay=args.restart_delay, limit=args.restart_limit)
        return asyncio.run(Supervisor(worker_command(argv), args.workers, policy).run())
    signals: list[str] = []
    # From here on a SIGTERM, e.g. one the parent forwards while this worker
    # still imports the app, means "do not start" rather than the default
    # death by signal; the event loop's handlers take over from these.
    early = _EarlySignals(signals)
    try:
        service = load_service(args.app)
        if args.broker:
            import brokers

            prefix = service.broker.channel_prefix if service.broker is not None else None
            service.broker = brokers.from_url(args.broker, channel_prefix=prefix)
        if args.drain_timeout is not None:
            service.drain_timeout = args.drain_timeout
        return asyncio.run(_serve(service, args, signals))
    except UsageError:
        raise
    except _EXPECTED as exc:
        _report("run", exc)
        return FAILED
    except Exception as exc:
        logger.exception("service failed")
        _report("run", exc)
        return FAILED
    finally:
        early.restore()


class _EarlySignals:
    """SIGTERM and SIGINT before the event loop handles them: the first is
    recorded in `signals` (the service then does not start), a second exits
    at once with `FORCED`."""

    def __init__(self, signals: list[str]) -> None:
        self.signals = signals
        self.previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signal.Signals(signum).name)
        if len(self.signals) > 1:
            sys.stderr.write(f"mediator run: stopped by a second {self.signals[-1]} before start\n")
            raise SystemExit(FORCED)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            if handler is not None:  # None: installed outside Python, cannot be put back
                signal.signal(signum, handler)


async def _serve(service: Service, args: argparse.Namespace, signals: list[str]) -> int:
    """Run `service` until a signal or its own end; the exit status."""
    loop = asyncio.get_running_loop()
    running = asyncio.current_task()
    assert running is not None
    starting: asyncio.Future[None] | None = None
    stopping: list[asyncio.Future[None]] = []
    health: HealthServer | None = None

    def on_signal(signum: signal.Signals) -> None:
        signals.append(signum.name)
        if len(signals) > 1:
            logger.warning("%s again: stopping at once, without draining", signum.name)
            running.cancel()
        elif starting is not None and not starting.done():
            # start() undoes what it started when cancelled; a stop() beside it
            # would leave a slow start-up hook running and the start going on.
            logger.info("%s during start-up: stopping service %s", signum.name, service.name)
            starting.cancel()
        else:
            logger.info("%s: stopping service %s (draining)", signum.name, service.name)
            stopping.append(asyncio.ensure_future(service.stop()))

    async def start() -> None:
        if health is not None:
            await health.start()
            logger.info("health endpoint on http://%s:%d", health.host, health.port)
        await service.start()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        if signals:
            logger.info("%s before start: not starting service %s", signals[0], service.name)
            return STOPPED
        if args.health_port is not None:
            worker = int(os.environ.get(WORKER_VARIABLE) or 0)
            health = HealthServer(service, host=args.health_host, port=args.health_port + worker)
        try:
            # A task of its own, so that a signal cancels the start and nothing else.
            starting = asyncio.ensure_future(start())
            try:
                await starting
            except asyncio.CancelledError:
                if len(signals) != 1 or not starting.cancelled():
                    raise
                logger.info("service %s stopped during start-up (%s)", service.name, signals[0])
                return STOPPED
            if signals and not stopping:
                # The signal came during start-up, but something (a hook) swallowed
                # the cancellation and the start went on: stop it now.
                logger.info("%s: stopping service %s (draining)", signals[0], service.name)
                stopping.append(asyncio.ensure_future(service.stop()))
            await service.run()  # started already: waits for a stop or a failure
            await asyncio.gather(*stopping)
        except asyncio.CancelledError:
            if len(signals) < 2:
                raise
            sys.stderr.write(f"mediator run: stopped by a second {signals[-1]}, not drained\n")
            return FORCED
    finally:
        if health is not None:
            await health.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    if service.cancelled_at_stop:
        sys.stderr.write(
            f"mediator run: {service.cancelled_at_stop} deliveries were still running after "
            f"the drain timeout ({service.drain_timeout:g} s) and were cancelled, released "
            "for redelivery (an at-most-once broker loses them); give handlers longer with "
            "--drain-timeout, or the service manager a longer grace period\n"
        )
        return DRAIN_CANCELLED
    logger.info(
        "service %s stopped cleanly (%s)", service.name, signals[0] if signals else "by itself"
    )
    return STOPPED
