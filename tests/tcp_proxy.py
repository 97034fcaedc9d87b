"""A TCP proxy on 127.0.0.1 that can make its connections go silent: no data
either way, and no FIN or RST, as when a network partition drops packets.
Connections made after `silence()` are forwarded again (the partition healed
for new paths), so a client that detects the silence can reconnect."""

from __future__ import annotations

import asyncio
import contextlib


class SilencingProxy:
    """``async with SilencingProxy(host, port) as proxy:`` forwards
    ``127.0.0.1:proxy.port`` to ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: list[_Link] = []

    async def __aenter__(self) -> SilencingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
        for link in self._links:
            link.close()
        await asyncio.gather(*(link.done for link in self._links), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def silence(self) -> int:
        """Stop forwarding on every connection open now, closing none of them;
        returns how many went silent."""
        live = [link for link in self._links if not link.silent and not link.done.done()]
        for link in live:
            link.silent = True
        return len(live)

    @property
    def connections(self) -> int:
        """Connections open and forwarding."""
        return sum(1 for link in self._links if not link.silent and not link.done.done())

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        link = _Link(reader, writer, *upstream)
        self._links.append(link)
        await link.done


class _Link:
    """One client connection and its upstream one, pumped both ways."""

    def __init__(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        upstream_reader: asyncio.StreamReader,
        upstream_writer: asyncio.StreamWriter,
    ) -> None:
        self.silent = False
        self._writers = (client_writer, upstream_writer)
        self._held = asyncio.Event()  # never set: where a silent pump waits
        self._pumps = [
            asyncio.ensure_future(self._pump(client_reader, upstream_writer)),
            asyncio.ensure_future(self._pump(upstream_reader, client_writer)),
        ]
        self.done: asyncio.Future[list[object]] = asyncio.gather(
            *self._pumps, return_exceptions=True
        )

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if self.silent:
                    await self._held.wait()  # dropped, and nothing more is read
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if not self.silent:
                for end in self._writers:
                    with contextlib.suppress(Exception):
                        end.close()

    def close(self) -> None:
        for pump in self._pumps:
            pump.cancel()
        for end in self._writers:
            transport = end.transport
            with contextlib.suppress(Exception):
                transport.abort()
