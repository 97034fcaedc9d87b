"""A TCP proxy on 127.0.0.1 that can make its connections go silent: no data
either way, and no FIN or RST, as when a network partition drops packets.
Connections made after `silence()` are forwarded again (the partition healed
for new paths), so a client that detects the silence can reconnect; with
`hold_new`, new connections are silent from the start too. `resume()` heals
the links `silence()` stopped (what they held back is forwarded then), and
`release()` the ones `hold_new` held."""

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
        self.hold_new = False
        """Connections accepted while True are silent from the start, until `release()`."""

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
            link.silence()
        return len(live)

    def resume(self) -> int:
        """Forward again on the links `silence()` stopped (not those `hold_new`
        held), what they held back first; returns how many."""
        return self._resume([link for link in self._links if link.silent and not link.held])

    def release(self) -> int:
        """Forward again on the links `hold_new` held; returns how many."""
        return self._resume([link for link in self._links if link.held])

    @property
    def held(self) -> int:
        """Connections `hold_new` holds silent now."""
        return sum(1 for link in self._links if link.held and not link.done.done())

    def _resume(self, links: list[_Link]) -> int:
        for link in links:
            link.resume()
        return len(links)

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
        if self.hold_new:
            link.silence()
            link.held = True
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
        self.held = False
        """Silent since it was accepted (`SilencingProxy.hold_new`)."""
        self._writers = (client_writer, upstream_writer)
        self._held = asyncio.Event()  # set by `resume()`: where a silent pump waits
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
                    # Held back, and nothing more is read, until `resume()`.
                    await self._held.wait()
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

    def silence(self) -> None:
        if not self.silent:
            self._held = asyncio.Event()
            self.silent = True

    def resume(self) -> None:
        self.silent = self.held = False
        self._held.set()

    def close(self) -> None:
        for pump in self._pumps:
            pump.cancel()
        for end in self._writers:
            transport = end.transport
            with contextlib.suppress(Exception):
                transport.abort()
