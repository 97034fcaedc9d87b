"""A small HTTP endpoint for probes: liveness, readiness, the consumers' stats
and Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from mediator._operations.service import Service
    from mediator.prometheus import ServiceMetrics

__all__ = ["HealthServer"]

logger = logging.getLogger("mediator.health")

_REQUEST_LIMIT = 8192
"""Bytes of request line and headers read before a request is refused."""
_READ_TIMEOUT = 5.0
"""Seconds a client has to send its request."""
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


_JSON = "application/json"


class HealthServer:
    """Serves ``GET /livez``, ``GET /readyz`` (`Service.ready`), ``GET
    /stats`` (`Service.stats()`) and ``GET /metrics`` (Prometheus, with the
    ``prometheus`` extra) for a `Service` (docs/operations.md, "Health";
    docs/metrics.md).

    ```python
    async with HealthServer(service, port=8080):
        await service.run()
    ```

    It binds to 127.0.0.1 unless told otherwise: expose it on purpose.
    Made before the service starts, it counts everything the service does
    (`mediator.prometheus.metrics_for`); ``metrics=False`` serves no metrics.
    """

    def __init__(
        self,
        service: Service,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        metrics: bool = True,
    ) -> None:
        self.service = service
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None
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

    async def start(self) -> None:
        """Listen; returns once connections are accepted."""
        if self._server is None:
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
        """The status and JSON body for one request."""
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
            "error": f"no such path {path[:100]!r}; try /livez, /readyz, /stats or /metrics"
        }

    def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        """The status, content type and body for one request."""
        metrics = self.metrics
        if metrics is not None and method in ("GET", "HEAD") and path.split("?")[0] == "/metrics":
            from mediator.prometheus import CONTENT_TYPE

            return 200, CONTENT_TYPE, metrics.exposition()
        status, body = self.answer(method, path)
        return status, _JSON, orjson.dumps(body)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _REQUEST_LIMIT:
                raise ValueError("request too long")
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) != 3:
                status, content_type = 400, _JSON
                payload = orjson.dumps({"error": "malformed request line"})
                method = "GET"
            else:
                method = parts[0]
                status, content_type, payload = self.respond(method, parts[1])
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            writer.close()
            return
        writer.write(
            f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(payload)}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        if method != "HEAD":
            writer.write(payload)
        try:
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
