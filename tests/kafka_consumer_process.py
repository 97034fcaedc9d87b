"""A consumer service for tests/test_kafka.py to kill: it reads `Numbered`
events in a Kafka consumer group and appends each handled number to a file.

    python tests/kafka_consumer_process.py SETTINGS_JSON

SETTINGS_JSON holds ``bootstrap_servers``, ``prefix``, ``group``, ``path``
(the file of handled numbers, one per line), ``total`` (how many numbers
the producer sends) and ``options`` (KafkaMessageBroker keywords). It prints
``ready`` once its subscription is live, ``handled N`` after every 250
events it handled itself, and ``done`` once the file (this run's lines and
those of runs before it) holds every number below `total`.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import attrs
import orjson

from brokers.kafka import KafkaMessageBroker
from mediator import EventConsumer, EventMap, NotificationEvent


@attrs.frozen(kw_only=True)
class Numbered(NotificationEvent, partition_key="key"):
    n: int
    key: str


def say(line: str) -> None:
    print(line, flush=True)


def handled_before(path: str) -> set[int]:
    """The numbers earlier runs wrote to `path`."""
    if not os.path.exists(path):
        return set()
    with open(path, "rb") as previous:
        return {int(line) for line in previous.read().split()}


async def main(settings: dict[str, Any], seen: set[int]) -> None:
    path = str(settings["path"])
    total = int(settings["total"])
    prefix = str(settings["prefix"])
    done = asyncio.Event()
    handled = 0
    # One write per number, appended whole: a SIGKILL never leaves half a line.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    events = EventMap()

    @events.bind(Numbered)
    async def record(event: Numbered) -> None:
        nonlocal handled
        await asyncio.sleep(0.0005)  # the work of a real handler, so a kill lands mid-stream
        os.write(fd, b"%d\n" % event.n)
        seen.add(event.n)
        handled += 1
        if handled % 250 == 0:
            say(f"handled {handled}")
        if len(seen) == total:
            done.set()

    broker = KafkaMessageBroker(
        str(settings["bootstrap_servers"]), channel_prefix=prefix, **settings["options"]
    )
    consumer = EventConsumer(broker=broker, event_map=events)
    await consumer.subscribe(f"{prefix}:notification_event:*", group=str(settings["group"]))
    async with broker, consumer:
        say("ready")
        if len(seen) == total:
            done.set()
        await done.wait()
        say("done")
    os.close(fd)


if __name__ == "__main__":
    settings = orjson.loads(sys.argv[1])
    asyncio.run(main(settings, handled_before(settings["path"])))
