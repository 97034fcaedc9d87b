"""Services the CLI tests run to see how ``mediator run`` starts, stops and
supervises, on the memory broker (no server needed). Each says what it
does on stdout, one line at a time, so a test in another process can wait
for it:

- ``plain``: subscribes and does nothing else; it prints ``started plain``
  once started.
- ``slow_start``: its start-up hook prints ``waiting in start-up`` and then
  waits for ever; cancelled, it prints ``start-up cancelled``. Its broker
  prints ``broker stopped`` when stopped, so a test sees what had started
  was stopped.
- ``failing_start``: its start-up hook raises, in every worker or, when
  ``CLI_APP_FAILING_WORKER`` is set, only in the worker with that number
  (``MEDIATOR_WORKER``); the others run as ``plain`` does.
- ``stuck``: once started it publishes one ``Stuck`` event to itself, whose
  handler prints ``handling stuck`` and then never ends: a stop can only
  cancel it.
- ``ends_by_itself``: stops itself as soon as it has started.
"""

from __future__ import annotations

import asyncio
import os
import sys

import attrs

from brokers.memory import InMemoryMessageBroker
from mediator import EventMap, NotificationEvent, Service, ServiceStarted

PREFIX = "cli-lifecycle"


def say(line: str) -> None:
    # One write per line: the workers of one command share its stdout.
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()


class TellingBroker(InMemoryMessageBroker):
    """The memory broker, saying when it is stopped."""

    async def stop(self) -> None:
        await super().stop()
        say("broker stopped")


def _service(name: str) -> Service:
    events = EventMap()
    service = Service(
        TellingBroker(channel_prefix=PREFIX), name=name, event_map=events, drain_timeout=5.0
    )
    service.subscribe("{prefix}:notification_event:*", group=name)

    @events.bind(ServiceStarted)
    async def started(event: ServiceStarted) -> None:
        say(f"started {event.service}")

    return service


plain = _service("plain")

slow_start = _service("slow_start")


@slow_start.on_startup
async def wait_for_ever() -> None:
    say("waiting in start-up")
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        say("start-up cancelled")
        raise


failing_start = _service("failing_start")


@failing_start.on_startup
async def fail() -> None:
    only = os.environ.get("CLI_APP_FAILING_WORKER")
    if only is None or only == os.environ.get("MEDIATOR_WORKER"):
        raise RuntimeError("the start-up hook failed on purpose")


@attrs.frozen(kw_only=True)
class Stuck(NotificationEvent):
    pass


stuck = _service("stuck")


@stuck.event_map.bind(ServiceStarted)
async def publish_stuck(event: ServiceStarted) -> None:
    await stuck.event_emitter.emit(Stuck())


@stuck.event_map.bind(Stuck)
async def never_ends(event: Stuck) -> None:
    say("handling stuck")
    await asyncio.Event().wait()


ends_by_itself = _service("ends_by_itself")
_stopping: list[asyncio.Task[None]] = []


@ends_by_itself.event_map.bind(ServiceStarted)
async def stop_soon(event: ServiceStarted) -> None:
    # Not from inside the handler, which the stop would wait for: once the start is over.
    _stopping.append(asyncio.create_task(ends_by_itself.stop()))
