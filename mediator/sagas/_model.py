"""What a saga is: a sequence of steps over a typed context, each with an
action and an optional compensation; and the state of one run of it, as a
store keeps it (docs/sagas.md)."""

from __future__ import annotations

import datetime as dt
import enum
import typing
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Generic, TypeVar

import attrs
import msgspec
import orjson

from mediator._exceptions import MediatorError
from mediator._limits import quote
from mediator._models import fields_of, form_of, jsonable, validate_pydantic_json
from mediator._policies import Backoff, Retry

__all__ = [
    "Action",
    "Saga",
    "SagaConflictError",
    "SagaError",
    "SagaState",
    "SagaStatus",
    "Step",
    "decode_context",
    "encode_context",
    "type_argument",
]

C = TypeVar("C")

Action = Callable[[C], Awaitable[C | None]]
"""A step's action or compensation: takes the context, returns the next one
(or None to keep it as it is)."""


class SagaError(MediatorError):
    """A saga could not be run as asked: an unknown saga, a context of the
    wrong type, a saga that is not in a state the call needs."""


class SagaConflictError(SagaError):
    """Another runner changed the saga since this one loaded it (its version
    moved on): this runner leaves it to the other."""


class SagaStatus(enum.StrEnum):
    """Where a saga is. `RUNNING` and `COMPENSATING` are unfinished: a runner
    resumes them (`SagaRunner.recover`); `FAILED` waits for an operator."""

    RUNNING = "running"
    """Its steps' actions are being run, in order."""
    COMPENSATING = "compensating"
    """A step failed: the completed steps are being compensated, last first."""
    COMPLETED = "completed"
    """Every step's action succeeded."""
    COMPENSATED = "compensated"
    """A step failed and every completed step was compensated."""
    FAILED = "failed"
    """A compensation kept failing: `SagaRunner.retry` or `abandon` it."""
    ABANDONED = "abandoned"
    """An operator gave it up (`SagaRunner.abandon`); nothing runs it again."""


UNFINISHED = frozenset({SagaStatus.RUNNING, SagaStatus.COMPENSATING})
"""The statuses a runner resumes."""

STARTED = "started"
"""The phase of a step whose action (or compensation) may have run: its
outcome is not recorded yet, so a resumed saga runs it again."""


def _name_of(action: Callable[..., Any]) -> str:
    return str(getattr(action, "__name__", None) or type(action).__name__)


@attrs.frozen
class Step(Generic[C]):
    """One step: `act` moves the saga on; `compensate` undoes what `act` did
    once a later step failed (none: nothing to undo).

    Both may run again after a crash, before their outcome was recorded, so
    both must be idempotent (docs/sagas.md, "Idempotent steps"). `retry`
    calls `act` again before the saga gives up and compensates.
    """

    act: Action[C]
    compensate: Action[C] | None = attrs.field(default=None, kw_only=True)
    name: str = attrs.field(default="", kw_only=True)
    """Recorded with the saga; by default the name of `act`. Keep it stable."""
    retry: Retry = attrs.field(factory=lambda: Retry(attempts=1), kw_only=True)
    """How often `act` is tried (its `then` is not used: after the last
    attempt the saga compensates)."""
    timeout: float | None = attrs.field(default=None, kw_only=True)
    """Seconds one attempt of `act` may take: a slower one is cancelled and
    counts as failed (`TimeoutError`)."""

    def __attrs_post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", _name_of(self.act))
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"Step({self.name}, timeout={self.timeout}): must be above 0")


class Saga(Generic[C]):
    """A saga: subclass it with the context type, and list the steps.

    ```python
    import attrs

    from mediator.sagas import Saga, Step


    @attrs.define
    class Booking:
        trip: str
        hotel: str | None = None


    class BookTrip(Saga[Booking]):
        def steps(self) -> list[Step[Booking]]:
            return [Step(self.book_hotel, compensate=self.cancel_hotel)]

        async def book_hotel(self, booking: Booking) -> Booking:
            return attrs.evolve(booking, hotel=f"hotel for {booking.trip}")

        async def cancel_hotel(self, booking: Booking) -> None:
            pass
    ```

    `name` (the class name by default) is recorded with every run: keep it
    stable, as the steps' names. `compensation_retry` says how often a
    compensation is tried before the saga is marked failed.
    """

    name: ClassVar[str] = ""
    context_type: ClassVar[type[Any]]
    """The context's class: an attrs class, a dataclass or a pydantic model."""
    compensation_retry: ClassVar[Retry] = Retry(
        attempts=5, backoff=Backoff(initial=0.5, maximum=30.0)
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = cls.__name__
        argument = type_argument(cls, Saga)
        if argument is not None:
            cls.context_type = argument

    def steps(self) -> Sequence[Step[C]]:
        """The steps, in the order their actions run."""
        raise NotImplementedError(f"{type(self).__name__}.steps(): list the saga's steps")


@attrs.define(kw_only=True)
class SagaState:
    """One run of a saga as a store keeps it."""

    id: uuid.UUID
    saga: str
    """The saga's `name`."""
    status: SagaStatus
    step: int
    """Running: the index of the step whose action runs next (or may have
    run, in phase `started`). Compensating: how many completed steps are
    left to compensate (the next is ``steps[step - 1]``)."""
    phase: str | None
    """``started`` while the step's action or compensation may have run and
    its outcome is not recorded; None otherwise."""
    context: bytes
    """The context as JSON."""
    version: int
    """Grows by one with every change a store records: the optimistic lock."""
    error: str | None = None
    """Why the saga compensates, or failed."""
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def finished(self) -> bool:
        """Whether no runner resumes it (completed, compensated, failed or abandoned)."""
        return self.status not in UNFINISHED

    def summary(self) -> dict[str, Any]:
        """The state as a JSON-ready dict (without the context), for stats and the CLI."""
        return {
            "id": str(self.id),
            "saga": self.saga,
            "status": self.status.value,
            "step": self.step,
            "phase": self.phase,
            "version": self.version,
            "error": self.error,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def type_argument(cls: type[Any], generic: type[Any]) -> type[Any] | None:
    """The class `cls` gives `generic` in its bases (``Saga[Order]``: Order)."""
    for base in getattr(cls, "__orig_bases__", ()):
        if typing.get_origin(base) is generic:
            (argument,) = typing.get_args(base)
            if isinstance(argument, type):
                return argument
    return None


def encode_context(context: Any) -> bytes:
    """A context as the JSON a store keeps."""
    return orjson.dumps(fields_of(context), default=jsonable)


def decode_context(cls: type[C], data: bytes) -> C:
    """The context of class `cls` a store kept as JSON."""
    try:
        if form_of(cls) == "pydantic":
            return typing.cast(C, validate_pydantic_json(cls, data))
        return msgspec.json.decode(data, type=cls)
    except Exception as exc:
        raise SagaError(
            f"the stored context does not fit {cls.__qualname__}: {quote(str(exc), 300)}; "
            "a context class changed in a way its stored runs cannot be read back"
        ) from exc
