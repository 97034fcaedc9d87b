"""The health server's HTML status page (docs/status-page.md): the service's
consumers and counters, then its dead letters grouped by reason and event,
with Replay and Purge forms.

Every value shown passes through `html.escape`: a dead letter's body,
channel or description is whatever a producer sent, and is shown as text.
The page loads nothing and runs no script.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import attrs

from mediator._operations.dead_letters import NO_EVENT, Entry, body_of

__all__ = ["BODY_SHOWN", "DeadLetterView", "Section", "render_page"]

BODY_SHOWN = 2048
"""Characters of a dead letter's body the page shows (``GET /dead-letters`` has it whole)."""
_KNOWN_STATS = frozenset({"service", "running", "ready", "consumers"})
_COUNTERS = ("received", "handled", "retried", "released", "dead_lettered", "in_flight")


@attrs.frozen(kw_only=True)
class Section:
    """One part of the page: a heading and its HTML, already escaped."""

    id: str
    title: str
    html: str


@attrs.frozen(kw_only=True)
class DeadLetterView:
    """What the dead-letter section shows: a page of the dead letters that
    pass the filters, and the groups of all of them."""

    note: str | None = None
    """Why there is no list (no broker, one that keeps no dead letters, a failed read)."""
    entries: Sequence[Entry] = ()
    groups: Sequence[tuple[str, str, int]] = ()
    replayable_groups: frozenset[tuple[str, str]] = frozenset()
    """The (reason, event) groups holding a dead letter whose whole body is kept."""
    total: int = 0
    offset: int = 0
    limit: int = 0
    actions: bool = False
    """Whether the broker can replay and purge them."""
    actions_note: str = ""
    """Why it cannot, when it cannot."""
    reason: str | None = None
    event: str | None = None
    channel: str | None = None


_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 24px 40px;color:#1b1f24;background:#fff}
h1{font-size:20px;margin:18px 0 4px}h2{font-size:16px;margin:26px 0 8px;
border-bottom:1px solid #d0d7de;padding-bottom:4px}
table{border-collapse:collapse;width:100%;margin:6px 0}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}
th{background:#f6f8fa;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font:12px ui-monospace,monospace}td code{word-break:break-all}
pre{white-space:pre-wrap;word-break:break-all;
background:#f6f8fa;padding:6px;margin:4px 0;max-width:70ch}
.ok{color:#1a7f37}.bad{color:#cf222e}.muted{color:#57606a}
.notice{background:#ddf4ff;border:1px solid #54aeff;padding:8px 12px;margin:12px 0}
form{display:inline;margin:0}button{font:inherit;padding:1px 8px;cursor:pointer}
details.purge{display:inline-block;white-space:nowrap}
details.purge summary{cursor:pointer;color:#cf222e}
button.danger{background:#cf222e;color:#fff;border:1px solid #a40e26}
.filters input{width:13em}td.actions{min-width:8.5em}nav a{margin-right:12px}
"""


def e(value: object) -> str:
    """`value` as HTML text, quotes included."""
    return html.escape(str(value), quote=True)


def render_page(
    *,
    stats: Mapping[str, Any],
    dead_letters: DeadLetterView,
    csrf: str,
    notice: str | None = None,
    sections: Sequence[Section] = (),
) -> str:
    """The whole page: the service, its consumers, the optional `sections`
    (and any stats the page has no section of its own for), then the dead letters."""
    name = stats.get("service", "")
    state = (
        '<span class="ok">ready</span>'
        if stats.get("ready")
        else ('<span class="bad">not ready</span>')
    )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(name)} · status</title><style>{_STYLE}</style></head><body>",
        f"<h1>Service {e(name)}: {state}</h1>",
        '<nav class="muted"><a href="/stats">/stats</a><a href="/dead-letters">/dead-letters</a>'
        '<a href="/metrics">/metrics</a><a href="/readyz">/readyz</a></nav>',
    ]
    if notice:
        parts.append(f'<p class="notice" role="status">{e(notice)}</p>')
    every = [
        _consumers_section(stats.get("consumers", ())),
        *sections,
        *_other_sections(stats),
        _dead_letter_section(dead_letters, csrf),
    ]
    for section in every:
        parts.append(
            f'<section id="{e(section.id)}"><h2>{e(section.title)}</h2>{section.html}</section>'
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _consumers_section(consumers: Sequence[Mapping[str, Any]]) -> Section:
    if not consumers:
        return Section(id="consumers", title="Consumers", html='<p class="muted">none running</p>')
    head = "".join(f"<th>{e(name.replace('_', ' '))}</th>" for name in _COUNTERS)
    rows = []
    for consumer in consumers:
        subscriptions = "<br>".join(
            f"<code>{e(s.get('pattern'))}</code>"
            + (f" group <code>{e(s['group'])}</code>" if s.get("group") else "")
            + (f" inbox <code>{e(s['inbox'])}</code>" if s.get("inbox") else "")
            for s in consumer.get("subscriptions", ())
        )
        running = (
            '<span class="ok">running</span>'
            if consumer.get("running")
            else ('<span class="bad">stopped</span>')
        )
        counts = "".join(f'<td class="n">{e(consumer.get(name, ""))}</td>' for name in _COUNTERS)
        by_reason = ", ".join(
            f"{e(reason)} {e(count)}"
            for reason, count in sorted(consumer.get("dead_lettered_by_reason", {}).items())
        )
        rows.append(
            f"<tr><td>{subscriptions}</td><td>{running}</td>{counts}<td>{by_reason}</td></tr>"
        )
    return Section(
        id="consumers",
        title="Consumers",
        html=f"<table><tr><th>subscriptions</th><th>state</th>{head}"
        f"<th>dead letters by reason</th></tr>{''.join(rows)}</table>",
    )


def _other_sections(stats: Mapping[str, Any]) -> list[Section]:
    """A section per stats entry the page has no section of its own for (the
    outbox relay; circuits, sagas or process managers when a service reports them)."""
    return [
        Section(id=f"stats-{key}", title=key.replace("_", " ").capitalize(), html=_value(value))
        for key, value in stats.items()
        if key not in _KNOWN_STATS
    ]


def _value(value: object) -> str:
    if isinstance(value, Mapping):
        rows = "".join(f"<tr><th>{e(k)}</th><td>{_value(v)}</td></tr>" for k, v in value.items())
        return f"<table>{rows}</table>"
    if isinstance(value, list | tuple):
        return "<br>".join(_value(item) for item in value) or '<span class="muted">none</span>'
    return e(value)


def _dead_letter_section(view: DeadLetterView, csrf: str) -> Section:
    title = "Dead letters"
    if view.note is not None:
        return Section(id="dead-letters", title=title, html=f'<p class="muted">{e(view.note)}</p>')
    parts = [_filters(view)]
    if not view.actions:
        parts.append(f'<p class="muted">{e(view.actions_note)}</p>')
    if not view.groups:
        parts.append('<p class="muted">no dead letters</p>')
        return Section(id="dead-letters", title=title, html="".join(parts))
    parts.append(
        f"<p>{view.total} dead letter{'s' if view.total != 1 else ''} in "
        f"{len(view.groups)} group{'s' if len(view.groups) != 1 else ''}</p>"
    )
    rows = []
    for reason, event, count in view.groups:
        fields = [("reason", reason), ("event", event)]
        if view.channel:
            fields.append(("channel", view.channel))
        replay = (reason, event) in view.replayable_groups
        actions = _actions(csrf, fields, count, replay=replay) if view.actions else ""
        link = _link(view, reason=reason, event=event, offset=0)
        rows.append(
            f'<tr class="group"><td class="n">{count}</td><td><a href="{link}">{e(reason)}</a></td>'
            f'<td>{e(event)}</td><td class="actions">{actions}</td></tr>'
        )
    parts.append(
        '<table id="groups"><tr><th>count</th><th>reason</th><th>event</th><th></th></tr>'
        f"{''.join(rows)}</table>"
    )
    parts.append(_records(view, csrf))
    return Section(id="dead-letters", title=title, html="".join(parts))


def _filters(view: DeadLetterView) -> str:
    return (
        '<form class="filters" method="get" action="/#dead-letters">'
        f'reason <input name="reason" value="{e(view.reason or "")}"> '
        f'event <input name="event" value="{e(view.event or "")}"> '
        f'channel glob <input name="channel" value="{e(view.channel or "")}"> '
        '<button type="submit">Filter</button> <a href="/">all</a></form>'
    )


def _actions(
    csrf: str, fields: Sequence[tuple[str, str]], count: int, *, replay: bool = True
) -> str:
    hidden = "".join(
        f'<input type="hidden" name="{e(name)}" value="{e(value)}">'
        for name, value in (("csrf", csrf), *fields)
    )
    noun = "dead letter" if count == 1 else f"{count} dead letters"
    replay_form = (
        f'<form method="post" action="/dead-letters/replay">{hidden}'
        '<button type="submit" title="publish again to its channel">Replay</button></form> '
        if replay
        else '<span class="muted">body cut: cannot be replayed</span> '
    )
    return (
        f"{replay_form}"
        '<details class="purge"><summary>Purge…</summary>'
        f'<form method="post" action="/dead-letters/purge">{hidden}'
        '<input type="hidden" name="confirm" value="yes">'
        f'<button type="submit" class="danger">Delete {noun} for good</button></form></details>'
    )


def _records(view: DeadLetterView, csrf: str) -> str:
    rows = []
    for entry in view.entries:
        record = entry.record
        encoding, body = body_of(record.data)
        more = len(body) - BODY_SHOWN
        shown = body[:BODY_SHOWN] + (f"\n… ({more} more characters)" if more > 0 else "")
        cut = f", first {len(record.data)} of {record.size} bytes" if record.truncated else ""
        when = record.dead_lettered_at.isoformat(" ", "seconds") if record.dead_lettered_at else ""
        actions = (
            _actions(csrf, [("ids", entry.id)], 1, replay=record.replayable) if view.actions else ""
        )
        event = "" if entry.event == NO_EVENT else entry.event
        rows.append(
            f'<tr class="record"><td><code>{e(entry.id)}</code><br>'
            f'<span class="muted">{e(when)}</span></td><td>{e(record.reason)}</td>'
            f"<td>{e(event)}<br><code>{e(record.channel)}</code></td>"
            f'<td class="n">{e(record.delivery_count)}</td><td class="n">{e(record.replay_count)}'
            f'</td><td class="n">{e(record.size)}</td><td>{e(record.description)}'
            f"<details><summary>body ({e(encoding)}{e(cut)})</summary>"
            f'<pre class="body">{e(shown)}</pre></details></td>'
            f'<td class="actions">{actions}</td></tr>'
        )
    end = view.offset + len(view.entries)
    pages = [f"dead letters {view.offset + 1 if view.entries else 0} to {end} of {view.total}"]
    if view.offset > 0:
        back = _link(view, offset=max(0, view.offset - view.limit))
        pages.append(f'<a href="{back}">previous</a>')
    if end < view.total:
        pages.append(f'<a href="{_link(view, offset=end)}">next</a>')
    return (
        f'<p class="muted">{" · ".join(pages)}</p>'
        '<table id="records"><tr><th>id, when</th><th>reason</th><th>event, channel</th>'
        "<th>deliveries</th><th>replays</th><th>bytes</th><th>description, body</th><th></th></tr>"
        f"{''.join(rows)}</table>"
    )


def _link(view: DeadLetterView, **changes: object) -> str:
    query: dict[str, object] = {
        "reason": view.reason,
        "event": view.event,
        "channel": view.channel,
        "offset": view.offset,
        "limit": view.limit,
        **changes,
    }
    kept = {name: value for name, value in query.items() if value not in (None, "")}
    return e(f"/?{urlencode(kept)}#dead-letters")
