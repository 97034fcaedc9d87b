"""``mediator dead-letters list|show``: read a broker's dead letters from the
command line, without changing them (docs/dead-letters.md).

```sh
mediator dead-letters list --broker redis+streams://localhost:6379/0 --prefix shop
mediator dead-letters show --broker amqp://guest:guest@localhost/ 5f0c...
```
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

import attrs
import orjson

from mediator._broker import DeadLetterStore
from mediator._dead_letters import DeadLetterRecord
from mediator._operations.exit_status import FAILED, STOPPED, USAGE
from mediator._patterns import glob_match

__all__ = [
    "Entry",
    "add_parser",
    "body_of",
    "entries_of",
    "format_list",
    "format_record",
    "groups_of",
    "hex_dump",
    "json_document",
    "run",
    "select",
]

BROKER_URL_VARIABLE = "MEDIATOR_BROKER_URL"
"""Where ``--broker`` falls back to, as for ``mediator run``."""
DEFAULT_TIMEOUT = 30.0
"""Seconds a read may take before the command gives up."""
DESCRIPTION_WIDTH = 60
"""Characters of the description a line of ``list`` shows."""
NO_EVENT = "-"
"""The event name of a record whose body is not an envelope."""


class _Usage(Exception):
    """A command line that cannot be carried out (exit status 2)."""


@attrs.frozen(kw_only=True)
class Entry:
    """A dead letter as the command shows it: the record with its id and
    the event name read from its body."""

    id: str
    """The envelope's message id when the body decodes, else `position`."""
    position: int
    """1 for the first record read (oldest first), 2 for the next, ..."""
    event: str
    """The envelope's message name, or ``-``."""
    record: DeadLetterRecord


def _envelope(data: bytes) -> dict[str, Any] | None:
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return decoded if isinstance(decoded, dict) else None


def entries_of(records: Sequence[DeadLetterRecord]) -> list[Entry]:
    """`records` (as the broker returned them) with their ids and event names."""
    entries = []
    for position, record in enumerate(records, start=1):
        envelope = _envelope(record.data) or {}
        message_id = envelope.get("message_id")
        name = envelope.get("message_name")
        entries.append(
            Entry(
                id=message_id if isinstance(message_id, str) and message_id else str(position),
                position=position,
                event=name if isinstance(name, str) and name else NO_EVENT,
                record=record,
            )
        )
    return entries


def select(
    entries: Sequence[Entry], *, reason: str | None = None, channel: str | None = None
) -> list[Entry]:
    """The entries of `reason` (exactly) whose channel matches the glob `channel`."""
    return [
        entry
        for entry in entries
        if (reason is None or entry.record.reason == reason)
        and (channel is None or glob_match(channel, entry.record.channel))
    ]


def groups_of(entries: Sequence[Entry]) -> list[tuple[str, str, int]]:
    """(reason, event name, count) of `entries`, the largest group first."""
    counts = Counter((entry.record.reason, entry.event) for entry in entries)
    return sorted(
        ((reason, event, count) for (reason, event), count in counts.items()),
        key=lambda group: (-group[2], group[0], group[1]),
    )


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: int = 0) -> list[str]:
    """Columns padded to their widest cell; the first `right` columns aligned right."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = []
    for row in (header, *rows):
        cells = [
            cell.rjust(width) if i < right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def format_list(entries: Sequence[Entry]) -> str:
    """The groups with their counts, then one line per dead letter."""
    if not entries:
        return "no dead letters\n"
    groups = groups_of(entries)
    noun = "dead letter" if len(entries) == 1 else "dead letters"
    lines = [f"{len(entries)} {noun} in {len(groups)} {'group' if len(groups) == 1 else 'groups'}"]
    lines.append("")
    lines += _table(
        ("COUNT", "REASON", "EVENT"),
        [(str(count), reason, event) for reason, event, count in groups],
        right=1,
    )
    lines.append("")
    lines += _table(
        ("ID", "REASON", "CHANNEL", "EVENT", "SIZE", "DESCRIPTION"),
        [
            (
                entry.id,
                entry.record.reason,
                entry.record.channel,
                entry.event,
                str(entry.record.size),
                _one_line(entry.record.description, DESCRIPTION_WIDTH),
            )
            for entry in entries
        ],
    )
    return "\n".join(lines) + "\n"


def body_of(data: bytes) -> tuple[str, str]:
    """("utf-8", the text) when `data` is UTF-8, else ("base64", its base64)."""
    try:
        return "utf-8", data.decode("utf-8")
    except UnicodeDecodeError:
        return "base64", base64.b64encode(data).decode("ascii")


def _entry_json(entry: Entry) -> dict[str, Any]:
    record = entry.record
    encoding, body = body_of(record.data)
    return {
        "id": entry.id,
        "position": entry.position,
        "reason": record.reason,
        "channel": record.channel,
        "event": None if entry.event == NO_EVENT else entry.event,
        "description": record.description,
        "delivery_count": record.delivery_count,
        "size": record.size,
        "sha256": record.sha256,
        "truncated": record.truncated,
        "body_encoding": encoding,
        "body": body,
    }


def json_document(entries: Sequence[Entry]) -> dict[str, Any]:
    """``{"groups": [...], "records": [...]}``, both lists empty when there is nothing."""
    return {
        "groups": [
            {"reason": reason, "event": None if event == NO_EVENT else event, "count": count}
            for reason, event, count in groups_of(entries)
        ],
        "records": [_entry_json(entry) for entry in entries],
    }


def hex_dump(data: bytes) -> str:
    """`data` as offset, 16 bytes in hex, and their printable ASCII, a line each."""
    lines = []
    for offset in range(0, len(data), 16):
        chunk = data[offset : offset + 16]
        hexes = " ".join(f"{byte:02x}" for byte in chunk)
        text = "".join(chr(byte) if 32 <= byte < 127 else "." for byte in chunk)
        lines.append(f"{offset:08x}  {hexes:<47}  |{text}|")
    return "\n".join(lines) + ("\n" if lines else "")


def format_record(entry: Entry) -> str:
    """One dead letter in full: its fields, its description and its body."""
    record = entry.record
    fields = [
        ("id", entry.id),
        ("position", str(entry.position)),
        ("event", entry.event),
        *(
            (name, str(value))
            for name, value in record.fields().items()
            if name not in ("data", "description")
        ),
    ]
    width = max(len(name) for name, _ in fields)
    lines = [f"{name + ':':<{width + 1}} {value}" for name, value in fields]
    shown = f"first {len(record.data)} of {record.size} bytes" if record.truncated else "whole"
    encoding, body = body_of(record.data)
    text = body if encoding == "utf-8" else hex_dump(record.data)
    lines += ["", "description:", record.description, "", f"body ({encoding}, {shown}):"]
    return "\n".join(lines) + "\n" + text + ("" if text.endswith("\n") else "\n")


# -- the command ---------------------------------------------------------------


def add_parser(commands: Any) -> None:
    """Add ``dead-letters list`` and ``dead-letters show`` to the subparsers `commands`."""
    parser = commands.add_parser(
        "dead-letters",
        help="list or show a broker's dead letters",
        description="Read the dead letters a broker keeps, without changing them "
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
        "--prefix", metavar="PREFIX", help="the channel prefix (default: the broker's, mediator)"
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
        help=f"give up after this long (default: {DEFAULT_TIMEOUT:g})",
    )
    common.add_argument(
        "--subscription",
        metavar="NAME",
        help="Azure Service Bus: the topic subscription whose dead letters to read",
    )
    common.add_argument("--json", action="store_true", help="print one JSON document")
    listing = actions.add_parser(
        "list", parents=[common], help="the dead letters by reason and event, then each"
    )
    listing.add_argument("--reason", help="only this reason (e.g. not_json, handler_failed)")
    listing.add_argument("--channel", metavar="GLOB", help="only channels matching this glob")
    show = actions.add_parser("show", parents=[common], help="one dead letter in full")
    show.add_argument("id", metavar="ID", help="its message id, or its position in the list")


def run(args: argparse.Namespace) -> int:
    """Carry out ``dead-letters`` `args`; the exit status."""
    command = f"mediator dead-letters {args.action}"
    root = logging.getLogger()
    if not root.handlers:
        # The clients' own warnings (a refused connection, a retry) would go to
        # stderr beside the one line this command writes about them.
        root.addHandler(logging.NullHandler())
    try:
        broker = _broker(args)
        records = asyncio.run(_read(broker, args.limit, args.timeout, args.broker))
    except _Usage as exc:
        sys.stderr.write(f"{command}: {exc}\n")
        return USAGE
    except Exception as exc:  # one line an operator can act on, never a traceback
        text = _scrub(str(exc).splitlines()[0] if str(exc) else "", args.broker)
        sys.stderr.write(f"{command}: {type(exc).__name__}: {text}\n")
        return FAILED
    entries = entries_of(records)
    if args.action == "list":
        entries = select(entries, reason=args.reason, channel=args.channel)
        if args.json:
            sys.stdout.write(
                orjson.dumps(json_document(entries), option=orjson.OPT_INDENT_2).decode()
            )
            sys.stdout.write("\n")
        else:
            sys.stdout.write(format_list(entries))
        return STOPPED
    found = [entry for entry in entries if args.id in (entry.id, str(entry.position))]
    if not found:
        sys.stderr.write(
            f"{command}: no dead letter with id or position {args.id!r} "
            f"among the {len(entries)} read; see mediator dead-letters list\n"
        )
        return FAILED
    if args.json:
        document = [_entry_json(entry) for entry in found]
        sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write("\n".join(format_record(entry) for entry in found))
    return STOPPED


def _scrub(text: str, url: str) -> str:
    """`text` with the URL redacted and its password masked wherever it occurs."""
    from urllib.parse import unquote, urlsplit

    import brokers

    text = text.replace(url, brokers.redact(url))
    try:
        password = urlsplit(url).password
    except ValueError:
        return text
    for secret in {password, unquote(password or "")} - {None, ""}:
        assert secret is not None
        text = text.replace(secret, "***")
    return text


def _broker(args: argparse.Namespace) -> Any:
    import brokers

    if not args.broker:
        raise _Usage(f"no broker: pass --broker URL or set {BROKER_URL_VARIABLE}")
    if args.limit is not None and args.limit < 1:
        raise _Usage(f"--limit {args.limit}: must be 1 or more")
    if not args.timeout > 0:
        raise _Usage(f"--timeout {args.timeout}: must be more than 0 seconds")
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


async def _read(broker: Any, limit: int | None, timeout: float, url: str) -> list[DeadLetterRecord]:
    import brokers

    try:
        async with asyncio.timeout(timeout):
            records: list[DeadLetterRecord] = await broker.dead_letters(limit=limit)
            return records
    except TimeoutError:
        raise TimeoutError(
            f"no answer from {brokers.redact(url)} within {timeout:g} s (--timeout)"
        ) from None
    finally:
        try:
            async with asyncio.timeout(timeout):
                await broker.stop()
        except Exception:  # the read's own error is the one to report
            pass
