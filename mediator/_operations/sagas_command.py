"""``mediator sagas list|show|retry|abandon APP``: the sagas a service's
runners keep, and the instances of its process managers, from the command
line (docs/sagas.md, "Operations").

```sh
mediator sagas list shop.service:app --status failed
mediator sagas retry shop.service:app 5f0c...
mediator sagas show shop.service:app CheckoutProcess/7
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
    from mediator.sagas import SagaRunner, SagaState, TimeoutDispatcher
    from mediator.sagas._process_stores import Instance

__all__ = ["add_parser", "run"]


class SagasUsage(Exception):
    """A command line that cannot be carried out (exit status 2)."""


def add_parser(commands: Any) -> None:
    """Add ``sagas list|show|retry|abandon`` to the subparsers `commands`."""
    parser = commands.add_parser(
        "sagas",
        help="list, show, retry or abandon a service's sagas and process instances",
        description=(
            "The sagas a service's runners keep, and the instances of its process "
            "managers (see docs/sagas.md)."
        ),
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("app", help="module:attribute naming a mediator.Service")
    common.add_argument("--json", action="store_true", help="print JSON")
    listing = actions.add_parser(
        "list", parents=[common], help="the sagas and process instances, counted by status"
    )
    listing.add_argument(
        "--status",
        choices=[
            "running",
            "compensating",
            "completed",
            "compensated",
            "failed",
            "abandoned",
            "active",
        ],
        help="only sagas or process instances in this status (active: process instances)",
    )
    listing.add_argument(
        "--kind", choices=["saga", "process"], help="only sagas, or only process instances"
    )
    listing.add_argument(
        "--saga",
        metavar="NAME",
        help="only runs of this saga, or instances of this process manager",
    )
    listing.add_argument(
        "--limit", type=int, metavar="N", help="at most N of each kind, oldest first"
    )
    for name, what in (
        ("show", "one saga's state and context, or one process instance's state and timeouts"),
        ("retry", "compensate a failed saga again, from where it failed"),
        ("abandon", "give a saga up: nothing runs it again"),
    ):
        action = actions.add_parser(name, parents=[common], help=what)
        action.add_argument(
            "id", metavar="ID", help="the saga's id, or a process instance's NAME/KEY"
        )


def run(args: argparse.Namespace, load_service: Callable[[str], Service]) -> int:
    """Carry out ``sagas`` `args`; the exit status (`SagasUsage` for 2)."""
    service = load_service(args.app)
    if not service.sagas and not service.process_managers:
        raise SagasUsage(
            f"{args.app} runs no sagas and no process managers: give it "
            "Service(..., sagas=[SagaRunner(...)], process_managers=[TimeoutDispatcher(...)])"
        )
    if args.action == "list":
        if args.limit is not None and args.limit < 1:
            raise SagasUsage(f"--limit {args.limit}: must be 1 or more")
        return asyncio.run(_list(service, args))
    try:
        saga_id = uuid.UUID(args.id)
    except ValueError:
        process, slash, key = args.id.partition("/")
        if not (process and slash and key):
            raise SagasUsage(
                f"{args.id!r} is not a saga id (a UUID) or a process instance's "
                "NAME/KEY, as list prints them"
            ) from None
        if args.action != "show":
            raise SagasUsage(
                f"{args.id} is a process instance: only a saga can be retried or abandoned "
                "(a process instance ends when its process manager completes it)"
            ) from None
        return asyncio.run(_show_instance(service.process_managers, args, process, key))
    return asyncio.run(_one(service.sagas, args, saga_id))


async def _list(service: Service, args: argparse.Namespace) -> int:
    from mediator.sagas import SagaStatus

    states: list[SagaState] = []
    counts: dict[str, int] = {}
    if args.kind != "process" and args.status != "active":
        statuses = None if args.status is None else frozenset({SagaStatus(args.status)})
        for store in _stores(service.sagas):
            states += await store.states(statuses)
    if args.kind != "process":
        for store in _stores(service.sagas):
            for status, count in (await store.counts()).items():
                counts[status] = counts.get(status, 0) + count
    states = [s for s in states if args.saga is None or s.saga == args.saga]
    states.sort(key=lambda s: s.created_at)
    states = states[: args.limit]
    instances: list[Instance] = []
    process_counts: dict[str, dict[str, int]] = {}
    if args.kind != "saga":
        # Process instances are active or completed; the other statuses are sagas'.
        finished = {"active": False, "completed": True}.get(args.status)
        wanted = args.status in (None, "active", "completed")
        for store in _stores(service.process_managers):
            if wanted:
                instances += await store.instances(args.saga, finished=finished, limit=args.limit)
            process_counts.update(await store.counts())
        instances.sort(key=lambda i: i.created_at)
        instances = instances[: args.limit]
    if args.json:
        document = {
            "counts": counts,
            "sagas": [s.summary() for s in states],
            "process_counts": process_counts,
            "processes": [i.summary() for i in instances],
        }
        sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
        return STOPPED
    if counts:
        sys.stdout.write(", ".join(f"{status} {n}" for status, n in counts.items()) + "\n")
    for process, counted in process_counts.items():
        sys.stdout.write(
            f"{process}: active {counted['active']}, completed {counted['completed']}, "
            f"timeouts pending {counted['timeouts']}\n"
        )
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
    if instances:
        _table(
            ("ID", "STATUS", "VERSION", "UPDATED"),
            [
                (i.id, i.status, str(i.version), i.updated_at.isoformat(timespec="seconds"))
                for i in instances
            ],
        )
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


async def _show_instance(
    dispatchers: Sequence[TimeoutDispatcher], args: argparse.Namespace, process: str, key: str
) -> int:
    for store in _stores(dispatchers):
        instance = await store.load(process, key)
        if instance is None:
            continue
        timeouts = await store.timeouts_for(process, key)
        document = {
            **instance.summary(),
            "timeouts": [
                {"id": str(t.id), "event": t.event, "due_at": t.due_at.isoformat()}
                for t in timeouts
            ],
            "state": orjson.loads(instance.state),
        }
        if args.json:
            sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
            return STOPPED
        shown = {
            **document,
            "timeouts": ", ".join(f"{t.event} due {t.due_at.isoformat()}" for t in timeouts),
            "state": orjson.dumps(document["state"]).decode(),
        }
        for name, value in shown.items():
            sys.stdout.write(f"{name + ':':<12} {value or '-'}\n")
        return STOPPED
    sys.stderr.write(
        f"mediator sagas {args.action}: no process instance {process}/{key} is kept by {args.app}\n"
    )
    return FAILED


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    sys.stdout.write("\n")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        sys.stdout.write("  ".join(cells).rstrip() + "\n")


def _stores(owners: Sequence[SagaRunner] | Sequence[TimeoutDispatcher]) -> list[Any]:
    """The stores of the runners (or dispatchers), each once."""
    stores: list[Any] = []
    for owner in owners:
        if not any(store is owner.store for store in stores):
            stores.append(owner.store)
    return stores
