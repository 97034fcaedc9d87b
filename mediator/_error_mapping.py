"""An SDK's exceptions as the library's `TransportError` tree, as httpx maps
its transports' errors: `map_errors` for one call site, an `ErrorTable` for a
transport's whole classification."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping

import attrs

from mediator._exceptions import MediatorError, TransportError
from mediator._limits import quote

__all__ = ["ErrorRow", "ErrorTable", "being_cancelled", "describe_error", "map_errors"]


def being_cancelled() -> bool:
    """Whether the running task has a cancellation pending: a client library
    may report a cancellation that lands mid-command as its own error."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no loop running: nothing to cancel
        return False
    return task is not None and task.cancelling() > 0


@contextlib.contextmanager
def map_errors(
    what: str,
    mapping: Mapping[type[BaseException] | tuple[type[BaseException], ...], type[TransportError]],
) -> Iterator[None]:
    """Raise an SDK's exception as the `TransportError` its first matching
    entry names, saying `what` failed; the SDK's error stays the `__cause__`.
    The library's own errors and those the mapping does not name pass through."""
    try:
        yield
    except MediatorError:
        raise
    except Exception as exc:
        for source, target in mapping.items():
            if isinstance(exc, source):
                raise target(f"{what} failed: {quote(str(exc) or repr(exc))}") from exc
        raise


Kinds = type[BaseException] | tuple[type[BaseException], ...]


@attrs.frozen
class ErrorRow:
    """SDK errors of one kind as one library error, and what to check (an
    `ErrorTable` row)."""

    kinds: Kinds
    """The SDK's exception classes."""
    error: type[TransportError]
    """The library's error they become."""
    check: str
    """What the user should check or do, one sentence."""


def _rows(rows: Iterable[ErrorRow]) -> tuple[ErrorRow, ...]:
    return tuple(rows)


@attrs.define(frozen=True)
class ErrorTable:
    """One transport's classification of its SDK's errors: rows of SDK errors,
    each the library error it becomes with what to check, and everything else
    the SDK raises as the error a call site names. A cancellation the SDK
    reports as one of its errors is raised as the cancellation."""

    sdk: tuple[type[BaseException], ...]
    """What the SDK raises, base classes included."""
    rows: tuple[ErrorRow, ...] = attrs.field(default=(), converter=_rows)
    """First match wins: list subclasses before their bases."""
    describe: Callable[[BaseException], str] | None = None
    """How an SDK error reads in a message; `describe_error` by default."""

    def row(self, error: BaseException) -> ErrorRow | None:
        """The row `error` falls in, or None."""
        for row in self.rows:
            if isinstance(error, row.kinds):
                return row
        return None

    def lift(
        self, error: BaseException, what: str, otherwise: type[TransportError]
    ) -> TransportError:
        """`error` (one of `sdk`) as the library's: the error of its row, with
        what to check, or `otherwise`; saying what failed. Raise it ``from
        error``."""
        text = (self.describe or describe_error)(error)
        row = self.row(error)
        if row is not None:
            return row.error(f"{what} failed: {text}; {row.check}")
        return otherwise(f"{what} failed: {text}")

    @contextlib.contextmanager
    def mapped(self, what: str, otherwise: type[TransportError] = TransportError) -> Iterator[None]:
        """Run the block with the SDK's errors lifted (`lift`); the library's
        own errors and anything else pass through."""
        try:
            yield
        except MediatorError:
            raise
        except self.sdk as exc:
            if being_cancelled():
                raise asyncio.CancelledError from exc
            raise self.lift(exc, what, otherwise) from exc


def describe_error(error: BaseException) -> str:
    """``Type: message`` of `error`, bounded for a log line; its repr when
    it has no message (some clients' reprs drop the server's words)."""
    text = str(error)
    return quote(f"{type(error).__name__}: {text}" if text else repr(error))
