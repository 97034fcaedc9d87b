"""Dead letters as operators see them: with their ids, message ids and event
names, grouped by reason and event, selected, and formatted for a terminal
or as JSON (``mediator dead-letters``, the status page; docs/dead-letters.md)."""

from __future__ import annotations

import base64
import re
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import orjson

from mediator._dead_letters import DeadLetterRecord
from mediator._patterns import glob_match

__all__ = [
    "Entry",
    "body_of",
    "entries_of",
    "entry_json",
    "format_list",
    "format_record",
    "groups_of",
    "hex_dump",
    "json_document",
    "parse_age",
    "select",
]

DESCRIPTION_WIDTH = 60
"""Characters of the description a line of ``list`` shows."""
NO_EVENT = "-"
"""The event name of a record whose body is not an envelope."""


@attrs.frozen(kw_only=True)
class Entry:
    """A dead letter as the command shows it: the record with its id and
    the message id and event name read from its body."""

    id: str
    """The store's id of the record (`DeadLetterRecord.id`), else `position`."""
    position: int
    """1 for the first record read (oldest first), 2 for the next, ..."""
    message_id: str | None
    """The envelope's message id when the body decodes."""
    event: str
    """The envelope's message name, or ``-``."""
    record: DeadLetterRecord

    def named(self, name: str) -> bool:
        """Whether `name` is its id, its message id or its position."""
        return name in (self.id, self.message_id, str(self.position))


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
                id=record.id or str(position),
                position=position,
                message_id=message_id if isinstance(message_id, str) and message_id else None,
                event=name if isinstance(name, str) and name else NO_EVENT,
                record=record,
            )
        )
    return entries


def select(
    entries: Sequence[Entry],
    *,
    reason: str | None = None,
    channel: str | None = None,
    event: str | None = None,
    older_than: timedelta | None = None,
    newer_than: timedelta | None = None,
    now: datetime | None = None,
) -> list[Entry]:
    """The entries of `reason` and `event` (exactly) whose channel matches
    the glob `channel`, dead-lettered more than `older_than` or less than
    `newer_than` before `now`; a record without a time is in no age range."""
    now = now or datetime.now(UTC)

    def in_age(entry: Entry) -> bool:
        if older_than is None and newer_than is None:
            return True
        at = entry.record.dead_lettered_at
        if at is None:
            return False
        age = now - at
        return (older_than is None or age > older_than) and (newer_than is None or age < newer_than)

    return [
        entry
        for entry in entries
        if (reason is None or entry.record.reason == reason)
        and (event is None or entry.event == event)
        and (channel is None or glob_match(channel, entry.record.channel))
        and in_age(entry)
    ]


_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``7d`` (or several: ``1h30m``) as a timedelta."""
    compact = text.strip().lower()
    parts = _AGE.findall(compact)
    if not parts or "".join(number + unit for number, unit in parts) != compact:
        raise ValueError(f"{text!r} is not an age: write it as 90s, 15m, 2h, 7d or 1h30m")
    return timedelta(seconds=sum(float(number) * _UNITS[unit] for number, unit in parts))


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
        ("ID", "REASON", "CHANNEL", "EVENT", "AGE", "SIZE", "DESCRIPTION"),
        [
            (
                entry.id,
                entry.record.reason,
                entry.record.channel,
                entry.event,
                _age(entry.record.dead_lettered_at),
                str(entry.record.size),
                _one_line(entry.record.description, DESCRIPTION_WIDTH),
            )
            for entry in entries
        ],
    )
    return "\n".join(lines) + "\n"


def _age(at: datetime | None, now: datetime | None = None) -> str:
    """How long ago `at` was, in its largest unit (``45s``, ``12m``, ``3h``, ``2d``)."""
    if at is None:
        return "-"
    seconds = max(0, int(((now or datetime.now(UTC)) - at).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def body_of(data: bytes) -> tuple[str, str]:
    """("utf-8", the text) when `data` is UTF-8, else ("base64", its base64)."""
    try:
        return "utf-8", data.decode("utf-8")
    except UnicodeDecodeError:
        return "base64", base64.b64encode(data).decode("ascii")


def entry_json(entry: Entry) -> dict[str, Any]:
    record = entry.record
    encoding, body = body_of(record.data)
    return {
        "id": entry.id,
        "position": entry.position,
        "message_id": entry.message_id,
        "reason": record.reason,
        "channel": record.channel,
        "event": None if entry.event == NO_EVENT else entry.event,
        "description": record.description,
        "delivery_count": record.delivery_count,
        "replay_count": record.replay_count,
        "dead_lettered_at": at.isoformat() if (at := record.dead_lettered_at) else None,
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
        "records": [entry_json(entry) for entry in entries],
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
        ("message_id", entry.message_id or "-"),
        ("event", entry.event),
        *(
            (name, str(value) or "-")
            for name, value in record.fields().items()
            if name not in ("data", "description", "id")
        ),
    ]
    width = max(len(name) for name, _ in fields)
    lines = [f"{name + ':':<{width + 1}} {value}" for name, value in fields]
    shown = f"first {len(record.data)} of {record.size} bytes" if record.truncated else "whole"
    encoding, body = body_of(record.data)
    text = body if encoding == "utf-8" else hex_dump(record.data)
    lines += ["", "description:", record.description, "", f"body ({encoding}, {shown}):"]
    return "\n".join(lines) + "\n" + text + ("" if text.endswith("\n") else "\n")
