"""`DeadLetterRecord`: one dead letter, the same shape on every broker."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import attrs

from mediator._limits import DEAD_LETTER_BODY_LIMIT, quote

__all__ = ["DeadLetterRecord"]


@attrs.frozen(kw_only=True)
class DeadLetterRecord:
    """One dead-lettered message (`broker.dead_letters()` returns them oldest
    first): at most the first 64 KiB of the body, with the size and SHA-256
    of the whole."""

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

    @property
    def truncated(self) -> bool:
        """Whether `data` is only a prefix of the body."""
        return len(self.data) < self.size

    @classmethod
    def of(
        cls, channel: str, data: bytes, reason: str, description: str, delivery_count: int = 1
    ) -> DeadLetterRecord:
        """A record of `data`, bounded, with a bounded `description`."""
        return cls(
            channel=channel,
            reason=reason,
            description=quote(description),
            delivery_count=delivery_count,
            data=bytes(data[:DEAD_LETTER_BODY_LIMIT]),
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
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
        )
