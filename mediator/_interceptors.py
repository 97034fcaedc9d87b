"""Interceptors: code around each send, each publish, each outbox relay's
publish and each delivery, reading and setting envelope headers (a tenant,
a trace) on both sides."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Any

import attrs

from mediator._message import Message

__all__ = ["Consuming", "Interceptor", "Publishing", "intercept_send"]

_NOTHING: AbstractContextManager[None] = nullcontext()


@attrs.define(kw_only=True)
class Publishing:
    """One batch about to be published, as `Interceptor.publishing` sees it."""

    messages: Sequence[Message]
    """The envelopes, in order; replace them to change headers
    (``attrs.evolve(message, headers={**message.headers, "tenant": t})``)."""
    broker: Any
    """The broker they go to (its `channel_prefix` names their logical channels)."""


@attrs.define(kw_only=True)
class Consuming:
    """One decoded delivery about to be handled, as `Interceptor.consuming` sees it."""

    message: Message
    """The envelope; read its headers."""
    channel: str
    """The logical channel it came from."""
    group: str | None
    """The consumer group of the subscription that received it, or None."""
    broker: Any
    """The broker it came from."""
    delivery_count: int
    """1 on the first delivery, more on redeliveries (where the transport counts)."""
    outcome: str | None = None
    """Set before the interceptor's block ends: "handled", "released" or
    "dead_lettered" (None when the block ends with an exception)."""
    reason: str | None = None
    """Why it was released or dead-lettered; None when handled."""


class Interceptor:
    """Code around each send, each published batch, each batch an outbox
    relay publishes and each consumed delivery.

    Override what you need; each method returns a context manager, entered
    before the work and left after it (also when it fails), in the task that
    does the work, so a `ContextVar` set on entry is seen by the code inside.

    ```python
    tenant: ContextVar[str | None] = ContextVar("tenant", default=None)

    class TenantHeader(Interceptor):
        @contextmanager
        def publishing(self, publishing: Publishing) -> Iterator[None]:
            publishing.messages = [
                attrs.evolve(m, headers={**m.headers, "tenant": tenant.get() or ""})
                for m in publishing.messages
            ]
            yield

        @contextmanager
        def consuming(self, consuming: Consuming) -> Iterator[None]:
            token = tenant.set(consuming.message.headers.get("tenant"))
            try:
                yield              # the handlers run here, seeing the tenant
            finally:
                tenant.reset(token)
    ```

    Pass interceptors to `Service(interceptors=...)`, which gives them to its
    mediator, emitter and consumers (or to each of those yourself). The first
    one is the outermost. `mediator.otel.OpenTelemetry` is one.
    """

    def sending(self, request: object) -> AbstractContextManager[None]:
        """Around one `Mediator.send`: the handler and the events it raised,
        published ones included."""
        return _NOTHING

    def publishing(self, publishing: Publishing) -> AbstractContextManager[None]:
        """Around the publish of one batch; may replace `publishing.messages`
        before it yields."""
        return _NOTHING

    def relaying(self, publishing: Publishing) -> AbstractContextManager[None]:
        """Around an `OutboxRelay`'s publish of one batch of outbox rows to
        `publishing.broker`, the real broker (the write of those rows to the
        outbox went through `publishing`, in the send). The envelopes carry
        the headers written with the rows (the send's trace context, a
        tenant): read them, and leave them as they are, so that consumers
        see what the send wrote."""
        return _NOTHING

    def consuming(self, consuming: Consuming) -> AbstractContextManager[None]:
        """Around the handling and settling of one decoded delivery."""
        return _NOTHING


def overrides(interceptors: Sequence[Interceptor], method: str) -> tuple[Interceptor, ...]:
    """The interceptors that do something in `method`, so the rest cost nothing."""
    base = getattr(Interceptor, method)
    return tuple(i for i in interceptors if getattr(type(i), method, base) is not base)


def intercept_send(
    interceptors: Sequence[Interceptor], run: Callable[[Any], Coroutine[Any, Any, Any]]
) -> Callable[[Any], Coroutine[Any, Any, Any]]:
    """`run` (one request type's compiled send) inside every interceptor's `sending`."""
    active = overrides(interceptors, "sending")
    if not active:
        return run
    if len(active) == 1:
        # The common case (tracing alone) without an ExitStack per send.
        sending = active[0].sending

        async def intercepted_once(request: Any) -> Any:
            with sending(request):
                return await run(request)

        return intercepted_once

    async def intercepted(request: Any) -> Any:
        with ExitStack() as stack:
            for interceptor in active:
                stack.enter_context(interceptor.sending(request))
            return await run(request)

    return intercepted


async def intercept_publish(
    interceptors: Sequence[Interceptor],
    publishing: Publishing,
    publish: Callable[[Sequence[Message]], Awaitable[None]],
    method: str = "publishing",
) -> None:
    """`publish` the batch inside every interceptor's `publishing` (or
    `relaying`, as `method` says)."""
    with ExitStack() as stack:
        for interceptor in interceptors:
            stack.enter_context(getattr(interceptor, method)(publishing))
        await publish(publishing.messages)


def consuming_scope(interceptors: Sequence[Interceptor], consuming: Consuming) -> ExitStack:
    """Every interceptor's `consuming`, entered in order, as one context manager."""
    stack = ExitStack()
    try:
        for interceptor in interceptors:
            stack.enter_context(interceptor.consuming(consuming))
    except BaseException:
        stack.close()
        raise
    return stack
