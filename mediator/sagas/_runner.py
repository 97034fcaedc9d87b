"""`SagaRunner`: runs sagas step by step, recording each step's start and
outcome in a store, compensating after a failed step, and resuming what a
stopped process left unfinished (docs/sagas.md)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

import attrs

from mediator._limits import quote
from mediator._policies import Retry
from mediator.sagas._model import (
    STARTED,
    UNFINISHED,
    Action,
    Saga,
    SagaConflictError,
    SagaError,
    SagaState,
    SagaStatus,
    Step,
    decode_context,
    encode_context,
)
from mediator.sagas._stores import SagaStore, now

__all__ = ["SagaResult", "SagaRunner"]

logger = logging.getLogger("mediator.sagas")

C = TypeVar("C")

Sleep = Callable[[float], Awaitable[None]]


@attrs.frozen(kw_only=True)
class SagaResult(Generic[C]):
    """Where a run of a saga ended (or stopped, for another runner to go on)."""

    id: uuid.UUID
    saga: str
    status: SagaStatus
    context: C
    error: str | None = None

    @property
    def completed(self) -> bool:
        """Whether every step's action succeeded."""
        return self.status is SagaStatus.COMPLETED


class _Failed(Exception):
    """A step's action or compensation failed on its last attempt."""

    def __init__(self, step: Step[Any], exc: BaseException) -> None:
        if isinstance(exc, TimeoutError) and not str(exc) and step.timeout is not None:
            super().__init__(f"step {step.name}: timed out after {step.timeout:g} s")
        else:
            super().__init__(f"step {step.name}: {type(exc).__name__}: {quote(str(exc), 500)}")


class SagaRunner:
    """Runs the sagas it is given over one store.

    ```python
    runner = SagaRunner(MemorySagaStore(), [BookTrip()])
    result = await runner.start(BookTrip, Booking(trip="Oslo"))
    ```

    Each step's start is recorded before its action runs, and its outcome
    (with the new context) in the same transaction as the action, so a saga
    stopped at any point is resumed by `recover()` at the step whose outcome
    is not recorded: that step runs again, no recorded step does.
    """

    def __init__(
        self,
        store: SagaStore,
        sagas: Iterable[Saga[Any]],
        *,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.store = store
        self._sagas: dict[str, Saga[Any]] = {}
        for saga in sagas:
            if saga.name in self._sagas:
                raise ValueError(
                    f"SagaRunner: two sagas are named {saga.name!r}; a run is recorded with "
                    "its saga's name, so give each saga a name of its own (name = ...)"
                )
            names = [step.name for step in saga.steps()]
            if len(set(names)) != len(names):
                raise ValueError(
                    f"SagaRunner: saga {saga.name!r} has two steps of one name ({names}); "
                    "name them: Step(..., name=...)"
                )
            self._sagas[saga.name] = saga
        self._sleep = sleep
        self.counts_here: dict[str, int] = dict.fromkeys(
            (
                "started",
                "resumed",
                "conflicts",
                *(s.value for s in SagaStatus if s not in UNFINISHED),
            ),
            0,
        )
        """What this runner did since it was made: sagas started and resumed,
        runs left to another runner, and how many ended in each status."""

    def stats(self) -> dict[str, Any]:
        """The runner's sagas and `counts_here`, for `Service.stats()`."""
        return {"sagas": sorted(self._sagas), **self.counts_here}

    def saga(self, which: type[Saga[Any]] | str) -> Saga[Any]:
        """The saga given to the runner under `which` (its class or name)."""
        name = which if isinstance(which, str) else which.name
        saga = self._sagas.get(name)
        if saga is None:
            raise SagaError(
                f"no saga {name!r} was given to this SagaRunner (it runs "
                f"{sorted(self._sagas) or 'none'}); pass it: SagaRunner(store, [..., saga])"
            )
        return saga

    # -- running -------------------------------------------------------------

    async def start(
        self, which: type[Saga[C]] | str, context: C, *, saga_id: uuid.UUID | None = None
    ) -> SagaResult[C]:
        """Record a new run of the saga with `context` and run it to its end.

        With `saga_id`, starting again a run that exists resumes it instead
        (a command handler that starts a saga can run twice without starting
        two)."""
        saga = self.saga(which)
        if not isinstance(context, saga.context_type):
            raise SagaError(
                f"saga {saga.name!r} runs over {saga.context_type.__qualname__}, not "
                f"{type(context).__qualname__}"
            )
        if saga_id is not None and await self.store.load(saga_id) is not None:
            return await self.resume(saga_id)
        at = now()
        state = SagaState(
            id=saga_id or uuid.uuid4(),
            saga=saga.name,
            status=SagaStatus.RUNNING,
            step=0,
            phase=STARTED,  # the first step's start, recorded with the saga
            context=encode_context(context),
            version=0,
            created_at=at,
            updated_at=at,
        )
        try:
            await self.store.create(state)
        except SagaConflictError:
            return await self.resume(state.id)
        logger.info("saga %s %s started", saga.name, state.id)
        self.counts_here["started"] += 1
        return await self._run(saga, state)

    async def resume(self, saga_id: uuid.UUID) -> SagaResult[Any]:
        """Run the saga `saga_id` on from where its store says it is."""
        state = await self.store.load(saga_id)
        if state is None:
            raise SagaError(f"no saga {saga_id} is kept in {type(self.store).__name__}")
        return await self._run(self.saga(state.saga), state)

    async def recover(self) -> list[SagaResult[Any]]:
        """Resume every unfinished saga (running or compensating), oldest
        first, one at a time; what each ended as. Call it when the process
        starts (a `Service` does, for the runners it was given)."""
        results = []
        for state in await self.store.states(UNFINISHED):
            logger.info(
                "resuming saga %s %s: %s at step %d", state.saga, state.id, state.status, state.step
            )
            self.counts_here["resumed"] += 1
            results.append(await self._run(self.saga(state.saga), state))
        return results

    async def retry(self, saga_id: uuid.UUID) -> SagaResult[Any]:
        """Compensate a failed saga again, from the step it failed on."""
        state = await self._kept(saga_id, {SagaStatus.FAILED}, "retried")
        state = await self.store.save(attrs.evolve(state, status=SagaStatus.COMPENSATING))
        return await self._run(self.saga(state.saga), state)

    async def abandon(self, saga_id: uuid.UUID) -> SagaResult[Any]:
        """Give up a failed (or unfinished) saga: nothing runs it again."""
        state = await self._kept(
            saga_id, {SagaStatus.FAILED, SagaStatus.RUNNING, SagaStatus.COMPENSATING}, "abandoned"
        )
        state = await self.store.save(attrs.evolve(state, status=SagaStatus.ABANDONED))
        logger.warning("saga %s %s abandoned at step %d", state.saga, state.id, state.step)
        return self._result(self.saga(state.saga), state)

    async def _kept(self, saga_id: uuid.UUID, allowed: set[SagaStatus], doing: str) -> SagaState:
        state = await self.store.load(saga_id)
        if state is None:
            raise SagaError(f"no saga {saga_id} is kept in {type(self.store).__name__}")
        if state.status not in allowed:
            raise SagaError(
                f"saga {state.saga} {saga_id} is {state.status}; only a saga that is "
                f"{' or '.join(sorted(allowed))} can be {doing}"
            )
        return state

    # -- the steps -------------------------------------------------------------

    async def _run(self, saga: Saga[Any], state: SagaState) -> SagaResult[Any]:
        steps = saga.steps()
        was = state.status
        try:
            if state.status is SagaStatus.RUNNING:
                state = await self._forward(saga, steps, state)
            if state.status is SagaStatus.COMPENSATING:
                state = await self._backward(saga, steps, state)
        except SagaConflictError as exc:
            logger.info("saga %s %s: left to another runner (%s)", saga.name, state.id, exc)
            self.counts_here["conflicts"] += 1
            kept = await self.store.load(state.id)
            return self._result(saga, kept or state)
        if state.finished and state.status is not was:
            self.counts_here[state.status.value] += 1
        return self._result(saga, state)

    def _result(self, saga: Saga[Any], state: SagaState) -> SagaResult[Any]:
        return SagaResult(
            id=state.id,
            saga=state.saga,
            status=state.status,
            context=decode_context(saga.context_type, state.context),
            error=state.error,
        )

    async def _forward(
        self, saga: Saga[Any], steps: Sequence[Step[Any]], state: SagaState
    ) -> SagaState:
        while state.step < len(steps):
            step = steps[state.step]
            if state.phase != STARTED:
                state = await self.store.save(attrs.evolve(state, phase=STARTED))
            # The next step's start is recorded with this one's outcome.
            last = state.step + 1 == len(steps)
            after: dict[str, Any] = (
                {"phase": None, "status": SagaStatus.COMPLETED} if last else {"phase": STARTED}
            )
            try:
                state = await self._attempts(
                    saga, step.act, step, step.retry, state, +1, after, step.timeout
                )
            except _Failed as failed:
                logger.warning(
                    "saga %s %s: %s; compensating %d completed step(s)",
                    saga.name,
                    state.id,
                    failed,
                    state.step,
                )
                return await self.store.save(
                    attrs.evolve(
                        state, status=SagaStatus.COMPENSATING, phase=None, error=str(failed)
                    )
                )
        if state.status is SagaStatus.RUNNING:
            state = await self.store.save(
                attrs.evolve(state, status=SagaStatus.COMPLETED, phase=None)
            )
        logger.info("saga %s %s completed", saga.name, state.id)
        return state

    async def _backward(
        self, saga: Saga[Any], steps: Sequence[Step[Any]], state: SagaState
    ) -> SagaState:
        while state.step > 0:
            step = steps[state.step - 1]
            left = state.step - 1
            after: dict[str, Any] = (
                {"phase": STARTED} if left else {"phase": None, "status": SagaStatus.COMPENSATED}
            )
            if step.compensate is None:
                state = await self.store.save(attrs.evolve(state, step=left, **after))
                continue
            if state.phase != STARTED:
                state = await self.store.save(attrs.evolve(state, phase=STARTED))
            try:
                state = await self._attempts(
                    saga, step.compensate, step, saga.compensation_retry, state, -1, after
                )
            except _Failed as failed:
                logger.error(
                    "saga %s %s failed: the compensation of %s; retry or abandon it "
                    "(mediator sagas, docs/sagas.md)",
                    saga.name,
                    state.id,
                    failed,
                )
                return await self.store.save(
                    attrs.evolve(
                        state,
                        status=SagaStatus.FAILED,
                        error=f"{state.error}; compensation failed: {failed}",
                    )
                )
        if state.status is SagaStatus.COMPENSATING:
            state = await self.store.save(
                attrs.evolve(state, status=SagaStatus.COMPENSATED, phase=None)
            )
        logger.info("saga %s %s compensated", saga.name, state.id)
        return state

    async def _attempts(
        self,
        saga: Saga[Any],
        action: Action[Any],
        step: Step[Any],
        retry: Retry,
        state: SagaState,
        move: int,
        after: dict[str, Any],
        timeout: float | None = None,
    ) -> SagaState:
        """Run `action` until an attempt succeeds (within `timeout` seconds
        each), each in a transaction with the recording of its outcome: the
        step moved by `move`, the new context, and the fields of `after`.
        `_Failed` after the last attempt."""
        for attempt in range(1, retry.attempts + 1):
            try:
                async with self.store.transaction():
                    context = decode_context(saga.context_type, state.context)
                    async with asyncio.timeout(timeout):
                        outcome = await action(context)
                    kept = context if outcome is None else outcome
                    return await self.store.save(
                        attrs.evolve(
                            state,
                            step=state.step + move,
                            context=encode_context(kept),
                            **after,
                        )
                    )
            except SagaConflictError:
                raise
            except Exception as exc:
                if attempt == retry.attempts:
                    raise _Failed(step, exc) from exc
                logger.info(
                    "saga %s %s: step %s attempt %d failed (%r); trying again",
                    saga.name,
                    state.id,
                    step.name,
                    attempt,
                    exc,
                )
                await self._sleep(retry.backoff.delay(attempt))
        raise AssertionError("unreachable: Retry.attempts is at least 1")

    async def counts(self) -> dict[str, int]:
        """How many sagas the store keeps in each status."""
        return await self.store.counts()
