"""The health server's status page in a real browser (Debian's chromium
driven by Playwright): the dead letters grouped by reason, a group replayed
by its button, a body full of markup shown as text, a form on another site
refused, and screenshots at 1280 px."""

from __future__ import annotations

import asyncio
import os
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from brokers.memory import InMemoryMessageBroker
from mediator._operations.health import TOKEN_VARIABLE, HealthServer
from mediator._operations.status_page import DeadLetterView, render_page
from tests.test_health_dead_letters import SCRIPT, Billing, Shop, poison, shop_service

CHROMIUM = Path("/usr/bin/chromium")
HAVE_CHROMIUM = CHROMIUM.exists()
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these, chromium's start-up connections are refused here and slow it down.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 900}
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "images" / "status-page.png"
UPDATE_VARIABLE = "MEDIATOR_UPDATE_SCREENSHOTS"
"""Set to rewrite the docs' screenshot (it is written when missing either way)."""


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the browser tests must run)")
    pytest.skip(reason)


if TYPE_CHECKING:
    from playwright.async_api import Browser, Page


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _missing("playwright is not installed: pip install -e '.[test]'")
    if not HAVE_CHROMIUM:
        _missing(f"no {CHROMIUM}: apt-get install chromium (.ci/run does)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    try:
        yield await context.new_page()
    finally:
        await context.close()


@pytest.fixture
async def shop(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Shop]:
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    billing = Billing()
    service = shop_service(billing)
    async with HealthServer(service) as health, service:
        broker = service.broker
        assert isinstance(broker, InMemoryMessageBroker)
        yield Shop(service=service, broker=broker, billing=billing, health=health)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def distinct_bytes(data: bytes) -> int:
    """How many different byte values the PNG's pixel data holds (1 for a blank image)."""
    pixels, offset = b"", 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        if kind == b"IDAT":
            pixels += data[offset + 8 : offset + 8 + length]
        offset += 12 + length
    return len(set(zlib.decompress(pixels)))


async def screenshot(page: Page, path: Path) -> bytes:
    data = await page.screenshot(path=str(path))
    assert png_size(data) == (1280, 900)
    assert distinct_bytes(data) > 16, f"{path} looks blank"
    return data


async def test_the_page_groups_dead_letters_and_a_group_replays_with_its_button(
    shop: Shop, page: Page, tmp_path: Path
) -> None:
    await poison(shop.service, orders=3, bad_input=False)
    await page.goto(shop.url)
    groups = page.locator("#groups tr.group")
    assert await groups.count() == 1
    assert (await groups.inner_text()).split() == [
        "3",
        "handler_failed",
        "OrderPlaced",
        "Replay",
        "Purge…",
    ]
    assert await page.locator("#records tr.record").count() == 3
    await screenshot(page, tmp_path / "before.png")

    shop.billing.fixed = True
    async with page.expect_navigation():
        await groups.get_by_role("button", name="Replay").click()
    await shop.billing.wait_for(3)
    assert sorted(shop.billing.billed) == [1, 2, 3]
    assert "Replayed 3 dead letters." in await page.locator(".notice").inner_text()
    assert await page.locator("#records tr.record").count() == 0
    assert "no dead letters" in await page.locator("#dead-letters").inner_text()
    assert await shop.broker.dead_letters() == []
    await screenshot(page, tmp_path / "after.png")


async def test_the_docs_screenshot(shop: Shop, page: Page, tmp_path: Path) -> None:
    await poison(shop.service)
    await page.goto(shop.url)
    data = await screenshot(page, tmp_path / "status-page.png")
    if os.environ.get(UPDATE_VARIABLE) or not DOCS_SCREENSHOT.exists():
        DOCS_SCREENSHOT.write_bytes(data)


async def test_a_body_with_markup_is_shown_as_text(shop: Shop, page: Page) -> None:
    await poison(shop.service, orders=1)
    await page.goto(shop.url)
    row = page.locator("#records tr.record", has_text="window.__pwned=1")
    await row.locator("summary", has_text="body").click()
    body = row.locator("pre.body")
    assert await body.is_visible()
    assert await body.inner_text() == SCRIPT.decode()
    assert await page.evaluate("typeof window.__pwned") == "undefined"
    assert await page.locator("#records img, #records script").count() == 0


async def test_a_form_on_another_site_is_refused(shop: Shop, page: Page) -> None:
    await poison(shop.service, orders=1)
    csrf = shop.health.csrf_token
    target = f"{shop.url}/dead-letters/purge"
    evil = (
        "<!doctype html><body>"
        f'<form id="plain" method="post" action="{target}">'
        '<input type="hidden" name="reason" value="not_json">'
        '<input type="hidden" name="confirm" value="yes"><button>plain</button></form>'
        f'<form id="leaked" method="post" action="{target}">'
        f'<input type="hidden" name="csrf" value="{csrf}">'
        '<input type="hidden" name="reason" value="not_json">'
        '<input type="hidden" name="confirm" value="yes"><button>leaked</button></form>'
    ).encode()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
            + f"Content-Length: {len(evil)}\r\n\r\n".encode()
            + evil
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        for form in ("plain", "leaked"):
            await page.goto(f"http://127.0.0.1:{port}/")
            async with page.expect_response(target) as answered:
                await page.locator(f"#{form} button").click()
            response = await answered.value
            assert response.status == 403, form
            assert "is not this server" in await response.text()
    assert len(await shop.broker.dead_letters()) == 4


def test_sections_are_optional_and_every_value_is_escaped() -> None:
    stats = {
        "service": "<b>shop</b>",
        "running": True,
        "ready": False,
        "consumers": [],
        "sagas": [{"name": "<i>checkout</i>", "state": "compensating"}],
    }
    page = render_page(
        stats=stats, dead_letters=DeadLetterView(note="no <dead> letters"), csrf='t"ok'
    )
    assert "&lt;b&gt;shop&lt;/b&gt;" in page
    assert '<section id="stats-sagas"><h2>Sagas</h2>' in page
    assert "&lt;i&gt;checkout&lt;/i&gt;" in page
    assert "no &lt;dead&gt; letters" in page
    assert "<b>" not in page
    assert "<i>" not in page
    bare = render_page(
        stats={"service": "shop", "consumers": []}, dead_letters=DeadLetterView(), csrf="t"
    )
    assert "stats-" not in bare
    assert "no dead letters" in bare
