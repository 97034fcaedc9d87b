"""Redis-style glob patterns, matched exactly as Redis's `stringmatchlen` does.

Matching is bytewise on UTF-8. One platform-dependent corner is not
reproduced: Redis compares range bounds as C `char`, signed on x86-64, so a
range with a non-ASCII bound (``[a-é]``) differs there; here bytes are
unsigned, as Redis on aarch64 does.

The same matcher serves event-name bindings in the `EventMap` and channel
subscriptions on every broker, so a pattern means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import lru_cache

from mediator._limits import quote

__all__ = ["GlobPattern", "glob_after_prefix", "glob_characters", "glob_match", "is_glob"]

_SPECIAL = frozenset(b"*?[\\")
_STAR, _QMARK, _LBRACKET, _RBRACKET, _BACKSLASH, _CARET, _DASH = b"*?[]\\^-"


def is_glob(pattern: str) -> bool:
    """True when `pattern` holds a glob metacharacter (``*``, ``?``, ``[`` or ``\\``)."""
    return any(c in _SPECIAL for c in pattern.encode())


# A compiled pattern is a tuple of steps; each step but STAR matches one byte.
STAR = None
Step = frozenset[int] | tuple[bool, frozenset[int]] | None
"""None: ``*``; a frozenset: the bytes one position accepts; (True, set): any byte but those."""

_ANY: frozenset[int] = frozenset(range(256))
MAX_STARS = 1000
"""Redis gives up (no match) past 1000 nested ``*``; patterns with more never match here."""


def _compile(p: bytes) -> tuple[Step, ...]:
    """Parse `p` exactly as Redis's `stringmatchlen` walks it."""
    steps: list[Step] = []
    plen = len(p)
    pi = 0
    while pi < plen:
        c = p[pi]
        if c == _STAR:
            if not steps or steps[-1] is not STAR:
                steps.append(STAR)
        elif c == _QMARK:
            steps.append(_ANY)
        elif c == _LBRACKET:
            pi += 1
            negate = pi < plen and p[pi] == _CARET
            if negate:
                pi += 1
            members: set[int] = set()
            while True:
                if pi < plen and p[pi] == _BACKSLASH and plen - pi >= 2:
                    pi += 1
                    members.add(p[pi])
                elif pi < plen and p[pi] == _RBRACKET:
                    break
                elif pi >= plen:
                    # An unterminated set ends with the pattern.
                    pi -= 1
                    break
                elif plen - pi >= 3 and p[pi + 1] == _DASH:
                    lo, hi = sorted((p[pi], p[pi + 2]))
                    members.update(range(lo, hi + 1))
                    pi += 2
                else:
                    members.add(p[pi])
                pi += 1
            steps.append((True, frozenset(members)) if negate else frozenset(members))
        else:
            if c == _BACKSLASH and plen - pi >= 2:
                pi += 1
            steps.append(frozenset((p[pi],)))
        pi += 1
    return tuple(steps)


def _accepts(step: Step, byte: int) -> bool:
    if isinstance(step, tuple):
        return byte not in step[1]
    assert step is not None
    return byte in step


def _match_steps(steps: tuple[Step, ...], s: bytes) -> bool:
    """Glob matching with backtracking to the last ``*`` only: the same answers
    as Redis's recursion with its skip-longer-matches cut, in linear space."""
    if not s:
        return not steps  # Redis: an empty string matches only an empty pattern
    if sum(step is STAR for step in steps) > MAX_STARS:
        return False
    nsteps, slen = len(steps), len(s)
    ti = si = 0
    star_ti, star_si = -1, 0
    while si < slen:
        if ti < nsteps:
            step = steps[ti]
            if step is STAR:
                star_ti, star_si = ti, si
                ti += 1
                continue
            if _accepts(step, s[si]):
                ti += 1
                si += 1
                continue
        if star_ti < 0:
            return False
        ti = star_ti + 1
        star_si += 1
        si = star_si
    while ti < nsteps and steps[ti] is STAR:
        ti += 1
    return ti == nsteps


def glob_characters(pattern: str) -> Iterator[str | None]:
    """The glob's characters, unescaped; None for each ``*``, ``?`` or
    ``[...]``: what a transport reads to find the literal part of a pattern
    (the narrowest binding key or subject filter that covers it)."""
    i, end = 0, len(pattern)
    while i < end:
        char = pattern[i]
        if char == "\\" and i + 1 < end:
            i += 1
            yield pattern[i]
        elif char in "*?":
            yield None
        elif char == "[":
            # The set ends at the first unescaped "]" (or with the pattern).
            i += 1
            while i < end and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
            yield None
        else:
            yield char
        i += 1


def glob_after_prefix(pattern: str, prefix: str) -> list[str | None] | None:
    """The characters of `pattern` after the channel prefix ``{prefix}:``
    (as `glob_characters` gives them), for a transport narrowing what it
    subscribes to; None when a wildcard stands within the prefix (the
    pattern may match any channel of the prefix). ValueError when
    `pattern` can match no channel of `prefix`."""
    head = f"{prefix}:"
    chars = list(glob_characters(pattern))
    for index, expected in enumerate(head):
        if index >= len(chars) or (chars[index] is not None and chars[index] != expected):
            raise ValueError(
                f"pattern {quote(pattern, 200)} can match no channel of prefix {prefix!r} "
                f"(every channel on this broker starts with {head!r}); subscribe on a broker "
                "with the pattern's prefix, or fix the pattern"
            )
        if chars[index] is None:
            return None
    return chars[len(head) :]


def glob_match(pattern: str, text: str) -> bool:
    """Match `text` against a Redis glob `pattern` (bytewise, UTF-8).

    ``*`` any run of bytes, ``?`` one byte, ``[abc]`` / ``[^a]`` / ``[a-z]``
    a set, ``\\x`` the byte x literally.

    ```python
    assert glob_match("app:*:Order*", "app:notification_event:OrderPlaced")
    ```
    """
    return _match_steps(_compile(pattern.encode()), text.encode())


class GlobPattern:
    """A compiled glob with a bounded cache of results per text.

    Channel and event names repeat, so most matches are one dict lookup.
    """

    __slots__ = ("_matches", "pattern")

    _matches: Callable[[str], bool]

    def __init__(self, pattern: str, cache_size: int = 4096) -> None:
        self.pattern = pattern
        if not is_glob(pattern):
            self._matches = pattern.__eq__
        else:
            steps = _compile(pattern.encode())

            def matches(text: str) -> bool:
                return _match_steps(steps, text.encode())

            self._matches = lru_cache(maxsize=cache_size)(matches)

    def matches(self, text: str) -> bool:
        """Whether `text` matches this pattern."""
        return self._matches(text)

    def __repr__(self) -> str:
        return f"GlobPattern({self.pattern!r})"
