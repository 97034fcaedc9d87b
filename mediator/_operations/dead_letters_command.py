"""``mediator dead-letters list|show|replay|purge``: a broker's dead letters
from the command line (docs/dead-letters.md).

```sh
mediator dead-letters list --broker redis+streams://localhost:6379/0 --prefix shop
mediator dead-letters show --broker amqp://guest:guest@localhost/ 5f0c...
mediator dead-letters replay --reason handler_failed --event OrderPlaced
mediator dead-letters purge --reason not_json --yes
```
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from mediator._broker import DeadLetterQueue, DeadLetterStore
from mediator._dead_letters import DeadLetterRecord
from mediator._operations.dead_letters import (
    Entry,
    entries_of,
    entry_json,
    format_list,
    format_record,
    json_document,
    parse_age,
    select,
)
from mediator._operations.exit_status import FAILED, STOPPED, USAGE

__all__ = ["add_parser", "run"]

BROKER_URL_VARIABLE = "MEDIATOR_BROKER_URL"
"""Where ``--broker`` falls back to, as for ``mediator run``."""
DEFAULT_TIMEOUT = 30.0
"""Seconds a read may take before the command gives up."""


class _Usage(Exception):
    """A command line that cannot be carried out (exit status 2)."""


# -- the command ---------------------------------------------------------------


def add_parser(commands: Any) -> None:
    """Add ``dead-letters list|show|replay|purge`` to the subparsers `commands`."""
    parser = commands.add_parser(
        "dead-letters",
        help="list, show, replay or purge a broker's dead letters",
        description="Read, replay or purge the dead letters a broker keeps "
        "(see docs/dead-letters.md).",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--broker",
        metavar="URL",
        default=os.environ.get(BROKER_URL_VARIABLE),
        help=f"broker URL (default: ${BROKER_URL_VARIABLE})",
    )
    common.add_argument(
        "--outbox",
        metavar="DATABASE_URL",
        help="read the outbox's dead rows in this database instead of a broker's "
        "(postgresql+asyncpg://..., sqlite+aiosqlite:///...)",
    )
    common.add_argument(
        "--prefix",
        metavar="PREFIX",
        help="the channel prefix, or with --outbox the tables' prefix (default: mediator)",
    )
    common.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="read at most N dead letters (default: the broker's own bound)",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up when the broker is silent this long (default: {DEFAULT_TIMEOUT:g})",
    )
    common.add_argument(
        "--subscription",
        metavar="NAME",
        help="Azure Service Bus: the topic subscription whose dead letters to read",
    )
    common.add_argument("--json", action="store_true", help="print JSON")
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--reason", help="only this reason (e.g. not_json, handler_failed)")
    filters.add_argument("--event", metavar="NAME", help="only this event (message name)")
    filters.add_argument("--channel", metavar="GLOB", help="only channels matching this glob")
    filters.add_argument(
        "--older-than", metavar="AGE", help="only those dead-lettered longer ago (90s, 15m, 2h, 7d)"
    )
    filters.add_argument(
        "--newer-than", metavar="AGE", help="only those dead-lettered more recently"
    )
    actions.add_parser(
        "list", parents=[common, filters], help="the dead letters by reason and event, then each"
    )
    show = actions.add_parser("show", parents=[common], help="one dead letter in full")
    show.add_argument("id", metavar="ID", help="its id, message id, or position in the list")
    for name, what in (
        ("replay", "publish dead letters again to their channels, then remove them"),
        ("purge", "remove dead letters for good"),
    ):
        action = actions.add_parser(name, parents=[common, filters], help=what)
        action.add_argument(
            "ids",
            metavar="ID",
            nargs="*",
            help="ids, message ids or positions (default: all selected)",
        )
        action.add_argument(
            "--all",
            action="store_true",
            help="every dead letter read, when no ID or filter is given",
        )
        if name == "purge":
            action.add_argument("--yes", action="store_true", help="really remove them")


def run(args: argparse.Namespace) -> int:
    """Carry out ``dead-letters`` `args`; the exit status."""
    command = f"mediator dead-letters {args.action}"
    root = logging.getLogger()
    if not root.handlers:
        # The clients' own warnings (a refused connection, a retry) would go to
        # stderr beside the one line this command writes about them.
        root.addHandler(logging.NullHandler())
    try:
        _check(args)
        broker = _broker(args)
        return asyncio.run(_run(broker, args, command))
    except _Usage as exc:
        sys.stderr.write(f"{command}: {exc}\n")
        return USAGE
    except Exception as exc:  # one line an operator can act on, never a traceback
        text = _scrub(str(exc).splitlines()[0] if str(exc) else "", _url(args))
        sys.stderr.write(f"{command}: {type(exc).__name__}: {text}\n")
        return FAILED


def _check(args: argparse.Namespace) -> None:
    """Raise `_Usage` for a command line that cannot be carried out."""
    if args.limit is not None and args.limit < 1:
        raise _Usage(f"--limit {args.limit}: must be 1 or more")
    if not args.timeout > 0:
        raise _Usage(f"--timeout {args.timeout}: must be more than 0 seconds")
    for option in ("older_than", "newer_than"):
        text = getattr(args, option, None)
        if text is not None:
            try:
                setattr(args, option, parse_age(text))
            except ValueError as exc:
                raise _Usage(f"--{option.replace('_', '-')} {exc}") from None
    if args.action in ("replay", "purge"):
        chosen = bool(args.ids) or any(
            getattr(args, name) is not None
            for name in ("reason", "event", "channel", "older_than", "newer_than")
        )
        if not chosen and not args.all:
            raise _Usage(
                f"which dead letters? name them by ID, select them with --reason, --event, "
                f"--channel, --older-than or --newer-than, or pass --all to {args.action} "
                "every one read"
            )
        if args.action == "purge" and not args.yes:
            raise _Usage("purge removes dead letters for good; pass --yes to do it")


async def _run(broker: Any, args: argparse.Namespace, command: str) -> int:
    import brokers

    try:
        async with asyncio.timeout(args.timeout):
            records: list[DeadLetterRecord] = await broker.dead_letters(limit=args.limit)
        entries = entries_of(records)
        if args.action == "show":
            return _show(entries, args, command)
        entries = select(
            entries,
            reason=args.reason,
            event=args.event,
            channel=args.channel,
            older_than=args.older_than,
            newer_than=args.newer_than,
        )
        if args.action == "list":
            _print_list(entries, args.json)
            return STOPPED
        if args.ids:
            entries = [entry for entry in entries if any(entry.named(i) for i in args.ids)]
            missing = [i for i in args.ids if not any(entry.named(i) for entry in entries)]
            if missing:
                sys.stderr.write(
                    f"{command}: no dead letter with id {', '.join(map(repr, missing))} among "
                    f"the {len(records)} read (and selected); see mediator dead-letters list\n"
                )
                return FAILED
        if not isinstance(broker, DeadLetterQueue):
            raise _Usage(f"{type(broker).__name__} can read its dead letters but not change them")
        if args.action == "purge":
            return await _purge(broker, entries, args)
        return await _replay(broker, entries, args, command)
    except TimeoutError:
        raise TimeoutError(
            f"no answer from {brokers.redact(_url(args))} within {args.timeout:g} s (--timeout)"
        ) from None
    finally:
        try:
            async with asyncio.timeout(args.timeout):
                await (broker.stop() if hasattr(broker, "stop") else broker.engine.dispose())
        except Exception:  # the command's own error is the one to report
            pass


def _print_list(entries: Sequence[Entry], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(json_document(entries), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_list(entries))


def _show(entries: Sequence[Entry], args: argparse.Namespace, command: str) -> int:
    found = [entry for entry in entries if entry.named(args.id)]
    if not found:
        sys.stderr.write(
            f"{command}: no dead letter with id, message id or position {args.id!r} "
            f"among the {len(entries)} read; see mediator dead-letters list\n"
        )
        return FAILED
    if args.json:
        document = [entry_json(entry) for entry in found]
        sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write("\n".join(format_record(entry) for entry in found))
    return STOPPED


def _say(args: argparse.Namespace, document: dict[str, Any], text: str) -> None:
    """One line per step, written at once: an interrupted run has said what it did."""
    line = orjson.dumps(document).decode() if args.json else text
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _replay(
    broker: DeadLetterQueue, entries: Sequence[Entry], args: argparse.Namespace, command: str
) -> int:
    whole = [entry for entry in entries if entry.record.replayable]
    cut = [entry for entry in entries if not entry.record.replayable]
    by_id = {entry.record.id: entry for entry in whole}
    replayed = 0
    # Each publish and removal has its own time limit, not the whole run.
    progress = broker.replay_dead_letters([entry.record for entry in whole]).__aiter__()
    while True:
        try:
            async with asyncio.timeout(args.timeout):
                record = await anext(progress)
        except StopAsyncIteration:
            break
        replayed += 1
        entry = by_id.get(record.id)
        _say(
            args,
            {
                "replayed": record.id,
                "message_id": entry and entry.message_id,
                "channel": record.channel,
            },
            f"replayed {record.id} to {record.channel}",
        )
    for entry in cut:
        _say(
            args,
            {"skipped": entry.id, "reason": "truncated"},
            f"skipped {entry.id}: only the first {len(entry.record.data)} of "
            f"{entry.record.size} bytes are kept, so it cannot be replayed",
        )
    gone = len(whole) - replayed
    summary = f"replayed {replayed} of {len(entries)}"
    if gone:
        summary += (
            f"; {gone} were not taken: replayed or purged meanwhile, or (Service Bus) "
            "locked by an earlier run until its locks run out"
        )
    if cut:
        summary += f"; {len(cut)} cannot be replayed (body cut)"
    if not args.json:
        sys.stdout.write(summary + "\n")
    if cut:
        sys.stderr.write(f"{command}: {summary}\n")
        return FAILED
    return STOPPED


async def _purge(
    broker: DeadLetterQueue, entries: Sequence[Entry], args: argparse.Namespace
) -> int:
    async with asyncio.timeout(args.timeout):
        removed = await broker.purge_dead_letters([entry.record for entry in entries])
    _say(args, {"purged": removed}, f"purged {removed} of {len(entries)}")
    return STOPPED


def _scrub(text: str, url: str | None) -> str:
    """`text` with the URL redacted and its password masked wherever it occurs."""
    from urllib.parse import unquote, urlsplit

    import brokers

    if not url:
        return text
    text = text.replace(url, brokers.redact(url))
    try:
        password = urlsplit(url).password
    except ValueError:
        return text
    for secret in {password, unquote(password or "")} - {None, ""}:
        assert secret is not None
        text = text.replace(secret, "***")
    return text


def _url(args: argparse.Namespace) -> str:
    """The URL the command reads: the outbox's database, or the broker's."""
    return str(args.outbox or args.broker or "")


def _outbox(args: argparse.Namespace) -> Any:
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError
    from sqlalchemy.ext.asyncio import create_async_engine

    from mediator.outbox import Outbox, OutboxError

    try:
        return Outbox(create_async_engine(args.outbox), prefix=args.prefix or "mediator")
    except (ArgumentError, NoSuchModuleError, OutboxError, ValueError, ImportError) as exc:
        import brokers

        raise _Usage(
            f"--outbox {brokers.redact(args.outbox)!r}: {str(exc).splitlines()[0]} (the "
            "outbox supports postgresql+asyncpg:// and sqlite+aiosqlite://)"
        ) from None


def _broker(args: argparse.Namespace) -> Any:
    import brokers

    if args.outbox:
        if args.subscription:
            raise _Usage("--subscription is for Azure Service Bus only, not for --outbox")
        return _outbox(args)
    if not args.broker:
        raise _Usage(
            f"no broker: pass --broker URL or set {BROKER_URL_VARIABLE} "
            "(or --outbox DATABASE_URL for the outbox's dead rows)"
        )
    url: str = args.broker
    shown = brokers.redact(url)
    options: dict[str, Any] = {}
    if "sb://" in url.lower():
        # Service Bus keeps dead letters per topic subscription.
        if not args.subscription:
            raise _Usage(
                f"{shown!r}: Service Bus keeps dead letters per topic subscription; "
                "pass --subscription NAME"
            )
        options["subscription"] = args.subscription
        if "entitypath=" not in url.lower() and args.prefix:
            options["topic"] = args.prefix  # the topic, as AzureMessageBroker's prefix is
    elif args.subscription:
        raise _Usage("--subscription is for Azure Service Bus only; this broker has one store")
    if url.partition("://")[0].lower() == "memory":
        raise _Usage(
            f"{url!r}: the memory broker keeps its dead letters in its own process; "
            "there is nothing to read from another"
        )
    try:
        broker = brokers.from_url(url, channel_prefix=args.prefix, **options)
    except ValueError as exc:
        raise _Usage(str(exc).splitlines()[0]) from None
    if not isinstance(broker, DeadLetterStore):
        raise _Usage(f"{type(broker).__name__} for {shown!r} keeps no dead letters")
    return broker
