"""Redis-style glob patterns, matched exactly as Redis's `stringmatchlen` does.

The same matcher serves event-name bindings in the `EventMap` and channel
subscriptions on every broker, so a pattern means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

__all__ = ["GlobPattern", "glob_match", "is_glob"]

_SPECIAL = frozenset(b"*?[\\")
_STAR, _QMARK, _LBRACKET, _RBRACKET, _BACKSLASH, _CARET, _DASH = b"*?[]\\^-"


def is_glob(pattern: str) -> bool:
    """True when `pattern` holds a glob metacharacter (``*``, ``?``, ``[`` or ``\\``)."""
    return any(c in _SPECIAL for c in pattern.encode())


def _match(p: bytes, pi: int, s: bytes, si: int) -> bool:
    plen, slen = len(p), len(s)
    while pi < plen and si < slen:
        c = p[pi]
        if c == _STAR:
            while pi + 1 < plen and p[pi + 1] == _STAR:
                pi += 1
            if pi + 1 == plen:
                return True
            while si < slen:
                if _match(p, pi + 1, s, si):
                    return True
                si += 1
            return False
        if c == _QMARK:
            si += 1
        elif c == _LBRACKET:
            pi += 1
            negate = pi < plen and p[pi] == _CARET
            if negate:
                pi += 1
            matched = False
            ch = s[si]
            while True:
                if pi < plen and p[pi] == _BACKSLASH and plen - pi >= 2:
                    pi += 1
                    if p[pi] == ch:
                        matched = True
                elif pi < plen and p[pi] == _RBRACKET:
                    break
                elif pi >= plen:
                    # An unterminated set ends with the pattern.
                    pi -= 1
                    break
                elif plen - pi >= 3 and p[pi + 1] == _DASH:
                    lo, hi = p[pi], p[pi + 2]
                    if lo > hi:
                        lo, hi = hi, lo
                    pi += 2
                    if lo <= ch <= hi:
                        matched = True
                elif p[pi] == ch:
                    matched = True
                pi += 1
            if negate:
                matched = not matched
            if not matched:
                return False
            si += 1
        else:
            if c == _BACKSLASH and plen - pi >= 2:
                pi += 1
            if p[pi] != s[si]:
                return False
            si += 1
        pi += 1
        if si == slen:
            while pi < plen and p[pi] == _STAR:
                pi += 1
            break
    return pi >= plen and si == slen


def glob_match(pattern: str, text: str) -> bool:
    """Match `text` against a Redis glob `pattern` (bytewise, UTF-8).

    ``*`` any run of bytes, ``?`` one byte, ``[abc]`` / ``[^a]`` / ``[a-z]``
    a set, ``\\x`` the byte x literally.

    ```python
    assert glob_match("app:*:Order*", "app:notification_event:OrderPlaced")
    ```
    """
    return _match(pattern.encode(), 0, text.encode(), 0)


class GlobPattern:
    """A compiled glob with a bounded cache of results per text.

    Channel and event names repeat, so most matches are one dict lookup.
    """

    __slots__ = ("_matches", "pattern")

    _matches: Callable[[str], bool]

    def __init__(self, pattern: str, cache_size: int = 4096) -> None:
        self.pattern = pattern
        encoded = pattern.encode()
        if not is_glob(pattern):
            self._matches = pattern.__eq__
        else:

            def matches(text: str) -> bool:
                return _match(encoded, 0, text.encode(), 0)

            self._matches = lru_cache(maxsize=cache_size)(matches)

    def matches(self, text: str) -> bool:
        """Whether `text` matches this pattern."""
        return self._matches(text)

    def __repr__(self) -> str:
        return f"GlobPattern({self.pattern!r})"
