"""The health server's dead letters over real HTTP: ``GET /dead-letters``
with its pages and filters, replay and purge behind the CSRF token and the
Origin check, the token rules, and the request reader's limits. The dead
letters are made by the service's own consumer from poison messages."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator

import attrs
import httpx
import pytest

from brokers.memory import InMemoryMessageBroker
from mediator import DeadLetter, EventMap, NotificationEvent, Service
from mediator._operations.health import COOKIE, TOKEN_VARIABLE, HealthServer
from mediator._operations.http_exchange import BODY_LIMIT
from mediator.testing import wait_until

CHANNEL = "shop:notification_event:OrderPlaced"
SCRIPT = b"<script>window.__pwned=1</script><img src=x onerror=window.__pwned=2>"
TOO_LARGE = 70_000
"""Bytes of a message over the broker's limit, whose dead letter keeps 64 KiB."""


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int


class Billing:
    """A handler that fails until `fixed`; then records each order it bills."""

    def __init__(self) -> None:
        self.fixed = False
        self.billed: list[int] = []
        self.changed = asyncio.Event()

    async def __call__(self, event: OrderPlaced) -> None:
        if not self.fixed:
            raise RuntimeError(f"order {event.order_id} cannot be billed")
        self.billed.append(event.order_id)
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.billed) < count:
                self.changed.clear()
                await self.changed.wait()


@attrs.define
class Shop:
    service: Service
    broker: InMemoryMessageBroker
    billing: Billing
    health: HealthServer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.health.port}"


def shop_service(billing: Billing, *, max_message_size: int = 65_536) -> Service:
    events = EventMap()
    events.bind(OrderPlaced, billing, policy=DeadLetter())
    broker = InMemoryMessageBroker(channel_prefix="shop", max_message_size=max_message_size)
    service = Service(broker, name="shop", event_map=events)
    service.subscribe("{prefix}:notification_event:*", group="billing")
    return service


async def poison(service: Service, *, orders: int = 2, bad_input: bool = True) -> None:
    """Dead-letter `orders` orders (handler_failed) and, with `bad_input`, two
    bodies that are not JSON (one holding markup) and one over the size limit
    (too_large)."""
    broker = service.broker
    assert isinstance(broker, InMemoryMessageBroker)
    (consumer,) = service.consumers
    for order_id in range(1, orders + 1):
        await service.event_emitter.emit(OrderPlaced(order_id=order_id))
    if bad_input:
        await broker.publish_raw(CHANNEL, SCRIPT)
        await broker.publish_raw(CHANNEL, b"{nope")
        await broker.publish_raw(CHANNEL, b"x" * TOO_LARGE)
    await wait_until(consumer, lambda stats: stats.dead_lettered >= orders + 3 * bad_input)


@pytest.fixture
async def shop(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Shop]:
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    billing = Billing()
    service = shop_service(billing)
    async with HealthServer(service) as health, service:
        await poison(service)
        broker = service.broker
        assert isinstance(broker, InMemoryMessageBroker)
        yield Shop(service=service, broker=broker, billing=billing, health=health)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, "the page has no form with a csrf field"
    return found.group(1)


async def test_lists_dead_letters_with_groups_pages_and_filters(shop: Shop) -> None:
    async with httpx.AsyncClient(base_url=shop.url) as client:
        document = (await client.get("/dead-letters")).json()
        assert (document["total"], document["offset"], document["limit"]) == (5, 0, 50)
        assert document["groups"] == [
            {"reason": "handler_failed", "event": "OrderPlaced", "count": 2},
            {"reason": "not_json", "event": None, "count": 2},
            {"reason": "too_large", "event": None, "count": 1},
        ]
        records = document["records"]
        assert [r["reason"] for r in records] == [
            "handler_failed",
            "handler_failed",
            "not_json",
            "not_json",
            "too_large",
        ]
        assert records[2]["body"] == SCRIPT.decode()
        [large] = [r for r in records if r["reason"] == "too_large"]
        assert (large["truncated"], large["replayable"], large["size"]) == (True, False, TOO_LARGE)
        assert all(r["id"] for r in records)

        second = (await client.get("/dead-letters", params={"offset": 1, "limit": 2})).json()
        assert (second["total"], second["offset"], second["limit"]) == (5, 1, 2)
        assert [r["id"] for r in second["records"]] == [r["id"] for r in records[1:3]]
        assert len(second["groups"]) == 3, "groups count every dead letter, not the page's"

        not_json = (await client.get("/dead-letters", params={"reason": "not_json"})).json()
        assert (not_json["total"], not_json["groups"]) == (
            2,
            [{"reason": "not_json", "event": None, "count": 2}],
        )
        elsewhere = (await client.get("/dead-letters", params={"channel": "*Elsewhere"})).json()
        assert (elsewhere["total"], elsewhere["records"], elsewhere["groups"]) == (0, [], [])

        bad = await client.get("/dead-letters", params={"limit": "lots"})
        assert bad.status_code == 400
        assert "limit='lots': must be a whole number from 1 to 1000" in bad.json()["error"]


async def test_replaying_a_group_with_the_pages_token_hands_each_message_over_once(
    shop: Shop,
) -> None:
    async with httpx.AsyncClient(base_url=shop.url) as client:
        page = (await client.get("/")).text
        shop.billing.fixed = True
        answer = await client.post(
            "/dead-letters/replay",
            data={"csrf": csrf_of(page), "reason": "handler_failed", "event": "OrderPlaced"},
            headers={"Origin": shop.url},
        )
        assert answer.status_code == 303
        location = answer.headers["Location"]
        assert location.startswith("/?notice=")
        await shop.billing.wait_for(2)
        assert sorted(shop.billing.billed) == [1, 2]
        assert [r.reason for r in await shop.broker.dead_letters()] == [
            "not_json",
            "not_json",
            "too_large",
        ]
        after = (await client.get(location)).text
        assert "Replayed 2 dead letters." in after
    (consumer,) = shop.service.consumers
    stats = await wait_until(consumer, lambda s: s.in_flight == 0)
    assert stats.handled == 2
    assert sorted(shop.billing.billed) == [1, 2], "a replayed message is handled once"


async def test_replay_by_ids_reports_what_cannot_be_replayed(shop: Shop) -> None:
    records = await shop.broker.dead_letters()
    failed = [r for r in records if r.reason == "handler_failed"]
    [large] = [r for r in records if r.reason == "too_large"]
    shop.billing.fixed = True
    async with httpx.AsyncClient(base_url=shop.url) as client:
        answer = await client.post(
            "/dead-letters/replay",
            data={
                "csrf": shop.health.csrf_token,
                "ids": [failed[0].id, large.id, "no-such-id"],
            },
            headers={"Accept": "application/json"},
        )
    assert answer.status_code == 200
    summary = answer.json()
    assert (summary["replayed"], summary["not_replayable"], summary["absent"]) == (1, 1, 1)
    assert "1 dead letter cannot be replayed" in summary["message"]
    await shop.billing.wait_for(1)
    assert shop.billing.billed == [1]
    assert large.id in {r.id for r in await shop.broker.dead_letters()}


async def test_purge_asks_for_confirmation_then_empties_the_store(shop: Shop) -> None:
    async with httpx.AsyncClient(base_url=shop.url) as client:
        csrf = csrf_of((await client.get("/")).text)
        unconfirmed = await client.post(
            "/dead-letters/purge", data={"csrf": csrf, "reason": "not_json"}
        )
        assert unconfirmed.status_code == 400
        assert "confirm=yes" in unconfirmed.json()["error"]
        assert len(await shop.broker.dead_letters()) == 5

        for reason in ("not_json", "handler_failed", "too_large"):
            answer = await client.post(
                "/dead-letters/purge",
                data={"csrf": csrf, "reason": reason, "confirm": "yes"},
                headers={"Accept": "application/json"},
            )
            assert answer.status_code == 200
            assert answer.json()["purged"] >= 1
        assert await shop.broker.dead_letters() == []
        assert (await client.get("/dead-letters")).json()["total"] == 0
        nothing = await client.post("/dead-letters/replay", data={"csrf": csrf})
        assert nothing.status_code == 400
        assert "name the dead letters" in nothing.json()["error"]


async def test_a_post_without_the_token_or_from_another_origin_is_refused(shop: Shop) -> None:
    group = {"reason": "not_json", "confirm": "yes"}
    async with httpx.AsyncClient(base_url=shop.url) as client:
        csrf = csrf_of((await client.get("/")).text)
        missing = await client.post("/dead-letters/purge", data=group)
        wrong = await client.post("/dead-letters/purge", data={**group, "csrf": "x" * len(csrf)})
        foreign = await client.post(
            "/dead-letters/purge",
            data={**group, "csrf": csrf},
            headers={"Origin": "http://evil.example"},
        )
        referred = await client.post(
            "/dead-letters/replay",
            data={**group, "csrf": csrf},
            headers={"Referer": "http://127.0.0.1:1/page"},
        )
        garbled = await client.post(
            "/dead-letters/purge", data={**group, "csrf": csrf}, headers={"Origin": "http://["}
        )
        rebound = await client.get("/dead-letters", headers={"Host": "evil.example:80"})
        get = await client.get("/dead-letters/purge")
    refused = (missing, wrong, foreign, referred, garbled, rebound)
    assert [r.status_code for r in refused] == [403] * 6
    assert "csrf" in missing.json()["error"]
    assert "Origin 'http://evil.example' is not this server" in foreign.json()["error"]
    assert "not a loopback name" in rebound.json()["error"]
    assert (get.status_code, get.headers["Allow"]) == (405, "POST")
    assert len(await shop.broker.dead_letters()) == 5


async def test_another_address_needs_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    service = shop_service(Billing())
    with pytest.raises(ValueError, match=f"without a token.*set {TOKEN_VARIABLE}"):
        await HealthServer(service, host="0.0.0.0").start()

    monkeypatch.setenv(TOKEN_VARIABLE, "s3cret-" + uuid.uuid4().hex)
    async with HealthServer(service, host="0.0.0.0") as health:
        assert health.port > 0


async def test_with_a_token_everything_but_the_probes_asks_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = "s3cret-" + uuid.uuid4().hex
    monkeypatch.setenv(TOKEN_VARIABLE, token)
    service = shop_service(Billing())
    async with HealthServer(service) as health, service:
        await poison(service, orders=1)
        url = f"http://127.0.0.1:{health.port}"
        async with httpx.AsyncClient(base_url=url) as client:
            for path in ("/", "/stats", "/metrics", "/dead-letters"):
                refused = await client.get(path)
                assert refused.status_code == 401, path
                assert refused.headers["WWW-Authenticate"].startswith("Bearer")
                assert TOKEN_VARIABLE in refused.json()["error"]
            wrong = await client.get("/stats", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            assert (await client.get("/livez")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200

            bearer = {"Authorization": f"Bearer {token}"}
            assert (await client.get("/stats", headers=bearer)).status_code == 200
            assert (await client.get("/metrics", headers=bearer)).status_code == 200
            assert (await client.get("/dead-letters", headers=bearer)).json()["total"] == 4
            # A script with the bearer header needs no csrf field: no browser adds the header.
            purged = await client.post(
                "/dead-letters/purge",
                data={"reason": "not_json", "confirm": "yes"},
                headers={**bearer, "Accept": "application/json"},
            )
            assert purged.json()["purged"] == 2

            login = await client.get("/", params={"token": token})
            assert (login.status_code, login.headers["Location"]) == (303, "/")
            cookie = login.headers["Set-Cookie"]
            assert "HttpOnly" in cookie
            assert "SameSite=Strict" in cookie
            assert token not in cookie
            assert (await client.get("/")).status_code == 200  # the client kept the cookie
            assert COOKIE in client.cookies
            csrf = csrf_of((await client.get("/")).text)
            client.cookies.clear()
            no_cookie = await client.post(
                "/dead-letters/purge", data={"csrf": csrf, "reason": "too_large", "confirm": "yes"}
            )
            assert no_cookie.status_code == 401
            assert (await client.get("/", params={"token": "nope"})).status_code == 401


async def raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `request` as it is and read the answer."""
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        response = await reader.read()
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def test_the_reader_refuses_what_breaks_its_limits(shop: Shop) -> None:
    port = shop.health.port
    post = b"POST /dead-letters/purge HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    body = b"x" * (BODY_LIMIT + 1)
    status, _, answer = await raw(
        port, post + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    assert status == 413
    assert b"over the 65536-byte limit" in answer

    status, _, answer = await raw(port, post + b"Content-Length: lots\r\n\r\n")
    assert (status, b"not a number" in answer) == (400, True)
    status, _, answer = await raw(port, post + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert status == 411
    long_header = b"X-Filler: " + b"y" * 9000 + b"\r\n"
    status, _, _ = await raw(port, b"GET /stats HTTP/1.1\r\n" + long_header + b"\r\n")
    assert status == 431
    status, _, _ = await raw(port, b"NONSENSE\r\n\r\n")
    assert status == 400
    status, headers, answer = await raw(port, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, answer) == (200, b'{"status":"alive"}')
    assert headers["X-Frame-Options"] == "DENY"
    assert "script-src" not in headers["Content-Security-Policy"]
    assert len(await shop.broker.dead_letters()) == 5


async def test_without_a_dead_letter_store_the_page_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    service = Service(name="idle")
    health = HealthServer(service)
    async with health, httpx.AsyncClient(base_url=f"http://127.0.0.1:{health.port}") as client:
        listing = await client.get("/dead-letters")
        page = await client.get("/status")
        action = await client.post(
            "/dead-letters/replay", data={"csrf": health.csrf_token, "reason": "not_json"}
        )
    assert listing.status_code == 404
    assert "has no broker" in listing.json()["error"]
    assert page.status_code == 200
    assert "service idle has no broker, so no dead letters" in page.text
    assert action.status_code == 404
