# --8<-- [start:header]
"""A toy transport built on `mediator.transport`, shown on the docs page
"Writing a transport".

`ToyServer` stands in for a broker server and its SDK: named queues in
memory, reached through links (connections) that the server can break.
`ToyBroker` is the transport: it publishes through a link, reads each
subscription's queue through a link of its own, and leaves lifecycle,
reconnection, settling once and error mapping to the kit.

The server knows nothing of patterns: every message goes to every queue,
and each subscription filters by its glob in process. Delivery guarantee:
at-most-once (a message read from the server is gone there; a link that
breaks loses what it held, and an ungrouped subscription's queue dies with
its link).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Sequence

from mediator.transport import (
    BrokerLifecycle,
    BrokerUnavailableError,
    CredentialError,
    DeadLetterRecord,
    DeliveryBase,
    DeliveryGuarantee,
    GlobPattern,
    Message,
    PublishError,
    ReconnectingSubscription,
    channel_for,
    encode_message,
    map_errors,
)

__all__ = ["QueueFullError", "ToyBroker", "ToyDelivery", "ToyLink", "ToyServer", "ToySubscription"]

Item = tuple[str, bytes, int]  # channel, body, delivery count
# --8<-- [end:header]


# The "server" and its "SDK": what a real transport imports from a client library.
# --8<-- [start:server]
class QueueFullError(Exception):
    """The server refused a publish: a queue is at its limit."""


class ToyServer:
    """Queues in memory, reached through links that can be broken."""

    def __init__(self, *, queue_limit: int = 1_000, dead_letter_limit: int = 1_000) -> None:
        self.queue_limit = queue_limit
        self.dead_letters: deque[dict[str, str | bytes]] = deque(maxlen=dead_letter_limit)
        self._queues: dict[str, deque[Item]] = {}
        self._owners: dict[str, ToyLink] = {}  # exclusive queues die with their link
        self._links: set[ToyLink] = set()
        self._refused = False

    async def connect(self) -> ToyLink:
        if self._refused:
            raise PermissionError("the toy server revoked the credential")
        link = ToyLink(self)
        self._links.add(link)
        return link

    def break_connection(self) -> None:
        """Drop every open link, as a network failure or a server restart would."""
        for link in list(self._links):
            link._fail(ConnectionResetError("the toy server dropped the connection"))

    def revoke_access(self) -> None:
        """Refuse the credential from now on: open links fail, connecting fails."""
        self._refused = True
        for link in list(self._links):
            link._fail(PermissionError("the toy server revoked the credential"))

    def _forget(self, link: ToyLink) -> None:
        self._links.discard(link)
        for name in [name for name, owner in self._owners.items() if owner is link]:
            del self._owners[name], self._queues[name]

    def _wake(self) -> None:
        for link in self._links:
            link._wakeup.set()


class ToyLink:
    """One connection to the server; every call fails once it is broken."""

    def __init__(self, server: ToyServer) -> None:
        self._server = server
        self._error: OSError | None = None
        self._wakeup = asyncio.Event()

    @property
    def broken(self) -> bool:
        return self._error is not None

    def _fail(self, error: OSError) -> None:
        self._error = error
        self._server._forget(self)
        self._wakeup.set()

    def _check(self) -> ToyServer:
        if self._error is not None:
            raise self._error
        return self._server

    def declare(self, queue: str, *, exclusive: bool) -> None:
        server = self._check()
        server._queues.setdefault(queue, deque())
        if exclusive:
            server._owners[queue] = self

    def publish(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Put every item on every queue, all or nothing."""
        server = self._check()
        for name, queue in server._queues.items():
            if len(queue) + len(items) > server.queue_limit:
                raise QueueFullError(f"queue {name!r} is full ({server.queue_limit} messages)")
        for queue in server._queues.values():
            queue.extend((channel, data, 1) for channel, data in items)
        server._wake()

    async def receive(self, queue: str, limit: int = 100) -> list[Item]:
        """Wait for messages on `queue` and take up to `limit` of them."""
        while True:
            items = self._check()._queues.get(queue, deque())
            if items:
                return [items.popleft() for _ in range(min(limit, len(items)))]
            self._wakeup.clear()
            await self._wakeup.wait()

    def requeue(self, queue: str, item: Item) -> None:
        server = self._check()
        if queue in server._queues:
            server._queues[queue].appendleft(item)
            server._wake()

    def dead_letter(self, fields: dict[str, str | bytes]) -> None:
        self._check().dead_letters.append(fields)

    def close(self) -> None:
        if not self.broken:
            self._fail(ConnectionResetError("link closed"))

    # --8<-- [end:server]


# The transport: what this page is about.
# --8<-- [start:delivery]
class ToyDelivery(DeliveryBase):
    """A message read from a queue, settled through the link that read it."""

    __slots__ = ("_link", "_queue")

    def __init__(self, link: ToyLink, queue: str, item: Item) -> None:
        channel, data, delivery_count = item
        super().__init__(channel, data, delivery_count)
        self._link = link
        self._queue = queue

    async def _ack(self) -> None:
        """Nothing to do: the server forgot the message when it was read."""

    async def _release(self) -> None:
        self._link.requeue(self._queue, (self.channel, self.data, self.delivery_count + 1))

    async def _dead_letter(self, reason: str, description: str) -> None:
        record = DeadLetterRecord.of(
            self.channel, self.data, reason, description, self.delivery_count
        )
        self._link.dead_letter(record.fields())

    # --8<-- [end:delivery]


# --8<-- [start:subscription]
class ToySubscription(ReconnectingSubscription[ToyDelivery]):
    """One queue on the server, read through a link of its own and filtered
    by the glob: with a group, the queue is shared by the group's members and
    outlives its links; without one, it is exclusive to the link."""

    logger = logging.getLogger("examples.toy_transport")
    transient = (ConnectionError, PermissionError)

    def __init__(self, broker: ToyBroker, pattern: str, group: str | None) -> None:
        super().__init__(pattern, group, broker=broker)
        self._server = broker.server
        self._glob = GlobPattern(pattern)
        self._queue = f"{group}:{pattern}" if group is not None else uuid.uuid4().hex
        self._link: ToyLink | None = None

    async def _connect(self) -> None:
        link = await self._server.connect()
        link.declare(self._queue, exclusive=self.group is None)
        self._link = link

    async def _receive(self) -> list[ToyDelivery]:
        assert self._link is not None
        link, deliveries = self._link, []
        for item in await link.receive(self._queue):
            if self._glob.matches(item[0]):
                deliveries.append(ToyDelivery(link, self._queue, item))
        return deliveries  # a message matching no pattern is dropped, never dead-lettered

    async def _disconnect(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None

    def _fatal(self, error: BaseException) -> BaseException | None:
        if isinstance(error, PermissionError):
            return CredentialError(f"{self!r}: {error}; check the credential")
        return None

    # --8<-- [end:subscription]


# --8<-- [start:broker]
class ToyBroker(BrokerLifecycle):
    """The broker contract over a `ToyServer`.

    ```python
    server = ToyServer()
    async with ToyBroker(server, channel_prefix="shop") as broker:
        consumer = EventConsumer(broker=broker, event_map=events)
        await consumer.subscribe("shop:notification_event:*", group="billing")
    ```
    """

    delivery_guarantee = DeliveryGuarantee.AT_MOST_ONCE

    def __init__(self, server: ToyServer, *, channel_prefix: str = "mediator") -> None:
        super().__init__()
        self.server = server
        self.channel_prefix = channel_prefix
        self._publisher: ToyLink | None = None

    async def _link(self) -> ToyLink:
        if self._publisher is None or self._publisher.broken:
            self._publisher = await self.server.connect()
        return self._publisher

    async def _open(self) -> None:
        with map_errors("connecting to the toy server", {PermissionError: CredentialError}):
            await self._link()

    async def _close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None

    async def send_message(self, message: Message) -> None:
        await self.send_messages([message])

    async def send_messages(self, messages: Sequence[Message]) -> None:
        items = [(channel_for(self.channel_prefix, m), encode_message(m)) for m in messages]
        with map_errors(
            f"publishing {len(items)} message(s) to the toy server",
            {PermissionError: CredentialError, (OSError, QueueFullError): PublishError},
        ):
            (await self._link()).publish(items)

    async def subscribe(self, pattern: str, *, group: str | None = None) -> ToySubscription:
        subscription = ToySubscription(self, pattern, group)
        try:
            with map_errors(
                f"subscribing to {pattern!r} on the toy server",
                {PermissionError: CredentialError, OSError: BrokerUnavailableError},
            ):
                await subscription.open()
        except BaseException:
            await subscription.close()
            raise
        return subscription

    async def dead_letters(self) -> list[DeadLetterRecord]:
        """The server's dead letters (the most recent `dead_letter_limit`), oldest first."""
        return [DeadLetterRecord.from_fields(fields) for fields in self.server.dead_letters]

    # --8<-- [end:broker]
