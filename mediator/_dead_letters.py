"""`DeadLetterRecord`: one dead letter, the same shape on every broker."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from mediator._exceptions import DecodeFailure, MediatorError
from mediator._limits import DEAD_LETTER_BODY_LIMIT, quote

__all__ = [
    "REPLAY_COUNT_HEADER",
    "DeadLetterRecord",
    "TruncatedDeadLetterError",
    "replay_count_of",
    "replayable",
]

REPLAY_COUNT_HEADER = "replay_count"
"""The transport header a replayed message carries: how many times it was
replayed from a dead-letter place. It comes back in the record if the
message is dead-lettered again."""
TRUNCATED_REASON = DecodeFailure.TOO_LARGE.value
"""The one reason a dead letter keeps only a prefix of the body for."""


class TruncatedDeadLetterError(MediatorError, ValueError):
    """A dead letter that keeps only a prefix of its body cannot be replayed."""


@attrs.frozen(kw_only=True)
class DeadLetterRecord:
    """One dead-lettered message (`broker.dead_letters()` returns them oldest
    first), with the size and SHA-256 of its body. The body is kept whole,
    except for a message over the consumer's size limit (reason
    ``too_large``): of that, only the first 64 KiB."""

    channel: str
    """The logical channel (or the transport's destination) it came from."""
    reason: str
    """Why: a `DecodeFailure` value, "handler_failed", "rejected", "too_many_deliveries"."""
    description: str
    """The detail: the decode error, or the handler's exception."""
    delivery_count: int
    """Deliveries before it was dead-lettered (where the transport counts)."""
    data: bytes
    """The body, or its first 64 KiB when `size` is larger."""
    size: int
    """The size of the whole body in bytes."""
    sha256: str
    """The SHA-256 of the whole body, in hex."""
    id: str = ""
    """The store's name for it (a stream entry id, ``partition:offset``, a
    sequence number...): what `replay_dead_letters` and `purge_dead_letters`
    find it by."""
    dead_lettered_at: datetime | None = None
    """When it was dead-lettered (UTC), where the store says."""
    replay_count: int = 0
    """How many times the message had been replayed before this dead letter."""

    @property
    def truncated(self) -> bool:
        """Whether `data` is only a prefix of the body."""
        return len(self.data) < self.size

    @property
    def replayable(self) -> bool:
        """Whether the whole body is kept, so that it can be published again."""
        return not self.truncated

    def check_replayable(self) -> None:
        """Raise `TruncatedDeadLetterError` unless the whole body is kept."""
        if self.truncated:
            raise TruncatedDeadLetterError(
                f"dead letter {self.id or self.sha256[:12]} keeps only the first "
                f"{len(self.data)} of {self.size} bytes (reason {self.reason}); it cannot be "
                "replayed: publish the message again from its source, or purge it"
            )

    @classmethod
    def of(
        cls,
        channel: str,
        data: bytes,
        reason: str,
        description: str,
        delivery_count: int = 1,
        *,
        replay_count: int = 0,
    ) -> DeadLetterRecord:
        """A record of `data` dead-lettered now, with a bounded `description`;
        the body is cut to 64 KiB only for reason ``too_large``."""
        kept = data[:DEAD_LETTER_BODY_LIMIT] if reason == TRUNCATED_REASON else data
        return cls(
            channel=channel,
            reason=reason,
            description=quote(description),
            delivery_count=delivery_count,
            data=bytes(kept),
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            id=uuid.uuid4().hex,
            dead_lettered_at=datetime.now(UTC),
            replay_count=replay_count,
        )

    def fields(self) -> dict[str, str | bytes]:
        """The record as flat string fields (for a Redis stream entry, AMQP
        headers and the like); `from_fields` reads them back."""
        return {
            "channel": self.channel,
            "reason": self.reason,
            "description": self.description,
            "delivery_count": str(self.delivery_count),
            "size": str(self.size),
            "sha256": self.sha256,
            "id": self.id,
            "dead_lettered_at": self.dead_lettered_at.isoformat() if self.dead_lettered_at else "",
            REPLAY_COUNT_HEADER: str(self.replay_count),
            "data": self.data,
        }

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> DeadLetterRecord:
        """Read back what `fields` wrote (keys and values as str or bytes)."""

        def text(name: str, default: str = "") -> str:
            value = fields.get(name, fields.get(name.encode(), default))
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

        raw = fields.get("data", fields.get(b"data", b""))
        data = raw if isinstance(raw, bytes) else str(raw).encode()
        return cls(
            channel=text("channel"),
            reason=text("reason"),
            description=text("description"),
            delivery_count=int(text("delivery_count", "1") or 1),
            data=data,
            size=int(text("size", str(len(data))) or len(data)),
            sha256=text("sha256"),
            id=text("id"),
            dead_lettered_at=_timestamp(text("dead_lettered_at")),
            replay_count=_count(text(REPLAY_COUNT_HEADER, "0")),
        )


def replayable(records: Iterable[DeadLetterRecord]) -> list[DeadLetterRecord]:
    """`records` as a list, once every one of them is checked replayable
    (`TruncatedDeadLetterError` for the first that is not)."""
    checked = list(records)
    for record in checked:
        record.check_replayable()
    return checked


def replay_count_of(headers: Mapping[Any, Any] | None) -> int:
    """The `REPLAY_COUNT_HEADER` of transport headers (str or bytes keys and
    values), 0 when absent or unreadable."""
    if not headers:
        return 0
    value = headers.get(REPLAY_COUNT_HEADER, headers.get(REPLAY_COUNT_HEADER.encode()))
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return _count(str(value)) if value is not None else 0


def _timestamp(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _count(text: str) -> int:
    try:
        return max(0, int(text))
    except ValueError:
        return 0
