"""``mediator sagas list|show|retry|abandon APP``: the sagas a service's
runners keep, from the command line (docs/sagas.md, "Operating sagas").

```sh
mediator sagas list shop.service:app --status failed
mediator sagas retry shop.service:app 5f0c...
```
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from mediator._operations.exit_status import FAILED, STOPPED

if TYPE_CHECKING:
    from mediator._operations.service import Service
    from mediator.sagas import SagaRunner, SagaState

__all__ = ["add_parser", "run"]


class SagasUsage(Exception):
    """A command line that cannot be carried out (exit status 2)."""


def add_parser(commands: Any) -> None:
    """Add ``sagas list|show|retry|abandon`` to the subparsers `commands`."""
    parser = commands.add_parser(
        "sagas",
        help="list, show, retry or abandon a service's sagas",
        description="The sagas a service's runners keep (see docs/sagas.md).",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("app", help="module:attribute naming a mediator.Service")
    common.add_argument("--json", action="store_true", help="print JSON")
    listing = actions.add_parser("list", parents=[common], help="the sagas, counted by status")
    listing.add_argument(
        "--status",
        choices=["running", "compensating", "completed", "compensated", "failed", "abandoned"],
        help="only sagas in this status",
    )
    listing.add_argument("--saga", metavar="NAME", help="only runs of this saga")
    listing.add_argument("--limit", type=int, metavar="N", help="at most N, oldest first")
    for name, what in (
        ("show", "one saga's state and context"),
        ("retry", "compensate a failed saga again, from where it failed"),
        ("abandon", "give a saga up: nothing runs it again"),
    ):
        action = actions.add_parser(name, parents=[common], help=what)
        action.add_argument("id", metavar="ID", help="the saga's id")


def run(args: argparse.Namespace, load_service: Callable[[str], Service]) -> int:
    """Carry out ``sagas`` `args`; the exit status (`SagasUsage` for 2)."""
    service = load_service(args.app)
    if not service.sagas:
        raise SagasUsage(f"{args.app} runs no sagas: give it Service(..., sagas=[SagaRunner(...)])")
    if args.action == "list":
        if args.limit is not None and args.limit < 1:
            raise SagasUsage(f"--limit {args.limit}: must be 1 or more")
        return asyncio.run(_list(service.sagas, args))
    try:
        saga_id = uuid.UUID(args.id)
    except ValueError:
        raise SagasUsage(f"{args.id!r} is not a saga id (a UUID, as list prints it)") from None
    return asyncio.run(_one(service.sagas, args, saga_id))


async def _list(runners: Sequence[SagaRunner], args: argparse.Namespace) -> int:
    from mediator.sagas import SagaStatus

    statuses = None if args.status is None else frozenset({SagaStatus(args.status)})
    states: list[SagaState] = []
    counts: dict[str, int] = {}
    for store in _stores(runners):
        states += await store.states(statuses)
        for status, count in (await store.counts()).items():
            counts[status] = counts.get(status, 0) + count
    states = [s for s in states if args.saga is None or s.saga == args.saga]
    states.sort(key=lambda s: s.created_at)
    states = states[: args.limit]
    if args.json:
        document = {"counts": counts, "sagas": [s.summary() for s in states]}
        sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
        return STOPPED
    sys.stdout.write(", ".join(f"{status} {n}" for status, n in counts.items()) + "\n")
    if states:
        sys.stdout.write("\n")
        rows = [
            (
                str(s.id),
                s.saga,
                s.status.value,
                str(s.step),
                s.updated_at.isoformat(timespec="seconds"),
                s.error or "",
            )
            for s in states
        ]
        header = ("ID", "SAGA", "STATUS", "STEP", "UPDATED", "ERROR")
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(5)]
        for row in (header, *rows):
            cells = [cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True)]
            error = row[5] if len(row[5]) <= 80 else row[5][:77] + "..."
            sys.stdout.write(("  ".join(cells) + "  " + error).rstrip() + "\n")
    return STOPPED


async def _one(runners: Sequence[SagaRunner], args: argparse.Namespace, saga_id: uuid.UUID) -> int:
    for runner in runners:
        state = await runner.store.load(saga_id)
        if state is None:
            continue
        if args.action == "show":
            document = {**state.summary(), "context": orjson.loads(state.context)}
            if args.json:
                sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
            else:
                for name, value in document.items():
                    shown = orjson.dumps(value).decode() if name == "context" else value
                    sys.stdout.write(f"{name + ':':<12} {'-' if value is None else shown}\n")
            return STOPPED
        from mediator.sagas import SagaError

        try:
            if args.action == "retry":
                result = await runner.retry(saga_id)
            else:
                result = await runner.abandon(saga_id)
        except SagaError as exc:
            sys.stderr.write(f"mediator sagas {args.action}: {exc}\n")
            return FAILED
        if args.json:
            done = {"id": str(result.id), "saga": result.saga, "status": result.status.value}
            sys.stdout.write(orjson.dumps({**done, "error": result.error}).decode() + "\n")
        else:
            line = f"saga {result.saga} {result.id}: {result.status.value}"
            sys.stdout.write(line + (f" ({result.error})" if result.error else "") + "\n")
        return STOPPED if result.status.value != "failed" else FAILED
    sys.stderr.write(f"mediator sagas {args.action}: no saga {saga_id} is kept by {args.app}\n")
    return FAILED


def _stores(runners: Sequence[SagaRunner]) -> list[Any]:
    """The runners' stores, each once."""
    stores: list[Any] = []
    for runner in runners:
        if not any(store is runner.store for store in stores):
            stores.append(runner.store)
    return stores
