"""Bounds on what is kept or logged of a received message.

A message is input from outside the process: a 1,000,000-character name must
not become a 1 MB log line, and a 20 MB body must not be stored whole in a
dead-letter place, thousands of times over.
"""

from __future__ import annotations

__all__ = [
    "DEAD_LETTER_BODY_LIMIT",
    "QUOTE_LIMIT",
    "quote",
]

QUOTE_LIMIT = 1024
"""At most this many characters of anything taken from a message go into a log line."""
DEAD_LETTER_BODY_LIMIT = 64 * 1024
"""A dead letter keeps at most this many bytes of the message body."""


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """`repr(value)` (or the text itself for a str), cut to `limit` characters
    with a note of how much was left out.

    ```python
    assert quote("x" * 5000).endswith("… (4000 more characters)")
    ```
    """
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return text
    # The note's length depends on the count, which depends on the cut.
    shown = limit - len(f"… ({len(text)} more characters)")
    return f"{text[:shown]}… ({len(text) - shown} more characters)"
