"""Redis: what both brokers share (the client, `from_url`, `start`/`stop`,
error mapping, the dead-letter stream)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, Self

from brokers.redis._client import (
    Client,
    address,
    client_from_url,
    decodes_responses,
    default_reply_timeout,
)
from brokers.redis._dead_letters import read_dead_letters, remove_dead_letters, still_there
from brokers.redis._errors import ERRORS
from brokers.redis._naming import dead_letter_key
from mediator.transport import (
    BrokerLifecycle,
    DeadLetterRecord,
    ReconnectingSubscription,
    TransportError,
    quote,
    replayable,
)


class _RedisBroker(BrokerLifecycle):
    """The base of both Redis brokers: one redis-py client (of one server or
    of a cluster), owned when `from_url` built it."""

    def __init__(
        self,
        client: Client,
        channel_prefix: str,
        dead_letter_limit: int,
        silence_timeout: float,
        max_message_size: int,
    ) -> None:
        name = type(self).__name__
        if not silence_timeout > 0:
            raise ValueError(f"{name}(silence_timeout={silence_timeout}): must be above 0")
        if decodes_responses(client):
            raise ValueError(
                f"{name}: the Redis client decodes responses to str; envelopes are bytes. "
                "Build the client with decode_responses=False (the default)"
            )
        if dead_letter_limit < 1:
            raise ValueError(
                f"{name}(dead_letter_limit={dead_letter_limit}): must be at least 1; it caps "
                f"the dead-letter stream {channel_prefix}:dead-letter"
            )
        super().__init__(max_message_size=max_message_size)
        self.client = client
        """The redis-py client every command goes through."""
        self.channel_prefix = channel_prefix
        """The first part of every channel or stream key, and of the dead-letter key."""
        self.dead_letter_key = dead_letter_key(channel_prefix)
        """The stream that dead letters are appended to."""
        self.dead_letter_limit = dead_letter_limit
        """How many dead letters the stream keeps; older ones are trimmed."""
        self.silence_timeout = silence_timeout
        """Seconds a silent connection is given before it is checked, then dropped."""

    @classmethod
    def from_url(cls, url: str, channel_prefix: str = "mediator", **options: Any) -> Self:
        """A broker with a client of its own for `url` (``redis://``,
        ``rediss://``, ``unix://``; ``redis+cluster://host:port`` or
        ``rediss+cluster://`` for a Redis Cluster, naming any of its nodes);
        `stop()` closes that client.

        ```python
        async with RedisStreamMessageBroker.from_url("redis://localhost:6379/0", "shop") as broker:
            ...
        ```
        """
        client = client_from_url(url)
        broker = cls(client, channel_prefix, **options)
        broker._owns_client = True
        # A command whose reply does not come is given up on, so a publish on a
        # connection gone silent fails instead of waiting for ever.
        default_reply_timeout(client, broker._reply_due())
        return broker

    def _reply_due(self) -> float:
        """Seconds within which any reply from Redis is due."""
        return self.silence_timeout

    @property
    def address(self) -> str:
        """Where the client connects (``host:port``, the socket path, or
        ``cluster host:port``), for messages."""
        return address(self.client)

    @contextlib.contextmanager
    def _mapped(self, doing: str) -> Iterator[None]:
        """redis-py's errors as the library's, saying what failed where, and
        what to check."""
        what = f"{doing} Redis at {self.address}"
        try:
            with ERRORS.mapped(what):
                yield
        except TransportError as exc:
            if str(exc).startswith(what):
                raise
            # Mapped by a subscription already, in Redis's words: say where.
            cause = exc.__cause__
            row = None if cause is None else ERRORS.row(cause)
            check = "" if row is None else f"; {row.check}"
            raise type(exc)(f"{what} failed: {exc}{check}") from cause

    async def _open(self) -> None:
        with self._mapped("PING to"):
            await self.client.ping()

    async def _close_client(self) -> None:
        await self.client.aclose()

    async def _subscribed(self, subscription: ReconnectingSubscription[Any]) -> None:
        """Open `subscription`, or close it and raise why it could not open."""
        try:
            with self._mapped(f"subscribing to {quote(repr(subscription.pattern), 200)} on"):
                await subscription.open()
        except BaseException:
            await subscription.close()
            raise

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetterRecord]:
        """What was dead-lettered (the stream keeps the newest `dead_letter_limit`),
        oldest first; with `limit`, the oldest `limit` of them."""
        with self._mapped("reading the dead letters from"):
            return await read_dead_letters(self.client, self.dead_letter_key, limit)

    async def replay_dead_letters(
        self, records: Iterable[DeadLetterRecord]
    ) -> AsyncIterator[DeadLetterRecord]:
        """Publish each of `records` again to its channel, then ``XDEL`` it
        from the dead-letter stream; yield it once both are done. One that
        is no longer in the stream is skipped (docs/dead-letters.md)."""
        for record in replayable(records):
            with self._mapped(f"replaying dead letter {record.id} on"):
                if not await still_there(self.client, self.dead_letter_key, record):
                    continue
                await self._replay(record)
            yield record

    async def _replay(self, record: DeadLetterRecord) -> None:
        """Publish `record`'s body to its channel and remove its entry."""
        raise NotImplementedError

    async def purge_dead_letters(self, records: Iterable[DeadLetterRecord]) -> int:
        """``XDEL`` `records` from the dead-letter stream; how many were there."""
        with self._mapped("purging dead letters on"):
            return await remove_dead_letters(self.client, self.dead_letter_key, records)
