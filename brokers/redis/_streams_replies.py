"""Redis Streams: what a subscription sends and reads back, without a client.

The read script (acknowledge, then ``XREADGROUP``, in one round trip) with
its arguments and its flat reply, and the parsed replies of ``XREADGROUP``,
``XAUTOCLAIM``, ``XPENDING``, ``XINFO CONSUMERS`` and ``XINFO GROUPS``, in
both the RESP2 and the RESP3 shapes redis-py hands over.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from brokers.redis._errors import code

Entries = tuple[str, list[bytes], list[bytes]]
"""One stream's entries in a read: its key, their ids and their ``data`` fields."""

# Reads without BLOCK: acknowledges the entries waiting (ARGV: group, member,
# count, then for each stream in KEYS the number of its ids and the ids), then
# returns what XREADGROUP read, flat: per stream its key, its number of
# entries, and each entry's id and data. A third of the reply elements of a
# plain XREADGROUP, whose parsing in redis-py is most of a consumer's time.
READ_SCRIPT = """
local group, member = ARGV[1], ARGV[2]
local at = 4
for k = 1, #KEYS do
  local n = tonumber(ARGV[at])
  for first = at + 1, at + n, 1000 do
    redis.call('XACK', KEYS[k], group, unpack(ARGV, first, math.min(first + 999, at + n)))
  end
  at = at + n + 1
end
local command = {'XREADGROUP', 'GROUP', group, member, 'COUNT', ARGV[3], 'STREAMS'}
for k = 1, #KEYS do command[#command + 1] = KEYS[k] end
for k = 1, #KEYS do command[#command + 1] = '>' end
local reply = redis.call(unpack(command))
local out = {}
if not reply then return out end
for _, stream in ipairs(reply) do
  local entries = stream[2]
  out[#out + 1] = stream[1]
  out[#out + 1] = #entries
  for _, entry in ipairs(entries) do
    local fields, data = entry[2] or {}, ''
    for i = 1, #fields, 2 do
      if fields[i] == 'data' then data = fields[i + 1] break end
    end
    out[#out + 1] = entry[1]
    out[#out + 1] = data
  end
end
return out
"""


def text(value: bytes | str) -> str:
    """A key or a name as Redis sent it, as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def script_args(
    group: str,
    consumer: str,
    count: int,
    keys: Sequence[str],
    acks: Mapping[str, Sequence[bytes]],
) -> list[Any]:
    """ARGV of the read script: the group, the member, the count, then per
    key of `keys`, in order, the number of its `acks` and their ids."""
    args: list[Any] = [group, consumer, count]
    for key in keys:
        ids = acks.get(key, ())
        args.append(len(ids))
        args.extend(ids)
    return args


def script_entries(flat: list[Any]) -> Iterator[Entries]:
    """The entries in the read script's flat reply, stream by stream."""
    at, end = 0, len(flat)
    while at < end:
        key, count = text(flat[at]), flat[at + 1]
        part = flat[at + 2 : at + 2 + 2 * count]
        yield key, part[0::2], part[1::2]
        at += 2 + 2 * count


def read_entries(replies: Any) -> Iterator[Entries]:
    """The entries in an ``XREADGROUP`` reply, stream by stream.

    An entry without a ``data`` field (written by another producer) reads as
    empty data: bad input, which the consumer dead-letters."""
    # RESP2 callbacks give [[key, entries]], RESP3 ones {key: [entries]}.
    pairs = replies.items() if isinstance(replies, dict) else replies or ()
    for stream, entries in pairs:
        if entries and isinstance(entries[0], list):
            entries = entries[0]
        ids = [entry_id for entry_id, _ in entries]
        data = [fields.get(b"data", b"") if fields else b"" for _, fields in entries]
        yield text(stream), ids, data


def claimed_entries(reply: Any) -> tuple[str, list[tuple[bytes, Any]]]:
    """The next cursor of an ``XAUTOCLAIM`` reply, and the entries it claimed
    that still exist (``0-0``: the pass reached the end of the pending list)."""
    # Redis 7 takes entries deleted from the stream off the pending list and
    # lists their ids third; 6.2 returns them as nil, skipped here.
    return text(reply[0]), [(entry_id, fields) for entry_id, fields in reply[1] if fields]


def delivery_counts(pending: Any) -> dict[bytes, int]:
    """How often each entry of an ``XPENDING`` range was delivered."""
    return {p["message_id"]: p["times_delivered"] for p in pending}


def idle_members(members: Any, consumer: str, limit: float) -> Iterator[tuple[str, float]]:
    """The members of an ``XINFO CONSUMERS`` reply, other than `consumer`,
    with nothing pending and idle for more than `limit` seconds, and how long."""
    for member in members:
        name = text(member["name"])
        idle = member["idle"] / 1000
        if name == consumer or member["pending"] or idle <= limit:
            continue
        yield name, idle


def group_lag(groups: Any, group: str) -> int | None:
    """The ``lag`` of `group` in an ``XINFO GROUPS`` reply: the stream's
    entries not delivered to the group yet. None when Redis does not say
    (before 7.0, or past entries deleted with ``XDEL``) or the group is not there."""
    for info in groups:
        if text(info["name"]) == group:
            lag = info.get("lag")
            return lag if isinstance(lag, int) else None
    return None


def streams_lag(replies: Sequence[Any], group: str) -> int | None:
    """The lag of `group` over streams, from one ``XINFO GROUPS`` reply (or
    its error) per stream: their sum, or None if one of them does not say."""
    total = 0
    for reply in replies:
        lag = None if isinstance(reply, Exception) else group_lag(reply, group)
        if lag is None:
            return None
        total += lag
    return total


def group_lost(error: BaseException) -> bool:
    """Whether a read failed because a stream or its group is gone."""
    name = code(error)
    return name == "NOGROUP" or (name == "UNBLOCKED" and "no longer exists" in str(error))


def refused_acks(acks: Mapping[str, list[bytes]], results: Sequence[Any]) -> dict[str, list[bytes]]:
    """The acknowledgements of `acks` (one ``XACK`` per stream, their replies
    first in `results`) that Redis refused and that must go again: not
    those refused with ``NOGROUP``, as the group is gone with what it held."""
    return {
        key: ids
        for (key, ids), result in zip(acks.items(), results, strict=False)
        if isinstance(result, Exception) and code(result) != "NOGROUP"
    }
