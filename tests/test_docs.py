"""Every ```python block of the docs runs as written (issue 20, item 9).

Each page of docs/*.md is one test: its python blocks run in order, in one
namespace of the page's own (a module registered in `sys.modules` while the
page runs, so a page reads as one module, `__future__` imports included),
with top-level `await` allowed, inside the test's event loop. A block that
fails names the page and the line of its fence. A snippet line
(``--8<-- "examples/x.py"``, with or without a section) runs the text the
site shows, with the included file's own line numbers; `examples/` is on
`sys.path`, as for a reader running the blocks beside the examples.

The blocks talk to real servers, found as the example scripts find them: a
page whose own blocks read ``REDIS_URL``, ``AMQP_URL``, ``KAFKA_URL`` or
``SERVICEBUS_CONNECTION_STRING`` gets the tests' Redis, RabbitMQ, Kafka, or a
loopback AMQP peer standing in for Azure Service Bus (missing servers skip
locally and fail under ``CI``, as in tests/conftest.py); ``SHOP_PREFIX`` is a
name of the page's run, which the blocks use for their keys, queues and
topics, and which the test deletes afterwards. No page needs PostgreSQL: the
outbox page runs on a SQLite file.

Only fences tagged ``python`` run; ``py``, ``text``, ``console``, ... do not.
A python block that cannot run says why on the line right before its fence::

    <!-- not run: needs an Azure Service Bus namespace -->

Such a block must still parse, and is listed in `NOT_RUN`. Whatever a page
leaves running (consumers, relays, clients, tasks) is stopped after the page,
and named on the test's output, so a page cannot disturb the next; the blocks
should close what they open, as an application's code would.
"""

from __future__ import annotations
import __future__

import ast
import asyncio
import builtins
import functools
import inspect
import operator
import os
import re
import sys
import textwrap
import time
import types
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,}|~{3,})(?P<info>.*)$")
_NOT_RUN = re.compile(r"^\s*<!--\s*not run:(?P<reason>.*?)-->\s*$")
_ANY_NOT_RUN = re.compile(r"<!--\s*not run\b")
# pymdownx.snippets, as mkdocs.yml configures it: paths from the repository's root,
# a section between `# --8<-- [start:name]` and `# --8<-- [end:name]`.
_SNIPPET = re.compile(r'^\s*--8<--\s+"(?P<path>[^":]+)(?::(?P<section>\w+))?"\s*$')
_SECTION = re.compile(r"^\s*#\s*--8<--\s*\[(?P<edge>start|end):(?P<name>\w+)\]\s*$")


def snippet(match: re.Match[str] | None, where: str) -> tuple[str, str, int]:
    """The text a snippet line includes: (source, its file, its first line there)."""
    assert match is not None
    path = ROOT / match["path"]
    lines = path.read_text().splitlines()
    section = match["section"]
    if section is None:
        start, end = 0, len(lines)
    else:
        edges = {
            (m["edge"], m["name"]): number
            for number, line in enumerate(lines)
            if (m := _SECTION.match(line))
        }
        assert ("start", section) in edges, f"{where}: no section {section!r} in {path.name}"
        start, end = edges["start", section] + 1, edges["end", section]
    # The markers of other sections are not shown.
    shown = ["" if _SECTION.match(line) else line for line in lines[start:end]]
    return textwrap.dedent("\n".join(shown)), str(path), start + 1


@attrs.frozen
class Block:
    """One fenced code block of a docs page."""

    page: str
    line: int
    """The 1-based line of the opening fence in the page."""
    language: str
    source: str
    """The block's text, dedented to its fence; a snippet line (``--8<-- "file"``)
    stands for the file, or its section, as the site shows it."""
    filename: str
    """Where `source` comes from: the page, or the file a snippet includes."""
    first_line: int
    """The line of `filename` that is the first line of `source`."""
    not_run: str | None
    """The reason of the ``<!-- not run: ... -->`` marker right before the fence."""
    marker_line: str | None
    """The line right before the fence when it looks like a not-run marker."""

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of the markdown file at `path`, in order."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, ticks = opening["indent"], opening["ticks"]
        words = opening["info"].strip().split()
        language = words[0].lstrip("{.").rstrip("}") if words else ""
        end = index + 1
        while end < len(lines):
            closing = _FENCE.match(lines[end])
            if (
                closing is not None
                and closing["ticks"][0] == ticks[0]
                and len(closing["ticks"]) >= len(ticks)
                and not closing["info"].strip()
            ):
                break
            end += 1
        else:
            raise AssertionError(f"docs/{path.name}:{index + 1}: the fence is never closed")
        body = [line.removeprefix(indent) for line in lines[index + 1 : end]]
        before = lines[index - 1] if index else ""
        marker = _NOT_RUN.match(before)
        source, filename, first_line = textwrap.dedent("\n".join(body)), str(path), index + 2
        if any(_SNIPPET.match(line) for line in body):
            where = f"docs/{path.name}:{index + 1}"
            assert len(body) == 1, f"{where}: a snippet line in a block of its own, please"
            source, filename, first_line = snippet(_SNIPPET.match(body[0]), where)
        blocks.append(
            Block(
                page=path.name,
                line=index + 1,
                language=language,
                source=source,
                filename=filename,
                first_line=first_line,
                not_run=marker["reason"].strip() if marker else None,
                marker_line=before if _ANY_NOT_RUN.search(before) else None,
            )
        )
        index = end + 1
    return blocks


PAGES = sorted(DOCS.glob("*.md"))


def python_blocks(path: Path) -> list[Block]:
    return [block for block in blocks_of(path) if block.language == "python"]


def test_every_not_run_marker_stands_right_before_a_python_block() -> None:
    markers: list[str] = []
    for path in PAGES:
        lines = path.read_text().splitlines()
        before_python = {block.line - 2 for block in python_blocks(path)}
        markers += [
            f"docs/{path.name}:{number + 1}"
            for number, line in enumerate(lines)
            if _ANY_NOT_RUN.search(line) and number not in before_python
        ]
    assert markers == [], "a not-run marker that is not right before a ```python fence"


NOT_RUN = [
    ("kafka.md", "needs the cluster's CA file and a SASL password"),
    ("nats.md", "needs the server's CA file and credentials"),
    ("migrating-from-diator.md", "imports diator, which is not installed beside mediator-toolkit"),
]
"""The python blocks that do not run: (page, the reason its marker gives), one
entry per block. Keep it short: a block that can run as written should."""


def test_the_blocks_that_do_not_run_are_these() -> None:
    not_run = [
        (block.page, block.not_run)
        for path in PAGES
        for block in python_blocks(path)
        if block.not_run is not None
    ]
    assert sorted(not_run) == sorted(NOT_RUN)


@pytest.fixture
def page_module(request: pytest.FixtureRequest) -> Iterator[types.ModuleType]:
    """A fresh module for the page's blocks, importable by name while they run
    (dataclasses, attrs and pydantic look their module up there)."""
    stem = re.sub(r"\W", "_", request.node.callspec.id)
    module = types.ModuleType(f"docs_{stem}")
    module.__dict__["__builtins__"] = builtins
    sys.modules[module.__name__] = module
    try:
        yield module
    finally:
        del sys.modules[module.__name__]


_FUTURE_FLAGS = functools.reduce(
    operator.or_, (getattr(__future__, name).compiler_flag for name in __future__.all_feature_names)
)


async def run_block(block: Block, namespace: dict[str, object], future: int = 0) -> int:
    """Run `block` in `namespace`, its line numbers those of its file, under the
    `__future__` flags `future`; the flags in force after it.

    A page reads as one module, so a `from __future__ import annotations` in one
    block (an included file's header, say) holds for the blocks after it."""
    source = "\n" * (block.first_line - 1) + block.source
    code = compile(
        source,
        block.filename,
        "exec",
        flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT | future,
        dont_inherit=True,
    )
    result = eval(code, namespace)  # the docs' own code
    if inspect.iscoroutine(result):
        await result
    return future | (code.co_flags & _FUTURE_FLAGS)


# -- the services a page talks to ---------------------------------------------
#
# A page's blocks read where a server is from the environment, as the example
# scripts do (REDIS_URL, AMQP_URL, KAFKA_URL, SERVICEBUS_CONNECTION_STRING), and
# the prefix of their keys, queues and topics from SHOP_PREFIX. The test sets
# each variable a page's own blocks name (not those of an included example,
# whose main() does not run here), and SHOP_PREFIX to a name of the page's run.

SLOW_BLOCK = 0.5
"""Seconds; a block that takes longer says so on the test's output."""

AZURE_SUBSCRIPTIONS = [("orders", "billing")]
"""What docs/azure-service-bus.md says must exist in the namespace."""


class Services:
    """Sets up the servers a page needs, and removes what the page made there."""

    def __init__(self, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
        self.request = request
        self.monkeypatch = monkeypatch
        self.prefix = f"docs-{uuid.uuid4().hex[:8]}"
        self.cleanups: list[Callable[[], Awaitable[None]]] = []
        monkeypatch.setenv("SHOP_PREFIX", self.prefix)
        monkeypatch.delenv("MEDIATOR_BROKER_URL", raising=False)

    async def provide(self, blocks: list[Block]) -> None:
        source = "\n".join(
            b.source for b in blocks if b.not_run is None and b.filename.endswith(".md")
        )
        if "REDIS_URL" in source:
            await self.redis()
        if "AMQP_URL" in source:
            await self.rabbitmq(set(re.findall(r'group="([\w-]+)"', source)))
        if "KAFKA_URL" in source:
            await self.kafka()
        if "NATS_URL" in source:
            self.nats()
        if "SERVICEBUS_CONNECTION_STRING" in source:
            self.azure()

    async def redis(self) -> None:
        import redis.asyncio

        url = self.request.getfixturevalue("redis_url")
        self.monkeypatch.setenv("REDIS_URL", url)

        async def delete_keys() -> None:
            async with redis.asyncio.Redis.from_url(url) as client:
                keys = [key async for key in client.scan_iter(match=f"{self.prefix}*")]
                if keys:
                    await client.delete(*keys)

        self.cleanups.append(delete_keys)

    async def rabbitmq(self, groups: set[str]) -> None:
        from tests.rabbitmq_support import amqp_url, connect, delete_everything

        self.monkeypatch.setenv("AMQP_URL", amqp_url())

        async def delete_topology() -> None:
            connection = await connect(f"{self.prefix}-cleanup")
            try:
                dead_letter = f"{self.prefix}.dead-letter"
                await delete_everything(
                    connection,
                    [self.prefix, dead_letter],
                    [dead_letter, *(f"{self.prefix}.{group}" for group in groups)],
                )
            finally:
                await connection.close()

        self.cleanups.append(delete_topology)

    async def kafka(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        server = self.request.getfixturevalue("kafka_server")
        self.monkeypatch.setenv("KAFKA_URL", f"kafka://{server.bootstrap_servers}")
        # Tansu gives no producer ids (see tests/kafka_support.py).
        self.monkeypatch.setenv("KAFKA_IDEMPOTENCE", "0" if server.tansu else "1")

        async def delete_topics() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=server.bootstrap_servers)
            await admin.start()
            try:
                topics = [t for t in await admin.list_topics() if t.startswith(f"{self.prefix}.")]
                if topics:
                    await admin.delete_topics(topics)
            finally:
                await admin.close()

        self.cleanups.append(delete_topics)

    def nats(self) -> None:
        from tests.nats_support import delete_stream, nats_url

        url = nats_url(self.request)
        self.monkeypatch.setenv("NATS_URL", url)

        async def delete_the_stream() -> None:
            await delete_stream(url, self.prefix.replace(".", "_"))

        self.cleanups.append(delete_the_stream)

    def azure(self) -> None:
        try:
            from tests.azure_peer import AmqpPeer
        except ImportError as exc:  # pragma: no cover - depends on the environment
            if os.environ.get("CI"):
                raise
            pytest.skip(f"azure-servicebus or python-qpid-proton missing: {exc}")
        peer = AmqpPeer().__enter__()
        for topic, subscription in AZURE_SUBSCRIPTIONS:
            peer.add_subscription(topic, subscription)
        self.monkeypatch.setenv("SERVICEBUS_CONNECTION_STRING", peer.connection_string)

        async def stop_peer() -> None:
            peer.stop()

        self.cleanups.append(stop_peer)

    async def clean_up(self) -> None:
        for cleanup in reversed(self.cleanups):
            await cleanup()


# -- what a page leaves running -------------------------------------------------


async def stop_leftovers(namespace: dict[str, object], before: set[asyncio.Task[Any]]) -> list[str]:
    """Stop what the page's blocks left running: running consumers, services and
    relays, open clients and connections, then tasks. What was stopped, by name."""
    from mediator import EventConsumer, Service
    from mediator.outbox import OutboxRelay

    stopped: list[str] = []
    for name, value in reversed(list(namespace.items())):
        if isinstance(value, EventConsumer | Service | OutboxRelay) and value.running:
            await value.stop()
            stopped.append(name)
    for name, value in reversed(list(namespace.items())):
        if isinstance(value, type | types.ModuleType | types.FunctionType):
            continue
        kind = f"{type(value).__module__}.{type(value).__qualname__}"
        if kind.startswith("redis.asyncio.client.Redis"):
            await value.aclose()  # type: ignore[attr-defined]
        elif kind.startswith("aio_pika.") and hasattr(value, "is_closed"):
            if not value.is_closed:  # type: ignore[attr-defined]
                await value.close()  # type: ignore[attr-defined]
                stopped.append(name)
        elif kind == "sqlalchemy.ext.asyncio.engine.AsyncEngine":
            await value.dispose()  # type: ignore[attr-defined]
        elif kind.startswith("azure.servicebus.aio."):
            await value.close()  # type: ignore[attr-defined]
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not current and t not in before]
    for task in left:
        task.cancel()
    if left:
        await asyncio.wait(left, timeout=5)
    return stopped + sorted(task.get_name() for task in left)


# -- the test -------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES, ids=[path.name for path in PAGES])
async def test_the_pages_python_blocks_run(
    path: Path,
    page_module: types.ModuleType,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blocks = python_blocks(path)
    if not blocks:
        pytest.skip("no python block")
    for block in blocks:
        if block.not_run is not None:
            assert block.not_run, f"{block.where}: a not-run marker without a reason"
            try:
                ast.parse(block.source, filename=block.where)
            except SyntaxError as exc:
                raise AssertionError(f"{block.where}: a not-run block that does not parse") from exc
        elif block.marker_line is not None:
            raise AssertionError(f"{block.where}: malformed not-run marker {block.marker_line!r}")
    # The examples' folder is importable, as for a reader running the blocks beside
    # them (`from shop import ...`); an included file's folder too, as for its script.
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    services = Services(request, monkeypatch)
    await services.provide(blocks)
    before = set(asyncio.all_tasks())
    namespace = page_module.__dict__
    future = 0
    try:
        for block in blocks:
            if block.not_run is not None:
                continue
            if block.filename != str(path):
                monkeypatch.syspath_prepend(str(Path(block.filename).parent))
            began = time.monotonic()
            try:
                future = await run_block(block, namespace, future)
                took = time.monotonic() - began
                if took > SLOW_BLOCK:
                    print(f"{block.where}: {took:.1f} s")
            except Exception as exc:
                raise AssertionError(
                    f"{block.where}: the block raised {type(exc).__name__}: {exc}"
                ) from exc
    finally:
        try:
            left = await stop_leftovers(namespace, before)
        finally:
            await services.clean_up()
    if left:
        print(f"docs/{path.name} left running, stopped by the test: {', '.join(left)}")
