"""A consumer process that stops cleanly on SIGTERM or SIGINT.

Both signals call `consumer.stop()`: the consumer takes no new deliveries,
lets the one in flight finish (within `drain_timeout`), settles it, closes
its subscription, and `run()` returns. The process then exits with code 0
and no traceback.

The handler stands for work that is still going when the signal arrives: it
waits until the stop has begun, then finishes. Run it, and once it prints
"ready", press Ctrl-C (or `kill -TERM` its pid):

    python examples/graceful_shutdown.py

It prints "ready", then "SIGINT: stopping" (or SIGTERM), then
"finished report 1". No server is needed: it uses the in-memory broker.
"""

from __future__ import annotations

import asyncio
import signal

import attrs

from brokers.memory import InMemoryMessageBroker
from mediator import EventConsumer, EventEmitter, EventMap, NotificationEvent


@attrs.frozen(kw_only=True)
class ReportRequested(NotificationEvent):
    report_id: int


async def main() -> None:
    broker = InMemoryMessageBroker(channel_prefix="reports")
    events = EventMap()
    in_flight = asyncio.Event()
    stopping = asyncio.Event()

    @events.bind(ReportRequested)
    async def build_report(event: ReportRequested) -> None:
        in_flight.set()
        await stopping.wait()  # still working when the signal arrives
        print(f"finished report {event.report_id}", flush=True)

    consumer = EventConsumer(broker=broker, event_map=events, drain_timeout=10.0)
    await consumer.subscribe("reports:notification_event:*")

    stops: list[asyncio.Task[None]] = []  # keep a reference until each is done

    def on_signal(signum: signal.Signals) -> None:
        print(f"{signum.name}: stopping", flush=True)
        stopping.set()
        stops.append(asyncio.create_task(consumer.stop()))

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    await consumer.start()
    await EventEmitter(message_broker=broker).emit(ReportRequested(report_id=1))
    await in_flight.wait()
    print("ready", flush=True)

    await consumer.run()  # returns once stop() has drained the work in flight
    await asyncio.gather(*stops)
    await broker.stop()


if __name__ == "__main__":
    asyncio.run(main())
