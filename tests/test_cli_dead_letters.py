"""``mediator dead-letters list|show``, run as operators run it: a process of
its own against each transport that keeps dead letters, after the library's
own consumer dead-lettered a few poison messages; then the formatting,
grouping and filtering functions without a server, and the error lines."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest

from mediator import DeadLetter, EventConsumer, EventEmitter, EventMap, NotificationEvent
from mediator._operations.dead_letters import (
    body_of,
    entries_of,
    format_list,
    format_record,
    groups_of,
    hex_dump,
    json_document,
    parse_age,
    select,
)
from mediator._operations.exit_status import FAILED, STOPPED, USAGE
from mediator.outbox import Inbox, Outbox
from mediator.testing import wait_until
from mediator.transport import DeadLetterRecord
from tests.outbox_support import sqlite_engine
from tests.transports import FACTORIES, Transport

ROOT = Path(__file__).resolve().parent.parent
STEP = 60.0
"""Seconds one command may take before the test fails."""
TRANSPORTS = ("redis-pubsub", "redis-streams", "rabbitmq", "kafka", "azure")


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int


UNKNOWN_ID = str(uuid.uuid4())
UNKNOWN_NAME = orjson.dumps(
    {
        "message_type": "notification_event",
        "message_name": "NobodyKnowsMe",
        "message_id": UNKNOWN_ID,
        "payload": {},
    }
)


async def mediator(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``python -m mediator dead-letters ARGS``: (status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mediator",
        "dead-letters",
        *args,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(STEP):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def url_of(name: str, request: pytest.FixtureRequest, transport: Transport) -> str:
    if name in ("redis-pubsub", "redis-streams"):
        url: str = request.getfixturevalue("redis_url")
        return url if name == "redis-pubsub" else url.replace("redis://", "redis+streams://", 1)
    if name == "rabbitmq":
        from tests.rabbitmq_support import amqp_url

        return amqp_url()
    if name == "azure":
        # The loopback peer's connection string; the dead letters are the
        # "default" subscription's, where the fixture's consumer receives.
        return str(transport.peer.connection_string)  # type: ignore[attr-defined]
    server = request.getfixturevalue("kafka_server")
    # Tansu takes no idempotent producer, which a replay would otherwise use.
    return f"kafka://{server.bootstrap_servers}" + ("?idempotence=false" if server.tansu else "")


@pytest.fixture(params=TRANSPORTS)
async def dead_lettered(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Transport, str]]:
    """A transport whose broker dead-lettered four messages (two not JSON,
    one of an unknown event, one its handler failed), and its URL."""
    prefix = f"mtk-{uuid.uuid4().hex[:8]}"
    async with FACTORIES[request.param](prefix, request) as transport:

        async def failing(event: OrderPlaced) -> None:
            raise RuntimeError(f"order {event.order_id} cannot be billed")

        events = EventMap()
        events.bind(OrderPlaced, failing, policy=DeadLetter())
        consumer = EventConsumer(broker=transport.broker, event_map=events)
        channel = f"{prefix}:notification_event:OrderPlaced"
        await consumer.subscribe(channel)
        async with consumer:
            await transport.publish_raw(channel, b"{nope")
            await transport.publish_raw(channel, b"{nope again")
            await transport.publish_raw(channel, UNKNOWN_NAME)
            await EventEmitter(message_broker=transport.new_broker()).emit(OrderPlaced(order_id=7))
            await wait_until(consumer, lambda s: s.dead_lettered >= 4, timeout=30)
        yield transport, url_of(request.param, request, transport)


async def test_list_groups_filters_limits_and_shows(
    dead_lettered: tuple[Transport, str],
) -> None:
    transport, url = dead_lettered
    where = ["--broker", url, "--prefix", transport.broker.channel_prefix]
    if "sb://" in url:
        where += ["--subscription", "default"]

    status, out, err = await mediator("list", *where, "--json")
    assert (status, err) == (STOPPED, "")
    document = orjson.loads(out)
    assert document["groups"] == [
        {"reason": "not_json", "event": None, "count": 2},
        {"reason": "handler_failed", "event": "OrderPlaced", "count": 1},
        {"reason": "unknown_name", "event": "NobodyKnowsMe", "count": 1},
    ]
    records = document["records"]
    assert sorted(r["body"] for r in records if r["reason"] == "not_json") == [
        "{nope",
        "{nope again",
    ]
    [unknown] = [r for r in records if r["reason"] == "unknown_name"]
    assert unknown["message_id"] == UNKNOWN_ID
    assert unknown["id"]
    assert unknown["dead_lettered_at"]
    [failed] = [r for r in records if r["reason"] == "handler_failed"]
    assert "cannot be billed" in failed["description"]

    status, out, err = await mediator("list", *where)
    assert (status, err) == (STOPPED, "")
    lines = out.splitlines()
    assert lines[0] == "4 dead letters in 3 groups"
    assert lines[2].split() == ["COUNT", "REASON", "EVENT"]
    assert lines[3].split() == ["2", "not_json", "-"]
    assert any(line.startswith(unknown["id"]) and "NobodyKnowsMe" in line for line in lines)

    status, out, _ = await mediator("list", *where, "--reason", "not_json", "--json")
    assert status == STOPPED
    assert [g["count"] for g in orjson.loads(out)["groups"]] == [2]
    status, out, _ = await mediator("list", *where, "--channel", "*OrderPlaced", "--json")
    assert len(orjson.loads(out)["records"]) == 4
    status, out, _ = await mediator("list", *where, "--channel", "*Elsewhere*")
    assert (status, out) == (STOPPED, "no dead letters\n")

    status, out, _ = await mediator("list", *where, "--limit", "2", "--json")
    assert status == STOPPED
    assert len(orjson.loads(out)["records"]) == 2

    status, out, err = await mediator("show", *where, UNKNOWN_ID)
    assert (status, err) == (STOPPED, "")
    assert re.search(r"^reason: +unknown_name$", out, re.MULTILINE)
    assert re.search(rf"^id: +{re.escape(unknown['id'])}$", out, re.MULTILINE)
    assert "NobodyKnowsMe" in out
    position = next(str(r["position"]) for r in records if r["body"] == "{nope")
    status, out, _ = await mediator("show", *where, position)
    assert status == STOPPED
    assert out.rstrip().endswith("body (utf-8, whole):\n{nope")

    status, _, err = await mediator("show", *where, "no-such-id")
    assert status == FAILED
    assert "no dead letter with id, message id or position 'no-such-id'" in err


async def test_an_empty_store_and_the_environment_variable(redis_url: str, key_prefix: str) -> None:
    env = {"MEDIATOR_BROKER_URL": redis_url.replace("redis://", "redis+streams://", 1)}
    assert await mediator("list", "--prefix", key_prefix, env=env) == (
        STOPPED,
        "no dead letters\n",
        "",
    )
    status, out, _ = await mediator("list", "--prefix", key_prefix, "--json", env=env)
    assert status == STOPPED
    assert orjson.loads(out) == {"groups": [], "records": []}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--broker", "mqtt://x"], USAGE, "has scheme 'mqtt'"),
        (["--broker", "memory://"], USAGE, "the memory broker keeps its dead letters"),
        (
            ["--broker", "Endpoint=sb://x/;SharedAccessKey=k;EntityPath=t"],
            USAGE,
            "pass --subscription NAME",
        ),
        (
            ["--broker", "redis://localhost", "--subscription", "billing"],
            USAGE,
            "--subscription is for Azure Service Bus only",
        ),
        (["--broker", "redis://localhost?bogus=1"], USAGE, "'bogus' is not an option"),
        (["--broker", "redis://localhost", "--limit", "0"], USAGE, "--limit 0"),
        ([], USAGE, "no broker: pass --broker URL or set MEDIATOR_BROKER_URL"),
        (["--outbox", "nosuch://db"], USAGE, "--outbox 'nosuch://db': "),
        (["--outbox", "mysql+aiomysql://u:p@h/db"], USAGE, "outbox supports postgresql+asyncpg://"),
        (["--older-than", "3 weeks", "--broker", "redis://x"], USAGE, "is not an age"),
    ],
)
async def test_usage_errors_are_one_line(args: list[str], status: int, message: str) -> None:
    code, out, err = await mediator("list", *args, env={"MEDIATOR_BROKER_URL": ""})
    assert (code, out) == (status, "")
    assert len(err.splitlines()) == 1
    assert err.startswith("mediator dead-letters list: ")
    assert message in err
    assert "SharedAccessKey=k" not in err


@pytest.mark.parametrize("scheme", ["redis", "redis+streams", "amqp"])
async def test_an_unreachable_broker_is_one_line_and_masks_the_password(scheme: str) -> None:
    url = f"{scheme}://guest:s3cret@127.0.0.1:{_closed_port()}/"
    code, out, err = await mediator("list", "--broker", url, "--timeout", "20")
    assert (code, out) == (FAILED, "")
    assert len(err.splitlines()) == 1, err
    assert err.startswith("mediator dead-letters list: ")
    assert "s3cret" not in err


# -- without a server ----------------------------------------------------------


def record(data: bytes, reason: str = "not_json", channel: str = "shop:x:A") -> DeadLetterRecord:
    return DeadLetterRecord.of(channel, data, reason, f"{reason}: the detail\nsecond line")


RECORDS = [
    record(b"{nope"),
    record(UNKNOWN_NAME, "unknown_name", "shop:notification_event:B"),
    record(b"\xff\x00binary"),
    record(orjson.dumps({"message_id": "m-1", "message_name": "OrderPlaced"}), "handler_failed"),
]


def test_ids_are_the_stores_and_message_ids_are_read_from_the_body() -> None:
    entries = entries_of(RECORDS)
    assert [(e.id, e.message_id, e.event) for e in entries] == [
        (RECORDS[0].id, None, "-"),
        (RECORDS[1].id, UNKNOWN_ID, "NobodyKnowsMe"),
        (RECORDS[2].id, None, "-"),
        (RECORDS[3].id, "m-1", "OrderPlaced"),
    ]
    unnamed = attrs.evolve(RECORDS[0], id="")
    assert entries_of([unnamed])[0].id == "1"  # a store without ids: the position
    assert entries_of(RECORDS)[1].named(UNKNOWN_ID)
    assert entries_of(RECORDS)[1].named("2")


def test_select_by_event_and_age() -> None:
    now = datetime.now(UTC)
    aged = [
        attrs.evolve(r, dead_lettered_at=now - timedelta(hours=hours))
        for r, hours in zip(RECORDS, (0, 1, 3, 48), strict=True)
    ]
    entries = entries_of(aged)
    assert [e.position for e in select(entries, event="OrderPlaced")] == [4]
    assert [e.position for e in select(entries, older_than=parse_age("2h"), now=now)] == [3, 4]
    assert [e.position for e in select(entries, newer_than=parse_age("90m"), now=now)] == [1, 2]
    undated = entries_of([attrs.evolve(RECORDS[0], dead_lettered_at=None)])
    assert select(undated, older_than=timedelta(0)) == []
    assert parse_age("1h30m") == timedelta(minutes=90)
    assert parse_age("7d") == timedelta(days=7)
    for bad in ("", "10", "h", "5 weeks", "1h 2x"):
        with pytest.raises(ValueError, match="not an age"):
            parse_age(bad)


def test_groups_are_counted_largest_first() -> None:
    assert groups_of(entries_of(RECORDS)) == [
        ("not_json", "-", 2),
        ("handler_failed", "OrderPlaced", 1),
        ("unknown_name", "NobodyKnowsMe", 1),
    ]


def test_select_by_reason_and_channel_glob() -> None:
    entries = entries_of(RECORDS)
    assert [e.position for e in select(entries, reason="not_json")] == [1, 3]
    assert [e.position for e in select(entries, channel="shop:notification_event:*")] == [2]
    assert [e.position for e in select(entries, reason="not_json", channel="*:B")] == []


def test_the_list_shows_groups_then_one_line_each() -> None:
    undated = [attrs.evolve(r, dead_lettered_at=None) for r in RECORDS]
    text = format_list(entries_of(undated))
    lines = text.splitlines()
    assert lines[0] == "4 dead letters in 3 groups"
    assert lines[3].split() == ["2", "not_json", "-"]
    assert lines[7].split()[:6] == ["ID", "REASON", "CHANNEL", "EVENT", "AGE", "SIZE"]
    assert lines[8].split()[:6] == [RECORDS[0].id, "not_json", "shop:x:A", "-", "-", "5"]
    assert "not_json: the detail second line" in lines[8]  # one line
    assert format_list([]) == "no dead letters\n"


def test_long_descriptions_are_shortened_in_the_list() -> None:
    long = DeadLetterRecord.of("c", b"x", "rejected", "word " * 100)
    line = format_list(entries_of([long])).splitlines()[-1]
    assert line.endswith("...")
    assert len(line.split("  rejected", 1)[1]) < 100


def test_json_bodies_are_text_or_base64() -> None:
    document = json_document(entries_of(RECORDS))
    assert document["groups"][0] == {"reason": "not_json", "event": None, "count": 2}
    bodies = [(r["body_encoding"], r["body"]) for r in document["records"]]
    assert bodies[0] == ("utf-8", "{nope")
    assert bodies[2] == ("base64", "/wBiaW5hcnk=")
    assert json_document([]) == {"groups": [], "records": []}
    assert body_of(b"\xe2\x82\xac") == ("utf-8", "\u20ac")


def test_show_prints_the_fields_and_the_body() -> None:
    text_entry, _, binary_entry, _ = entries_of(RECORDS)
    shown = format_record(text_entry)
    assert re.search(r"^reason: +not_json$", shown, re.MULTILINE)
    assert "sha256:" in shown
    assert "not_json: the detail\nsecond line" in shown
    assert shown.endswith("body (utf-8, whole):\n{nope\n")
    assert format_record(binary_entry).endswith(hex_dump(b"\xff\x00binary"))
    assert hex_dump(b"\xff\x00binary") == (
        "00000000  ff 00 62 69 6e 61 72 79" + " " * 24 + "  |..binary|\n"
    )


def test_a_truncated_body_says_so() -> None:
    big: Any = DeadLetterRecord.of("c", b"a" * 70_000, "too_large", "too large")
    shown = format_record(entries_of([big])[0])
    assert f"body (utf-8, first {len(big.data)} of 70000 bytes):" in shown
    assert json_document(entries_of([big]))["records"][0]["truncated"] is True


POISON = 50
"""How many messages the replay test dead-letters, then replays."""


async def replay_until_killed(*args: str, after: int) -> int:
    """Run ``mediator dead-letters replay ARGS`` and SIGKILL it once it said
    it replayed `after` dead letters (or let it end first); how many it said."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mediator",
        "dead-letters",
        "replay",
        *args,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    said = 0
    try:
        async with asyncio.timeout(STEP):
            async for line in process.stdout:
                said += line.startswith(b"replayed ")
                if said >= after:
                    process.kill()
                    break
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
    return said


@pytest.mark.parametrize("name", TRANSPORTS)
async def test_replay_after_the_fix_handles_every_poison_message_once_even_when_killed(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    prefix = f"mtk-{uuid.uuid4().hex[:8]}"
    # The inbox drops the one copy a killed replay may publish twice.
    outbox = Outbox(sqlite_engine(f"sqlite+aiosqlite:///{tmp_path / 'inbox.db'}"))
    await outbox.create_tables()
    async with FACTORIES[name](prefix, request) as transport:
        fixed = False
        handled: list[int] = []
        all_handled = asyncio.Event()

        async def billing(event: OrderPlaced) -> None:
            if not fixed:
                raise RuntimeError(f"order {event.order_id}: the tariff table is missing")
            handled.append(event.order_id)
            if len(set(handled)) == POISON:
                all_handled.set()

        events = EventMap()
        events.bind(OrderPlaced, billing, policy=DeadLetter())
        consumer = EventConsumer(
            broker=transport.broker,
            event_map=events,
            inbox=Inbox(outbox, consumer="billing"),
        )
        channel = f"{prefix}:notification_event:OrderPlaced"
        await consumer.subscribe(channel, group=transport.own_group("billing"))
        url = url_of(name, request, transport)
        where = ["--broker", url, "--prefix", prefix, "--timeout", "20"]
        if name == "azure":
            where += ["--subscription", "billing"]
        async with consumer:
            emitter = EventEmitter(message_broker=transport.new_broker())
            for order_id in range(POISON):
                await emitter.emit(OrderPlaced(order_id=order_id))
            await wait_until(consumer, lambda s: s.dead_lettered >= POISON, timeout=30)
            await transport.publish_raw(channel, b"{not json")
            await wait_until(consumer, lambda s: s.dead_lettered >= POISON + 1, timeout=30)

            status, out, _ = await mediator("list", *where, "--json")
            assert status == STOPPED
            assert orjson.loads(out)["groups"] == [
                {"reason": "handler_failed", "event": "OrderPlaced", "count": POISON},
                {"reason": "not_json", "event": None, "count": 1},
            ]

            status, _, err = await mediator("replay", *where)
            assert status == USAGE
            assert "pass --all" in err
            fixed = True
            # Killed half-way, then run again: every message is handled.
            await replay_until_killed(*where, "--reason", "handler_failed", after=10)
            for _ in range(5):
                if name == "azure":
                    # What a killed run had locked comes back once its locks run out.
                    transport.peer.expire_locks(dead_letters_only=True)  # type: ignore[attr-defined]
                status, out, err = await mediator("replay", *where, "--reason", "handler_failed")
                assert status == STOPPED, err
                if out.startswith("replayed 0 of 0"):
                    break
            async with asyncio.timeout(30):
                await all_handled.wait()

            status, out, _ = await mediator("list", *where, "--json")
            assert [g["reason"] for g in orjson.loads(out)["groups"]] == ["not_json"]
            status, _, err = await mediator("purge", *where, "--reason", "not_json")
            assert (status, "--yes" in err) == (USAGE, True)
            status, out, _ = await mediator("purge", *where, "--reason", "not_json", "--yes")
            assert (status, out) == (STOPPED, "purged 1 of 1\n")
            status, out, _ = await mediator("list", *where)
            assert out == "no dead letters\n"

    await outbox.engine.dispose()
    assert sorted(handled) == list(range(POISON))


def test_the_command_line_reference_names_every_command_and_option() -> None:
    import argparse

    from mediator._operations.cli import _parser

    reference = (ROOT / "docs" / "cli.md").read_text()

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    assert f"{path} {name}" in reference or f"`{name}" in reference, (
                        f"docs/cli.md does not name {path} {name}"
                    )
                    walk(sub, f"{path} {name}")
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in reference, f"docs/cli.md does not name {path} {option}"

    walk(_parser(), "mediator")


def test_every_broker_and_the_outbox_is_a_dead_letter_queue() -> None:
    from brokers.azure import AzureMessageBroker
    from brokers.kafka import KafkaMessageBroker
    from brokers.memory import InMemoryMessageBroker
    from brokers.rabbitmq import RabbitMQMessageBroker
    from brokers.redis import RedisPubSubMessageBroker, RedisStreamMessageBroker
    from mediator.outbox import Outbox
    from mediator.transport import DeadLetterQueue

    for kind in (
        InMemoryMessageBroker,
        RedisPubSubMessageBroker,
        RedisStreamMessageBroker,
        RabbitMQMessageBroker,
        KafkaMessageBroker,
        AzureMessageBroker,
        Outbox,
    ):
        assert issubclass(kind, DeadLetterQueue), kind
