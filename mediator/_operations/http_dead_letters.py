"""The health server's dead letters: the ``GET /dead-letters`` document, the
status page's view of them, and the replay and purge behind ``POST
/dead-letters/replay`` and ``/purge`` (docs/status-page.md)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from mediator._broker import DeadLetterQueue, DeadLetterStore
from mediator._dead_letters import DeadLetterRecord
from mediator._limits import quote
from mediator._operations.dead_letters import Entry, entries_of, groups_of, json_document, select
from mediator._operations.http_exchange import HttpError
from mediator._operations.status_page import DeadLetterView

__all__ = [
    "BROKER_TIMEOUT",
    "MAX_LIMIT",
    "PAGE_LIMIT",
    "act",
    "field",
    "listing",
    "selection",
]

logger = logging.getLogger("mediator.health")

PAGE_LIMIT = 50
"""Dead letters a page (and ``GET /dead-letters``) lists unless ``limit=`` says otherwise."""
MAX_LIMIT = 1000
"""The most ``limit=`` may ask for."""
BROKER_TIMEOUT = 30.0
"""Seconds a read, replay or purge at the broker may take."""

Fields = dict[str, list[str]]


def field(fields: Fields, name: str) -> str | None:
    """The first value of `name` in query or form `fields`."""
    values = fields.get(name)
    return values[0] if values else None


def _store(broker: object, service_name: str) -> DeadLetterStore:
    if broker is None:
        raise HttpError(404, f"service {service_name} has no broker, so no dead letters")
    if not isinstance(broker, DeadLetterStore):
        raise HttpError(
            404, f"this service's broker ({type(broker).__name__}) keeps no dead letters"
        )
    return broker


async def _entries(store: DeadLetterStore) -> list[Entry]:
    try:
        async with asyncio.timeout(BROKER_TIMEOUT):
            return entries_of(await store.dead_letters())
    except Exception as exc:
        logger.warning("health server: reading the dead letters failed: %r", exc)
        raise HttpError(502, f"could not read the dead letters: {_describe(exc)}") from exc


async def selection(
    broker: object, service_name: str, query: Fields
) -> tuple[list[Entry], DeadLetterView]:
    """The dead letters that pass the query's ``reason``, ``event`` and ``channel``, and
    the view of its ``offset`` and ``limit``; `HttpError` when there are none
    to read or the read failed."""
    reason, channel = field(query, "reason") or None, field(query, "channel") or None
    event = field(query, "event") or None
    offset = _number(query, "offset", 0, None)
    limit = _number(query, "limit", PAGE_LIMIT, MAX_LIMIT)
    store = _store(broker, service_name)
    selected = select(await _entries(store), reason=reason, channel=channel, event=event)
    actions = isinstance(store, DeadLetterQueue)
    return selected, DeadLetterView(
        entries=selected[offset : offset + limit],
        groups=groups_of(selected),
        replayable_groups=frozenset(
            (entry.record.reason, entry.event) for entry in selected if entry.record.replayable
        ),
        total=len(selected),
        offset=offset,
        limit=limit,
        actions=actions,
        actions_note=""
        if actions
        else f"{type(store).__name__} cannot replay or purge its dead letters from here",
        reason=reason,
        event=event,
        channel=channel,
    )


def listing(selected: Sequence[Entry], view: DeadLetterView) -> dict[str, Any]:
    """``GET /dead-letters``: `json_document`'s groups of every selected dead
    letter and records of the page's, with the paging and whether each can
    be replayed."""
    document: dict[str, Any] = {
        "total": view.total,
        "offset": view.offset,
        "limit": view.limit,
        "groups": json_document(selected)["groups"],
        "records": json_document(view.entries)["records"],
    }
    for item, entry in zip(document["records"], view.entries, strict=True):
        item.setdefault("replayable", entry.record.replayable)
    return document


async def act(broker: object, service_name: str, form: Fields, *, replay: bool) -> dict[str, Any]:
    """Replay or purge the dead letters `form` names; what was done, with a
    ``message`` for people."""
    store = _store(broker, service_name)
    if not isinstance(store, DeadLetterQueue):
        raise HttpError(404, f"{type(store).__name__} cannot replay or purge its dead letters")
    if not replay and field(form, "confirm") != "yes":
        raise HttpError(400, "purging deletes dead letters for good: send confirm=yes")
    chosen, absent = _choose(await _entries(store), form)
    summary = await (_replay(store, chosen) if replay else _purge(store, chosen))
    summary["absent"] += absent
    summary["message"] = _message(summary)
    logger.info("health server: %s", summary["message"])
    return summary


def _choose(entries: Sequence[Entry], form: Fields) -> tuple[list[DeadLetterRecord], int]:
    """The records `form` names (``ids``, or ``reason`` with an optional
    ``event`` and ``channel``), and how many named ids are not there."""
    ids = {value for value in form.get("ids", ()) if value}
    if ids:
        chosen = [entry for entry in entries if entry.id in ids]
        return [entry.record for entry in chosen], len(ids - {entry.id for entry in chosen})
    reason = field(form, "reason")
    if not reason:
        raise HttpError(
            400,
            "name the dead letters: ids=<id> (repeated), or reason=<reason> "
            "with event=<event name, - for none> for a group",
        )
    channel = field(form, "channel") or None
    selected = select(entries, reason=reason, event=field(form, "event"), channel=channel)
    return [entry.record for entry in selected], 0


async def _replay(store: DeadLetterQueue, records: Sequence[DeadLetterRecord]) -> dict[str, Any]:
    replayable = [record for record in records if record.replayable]
    summary: dict[str, Any] = {"replayed": 0, "not_replayable": len(records) - len(replayable)}
    try:
        async with asyncio.timeout(BROKER_TIMEOUT):
            async for _ in store.replay_dead_letters(replayable):
                summary["replayed"] += 1
    except Exception as exc:
        logger.warning("health server: replaying dead letters failed: %r", exc)
        summary.update(error=_describe(exc), absent=0)
    else:
        summary["absent"] = len(replayable) - summary["replayed"]
    return summary


async def _purge(store: DeadLetterQueue, records: Sequence[DeadLetterRecord]) -> dict[str, Any]:
    try:
        async with asyncio.timeout(BROKER_TIMEOUT):
            purged = await store.purge_dead_letters(records)
    except Exception as exc:
        logger.warning("health server: purging dead letters failed: %r", exc)
        return {"purged": 0, "absent": 0, "error": _describe(exc)}
    return {"purged": purged, "absent": len(records) - purged}


def _message(summary: dict[str, Any]) -> str:
    verb = "Replayed" if "replayed" in summary else "Purged"
    parts = [f"{verb} {_count(summary.get('replayed', summary.get('purged', 0)))}."]
    if summary.get("not_replayable"):
        parts.append(
            f"{_count(summary['not_replayable'])} cannot be replayed (only the first 64 KiB of "
            "the body was kept): publish from the source again, then purge."
        )
    if summary.get("absent"):
        parts.append(f"{_count(summary['absent'])} no longer there (replayed or purged since).")
    if summary.get("error"):
        parts.append(f"{verb[:-1]} stopped: {summary['error']}; the rest are still dead letters.")
    return " ".join(parts)


def _count(number: int) -> str:
    return f"{number} dead letter{'' if number == 1 else 's'}"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {quote(str(exc).splitlines()[0] if str(exc) else '', 300)}"


def _number(fields: Fields, name: str, default: int, most: int | None) -> int:
    text = field(fields, name)
    if not text:
        return default
    if not text.isdigit() or (most is not None and not 0 < int(text) <= most):
        bound = f"from 1 to {most}" if most is not None else "0 or more"
        raise HttpError(400, f"{name}={text[:20]!r}: must be a whole number {bound}")
    return int(text)
