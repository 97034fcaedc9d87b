"""The ``mediator`` command: run a Service, write its AsyncAPI document or its diagram.

```sh
mediator run shop.service:app --broker redis+streams://localhost:6379/0 --workers 2
mediator asyncapi shop.service:app --yaml -o asyncapi.yaml
mediator diagram shop.service:app
```
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mediator._exceptions import MediatorError
from mediator._health import HealthServer
from mediator._service import Service

__all__ = ["load_service", "main"]

logger = logging.getLogger("mediator.cli")

BROKER_URL_VARIABLE = "MEDIATOR_BROKER_URL"
"""Where ``mediator run`` reads the broker URL from when ``--broker`` is not given."""
WORKER_VARIABLE = "MEDIATOR_WORKER"
"""Set to the worker's number (0, 1, ...) in each process ``--workers`` starts."""
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(process)d] %(message)s"

_EXPECTED = (MediatorError, OSError, ImportError, LookupError, ValueError, TimeoutError)
"""Failures a user causes or an operator fixes: reported in one line, without a traceback."""
_FORCED = 3
"""Exit status when a second signal cut the drain short."""


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
        "the deliveries in flight and exit 0; exit 1 with the reason when it fails.",
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
        help="processes to run, each with its own consumers; groups share the work",
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
        help="serve GET /livez, /readyz and /stats on this port (worker i uses PORT + i)",
    )
    run.add_argument(
        "--health-host", default="127.0.0.1", metavar="HOST", help="(default: 127.0.0.1)"
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default ``sys.argv[1:]``); returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _run(args, list(argv) if argv is not None else sys.argv[1:])
        service = load_service(args.app)
        if args.command == "asyncapi":
            from mediator._asyncapi import asyncapi_document, dump

            text = dump(asyncapi_document(service), yaml=args.yaml)
        else:
            from mediator._diagram import mermaid_diagram

            text = mermaid_diagram(service)
        _write(text, args.output)
    except UsageError as exc:
        parser.exit(2, f"mediator {args.command}: {exc}\n")
    except _EXPECTED as exc:
        _report(args.command, exc)
        return 1
    return 0


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
    if args.workers > 1 and os.environ.get(WORKER_VARIABLE) is None:
        return asyncio.run(_supervise(args, argv))
    try:
        service = load_service(args.app)
        if args.broker:
            import brokers

            prefix = service.broker.channel_prefix if service.broker is not None else None
            service.broker = brokers.from_url(args.broker, channel_prefix=prefix)
        if args.drain_timeout is not None:
            service.drain_timeout = args.drain_timeout
        return asyncio.run(_serve(service, args))
    except UsageError:
        raise
    except _EXPECTED as exc:
        _report("run", exc)
        return 1
    except Exception as exc:
        logger.exception("service failed")
        _report("run", exc)
        return 1


async def _serve(service: Service, args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    running = asyncio.current_task()
    assert running is not None
    signals: list[str] = []

    def on_signal(signum: signal.Signals) -> None:
        signals.append(signum.name)
        if len(signals) == 1:
            logger.info("%s: stopping service %s (draining)", signum.name, service.name)
            stopping.append(asyncio.ensure_future(service.stop()))
        else:
            logger.warning("%s again: stopping at once, without draining", signum.name)
            running.cancel()

    stopping: list[asyncio.Future[None]] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    health: HealthServer | None = None
    try:
        if args.health_port is not None:
            worker = int(os.environ.get(WORKER_VARIABLE) or 0)
            health = HealthServer(service, host=args.health_host, port=args.health_port + worker)
            await health.start()
            logger.info("health endpoint on http://%s:%d", health.host, health.port)
        try:
            await service.run()
            await asyncio.gather(*stopping)
        except asyncio.CancelledError:
            if len(signals) > 1:
                sys.stderr.write(f"mediator run: stopped by a second {signals[-1]}, not drained\n")
                return _FORCED
            raise
    finally:
        if health is not None:
            await health.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    logger.info("service %s stopped cleanly (%s)", service.name, signals[0] if signals else "done")
    return 0


async def _supervise(args: argparse.Namespace, argv: list[str]) -> int:
    """Run `args.workers` copies of this command, forward signals, wait for them all."""
    loop = asyncio.get_running_loop()
    command = [sys.executable, "-m", "mediator", *_without_workers(argv)]
    children: list[asyncio.subprocess.Process] = []
    for number in range(args.workers):
        env = {**os.environ, WORKER_VARIABLE: str(number)}
        # A session of its own: a terminal's Ctrl-C reaches the parent only,
        # which forwards one signal, rather than two reaching each worker.
        children.append(
            await asyncio.create_subprocess_exec(*command, env=env, start_new_session=True)
        )
    logger.info("started %d workers: %s", len(children), ", ".join(str(c.pid) for c in children))

    def forward(signum: signal.Signals) -> None:
        for child in children:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, forward, signum)
    status = 0
    waits = {asyncio.ensure_future(child.wait()): child for child in children}
    pending = set(waits)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for finished in done:
            code = finished.result()
            if code != 0 and status == 0:
                status = 1 if code < 0 else code
                # One worker failed: stop the others rather than run short-handed.
                logger.error(
                    "worker %d exited with status %d; stopping the others",
                    waits[finished].pid,
                    code,
                )
                forward(signal.SIGTERM)
    return status


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
