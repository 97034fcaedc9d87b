"""A small HTTP endpoint for probes and operators: liveness, readiness, the
consumers' stats, Prometheus metrics, the dead letters with replay and
purge, and an HTML status page (docs/operations.md, "Health";
docs/status-page.md)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mediator._limits import quote
from mediator._operations.http_dead_letters import act, field, listing, selection
from mediator._operations.http_exchange import (
    JSON,
    HttpError,
    Request,
    Response,
    json_response,
    read_request,
    write_response,
)
from mediator._operations.status_page import DeadLetterView, render_page

if TYPE_CHECKING:
    from mediator._operations.service import Service
    from mediator.prometheus import ServiceMetrics

__all__ = ["TOKEN_VARIABLE", "HealthServer"]

logger = logging.getLogger("mediator.health")

TOKEN_VARIABLE = "MEDIATOR_HEALTH_TOKEN"
"""Where `HealthServer` reads its bearer token from when not given one."""
COOKIE = "mediator_health"
"""The cookie a browser gets from ``/?token=...``: proof of the token, not the token."""
_PROBES = frozenset({"/livez", "/readyz"})
_PAGES = frozenset({"/", "/status"})
_NOTICES = 32
"""Action summaries kept for the page to show after its redirect."""


class HealthServer:
    """Serves ``GET /livez``, ``GET /readyz`` (`Service.ready`), ``GET
    /stats`` (`Service.stats()`), ``GET /metrics`` (Prometheus, with the
    ``prometheus`` extra), ``GET /dead-letters`` with ``POST
    /dead-letters/replay`` and ``/purge``, and a status page at ``GET /``
    for a `Service` (docs/operations.md, "Health"; docs/status-page.md).

    ```python
    async with HealthServer(service, port=8080):
        await service.run()
    ```

    It binds to 127.0.0.1 unless told otherwise; any other address needs a
    `token` (default: ``$MEDIATOR_HEALTH_TOKEN``), which every path but the
    probes then asks for. Made before the service starts, it counts
    everything the service does (`mediator.prometheus.metrics_for`);
    ``metrics=False`` serves no metrics.
    """

    def __init__(
        self,
        service: Service,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        metrics: bool = True,
        token: str | None = None,
    ) -> None:
        self.service = service
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self.token = token if token is not None else os.environ.get(TOKEN_VARIABLE) or None
        """The bearer token asked of every request but the probes (None: none asked)."""
        self._csrf = secrets.token_urlsafe(32)
        self._cookie = hmac.new(
            (self.token or "").encode(), b"mediator-health-cookie", hashlib.sha256
        ).hexdigest()
        self._notices: dict[str, str] = {}
        self.metrics: ServiceMetrics | None = None
        """What ``GET /metrics`` serves; None without the extra or with ``metrics=False``."""
        self._no_metrics = "metrics are off: HealthServer(metrics=False)"
        if metrics:
            try:
                from mediator.prometheus import metrics_for
            except ImportError as exc:
                self._no_metrics = str(exc)
            else:
                self.metrics = metrics_for(service)

    @property
    def port(self) -> int:
        """The port it listens on (the one the system chose when created with 0)."""
        if self._server is not None and self._server.sockets:
            port: int = self._server.sockets[0].getsockname()[1]
            return port
        return self._port

    @property
    def csrf_token(self) -> str:
        """The token the page's forms carry and every POST must return (random per server)."""
        return self._csrf

    async def start(self) -> None:
        """Listen; returns once connections are accepted. `ValueError` for an
        address other than loopback without a token."""
        if self._server is None:
            if self.token is None and not _is_loopback(self.host):
                raise ValueError(
                    f"HealthServer will not listen on {self.host} without a token: anyone "
                    "who reaches it could replay and purge dead letters; set "
                    f"{TOKEN_VARIABLE} to a long random secret, or bind 127.0.0.1 "
                    "(--health-host's default)"
                )
            self._server = await asyncio.start_server(self._serve, self.host, self._port)

    async def stop(self) -> None:
        """Stop listening and close the connections being served."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def answer(self, method: str, path: str) -> tuple[int, dict[str, Any]]:
        """The status and JSON body of a probe, ``/stats`` or an unknown path."""
        if method not in ("GET", "HEAD"):
            return 405, {"error": f"{method} is not allowed; use GET"}
        path = path.split("?", 1)[0]
        if path == "/livez":
            return 200, {"status": "alive"}
        if path == "/readyz":
            reason = self.service.not_ready_because()
            if reason is None:
                return 200, {"status": "ready"}
            return 503, {"status": "not ready", "reason": reason}
        if path == "/stats":
            return 200, self.service.stats()
        if path == "/metrics":
            # Served by `respond` when there are metrics.
            return 404, {"error": self._no_metrics}
        return 404, {
            "error": f"no such path {path[:100]!r}; try / (the status page), /livez, "
            "/readyz, /stats, /metrics or /dead-letters"
        }

    def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        """The status, content type and body of a probe, ``/stats``, ``/metrics``
        or an unknown path."""
        metrics = self.metrics
        if metrics is not None and method in ("GET", "HEAD") and path.split("?")[0] == "/metrics":
            from mediator.prometheus import CONTENT_TYPE

            return 200, CONTENT_TYPE, metrics.exposition()
        status, body = self.answer(method, path)
        response = json_response(status, body)
        return status, response.content_type, response.body

    async def handle(self, request: Request) -> Response:
        """The response to `request`; `HttpError` for one refused."""
        method, path = request.method, request.path
        if path not in _PROBES:
            login = self._authorize(request)
            if login is not None:
                return login
        if path in _PAGES:
            _allow(method, "GET", "HEAD")
            return await self._page(request)
        if path == "/dead-letters":
            _allow(method, "GET", "HEAD")
            return await self._dead_letters(request)
        if path in ("/dead-letters/replay", "/dead-letters/purge"):
            _allow(method, "POST")
            return await self._act(request, replay=path.endswith("replay"))
        status, content_type, body = self.respond(method, request.target)
        return Response(status=status, content_type=content_type, body=body)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method, unread = "GET", None
        try:
            request = await read_request(reader)
            method = request.method
            response = await self.handle(request)
        except HttpError as exc:
            response, unread = exc.response(), reader
        except ConnectionError:
            writer.close()
            return
        except Exception as exc:
            logger.exception("health server: answering a request failed")
            response = HttpError(500, f"answering failed: {quote(repr(exc), 300)}").response()
        await write_response(writer, response, head=method == "HEAD", unread=unread)

    # -- access ----------------------------------------------------------------

    def _authorize(self, request: Request) -> Response | None:
        """Nothing when `request` may go on; the redirect that sets the cookie
        for ``/?token=``; `HttpError` 401 or 403 otherwise."""
        if self.token is None:
            host = request.headers.get("host")
            if host is not None and not _is_loopback(_hostname(host)):
                # A loopback server reached by another name: DNS rebinding.
                raise HttpError(
                    403,
                    f"Host {host[:100]!r} is not a loopback name; without {TOKEN_VARIABLE} "
                    "this server answers only to 127.0.0.1, [::1] or localhost",
                )
            return None
        offered = request.query.get("token")
        if offered and request.path in _PAGES and request.method in ("GET", "HEAD"):
            if not _same(offered[0], self.token):
                raise HttpError(401, f"wrong token in ?token=; use the value of {TOKEN_VARIABLE}")
            cookie = f"{COOKIE}={self._cookie}; HttpOnly; SameSite=Strict; Path=/"
            headers = (("Location", request.path), ("Set-Cookie", cookie))
            return Response(status=303, content_type=JSON, body=b"{}", headers=headers)
        if self._bearer(request) or _same(_cookie_of(request, COOKIE), self._cookie):
            return None
        raise HttpError(
            401,
            f"this server asks for its token ({TOKEN_VARIABLE}): send 'Authorization: Bearer "
            "<token>', or open /?token=<token> once in a browser",
            headers=(("WWW-Authenticate", 'Bearer realm="mediator"'),),
        )

    def _bearer(self, request: Request) -> bool:
        scheme, _, offered = request.headers.get("authorization", "").partition(" ")
        return (
            self.token is not None
            and scheme.lower() == "bearer"
            and _same(offered.strip(), self.token)
        )

    def _check_post(self, request: Request, form: dict[str, list[str]]) -> None:
        """`HttpError` 403 for a POST another site's page could have made."""
        host = request.headers.get("host", "")
        for name in ("origin", "referer"):
            value = request.headers.get(name)
            if value is not None and _netloc(value) != host.lower():
                raise HttpError(
                    403,
                    f"{name.capitalize()} {value[:100]!r} is not this server ({host[:100]}); "
                    "only the status page's own forms can act here",
                )
        if self._bearer(request):
            return  # a browser never adds this header on its own, so no forgery
        if not _same(field(form, "csrf") or "", self._csrf):
            raise HttpError(
                403,
                "missing or wrong csrf field: use the forms of the status page (GET /), "
                "whose token changes with every server start, or send 'Authorization: Bearer'",
            )

    # -- pages -------------------------------------------------------------------

    async def _dead_letters(self, request: Request) -> Response:
        selected, view = await selection(self.service.broker, self.service.name, request.query)
        return json_response(200, {**listing(selected, view), "csrf_token": self._csrf})

    async def _page(self, request: Request) -> Response:
        try:
            _, view = await selection(self.service.broker, self.service.name, request.query)
        except HttpError as exc:
            view = DeadLetterView(note=str(exc))
        notice = self._notices.get(field(request.query, "notice") or "")
        page = render_page(
            stats=self.service.stats(), dead_letters=view, csrf=self._csrf, notice=notice
        )
        return Response(status=200, content_type="text/html; charset=utf-8", body=page.encode())

    async def _act(self, request: Request, *, replay: bool) -> Response:
        form = request.form()
        self._check_post(request, form)
        summary = await act(self.service.broker, self.service.name, form, replay=replay)
        if JSON in request.headers.get("accept", ""):
            return json_response(502 if "error" in summary else 200, summary)
        key = secrets.token_urlsafe(8)
        self._notices[key] = summary["message"]
        while len(self._notices) > _NOTICES:
            del self._notices[next(iter(self._notices))]
        location = f"/?notice={key}#dead-letters"
        return Response(
            status=303, content_type=JSON, body=b"{}", headers=(("Location", location),)
        )


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise HttpError(
            405,
            f"{method} is not allowed here; use {' or '.join(allowed)}",
            headers=(("Allow", ", ".join(allowed)),),
        )


def _same(offered: str | None, expected: str) -> bool:
    return offered is not None and hmac.compare_digest(offered.encode(), expected.encode())


def _cookie_of(request: Request, name: str) -> str | None:
    for pair in request.headers.get("cookie", "").split(";"):
        key, _, value = pair.strip().partition("=")
        if key == name:
            return value
    return None


def _hostname(host: str) -> str:
    """The name in a Host header (``[::1]:8080`` -> ``::1``), "" when it is not one."""
    try:
        return urlsplit(f"//{host}").hostname or ""
    except ValueError:
        return ""


def _netloc(url: str) -> str:
    """The ``host:port`` of `url`, lower case; "" when it has none."""
    try:
        return urlsplit(url).netloc.lower()
    except ValueError:
        return ""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
