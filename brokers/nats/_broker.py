"""NATS: the broker, tying the connection, the stream, publishing, the
subscriptions and the dead letters together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Literal, Self
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from brokers.nats._dead_letters import (
    MESSAGE_ID_HEADER,
    dead_letter_headers,
    read_dead_letters,
    replayed_headers,
    stored_dead_letter,
)
from brokers.nats._errors import ERRORS, ensure_stream, publish_error, raise_if_cancelled
from brokers.nats._groups import Groups
from brokers.nats._naming import Layout, check_options, headers_of, servers_of_url
from brokers.nats._subscription import NatsSubscription
from mediator.transport import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Backoff,
    BrokerLifecycle,
    BrokerUnavailableError,
    DeadLetterRecord,
    DeliveryGuarantee,
    Message,
    PublishError,
    quote,
    replayable,
)

__all__ = ["DEFAULT_DUPLICATE_WINDOW", "DEFAULT_PREFETCH", "NatsMessageBroker"]

logger = logging.getLogger("mediator.brokers.nats")

DEFAULT_PREFETCH = 64
"""Messages a subscription asks JetStream for in one fetch."""
DEFAULT_DUPLICATE_WINDOW = 120.0
"""Seconds JetStream remembers a ``Nats-Msg-Id`` (its own default, 2
minutes): a message published again within it is acknowledged and dropped."""
REDELIVERY_BACKOFF = Backoff(initial=0.5, multiplier=2.0, maximum=30.0, jitter=0.2)
"""How long JetStream holds a released message back, by its delivery count:
the consumer's own redelivery backoff (0.5 s, 1 s, 2 s, ... up to 30 s, ±20 %)."""
StartFrom = Literal["new", "beginning"]
SDK_ERRORS = (nats.errors.Error, OSError, TimeoutError)


class NatsMessageBroker(BrokerLifecycle):
    """Publishes envelopes to a JetStream stream; consumes with pull consumers.

    ```python
    import nats
    client = await nats.connect("nats://localhost:4222")
    broker = NatsMessageBroker(client, channel_prefix="shop")
    # or, a connection of the broker's own:
    broker = NatsMessageBroker.from_url("nats://localhost:4222", "shop")
    ```

    A client passed in stays yours to configure and close; `from_url`
    builds one the broker owns (reconnecting for ever).
    """

    delivery_guarantee = DeliveryGuarantee.AT_LEAST_ONCE

    def __init__(
        self,
        client: Client | None = None,
        channel_prefix: str = "mediator",
        *,
        prefetch: int = DEFAULT_PREFETCH,
        ack_wait: float = 30.0,
        fetch_timeout: float = 2.0,
        max_ack_pending: int = 1000,
        duplicate_window: float = DEFAULT_DUPLICATE_WINDOW,
        storage: Literal["file", "memory"] = "file",
        replicas: int = 1,
        max_age: float | None = None,
        max_bytes: int | None = None,
        create_stream: bool = True,
        start_from: StartFrom = "new",
        ephemeral_inactivity: float = 60.0,
        publish_timeout: float = 10.0,
        timeout: float = 10.0,
        dead_letter_limit: int = 10_000,
        redelivery_backoff: Backoff = REDELIVERY_BACKOFF,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        layout = Layout(channel_prefix)
        check_options(
            {
                "start_from": (start_from, ("new", "beginning")),
                "storage": (storage, ("file", "memory")),
            },
            counts={
                "prefetch": prefetch,
                "max_ack_pending": max_ack_pending,
                "replicas": replicas,
                "dead_letter_limit": dead_letter_limit,
            },
            seconds={
                "ack_wait": ack_wait,
                "fetch_timeout": fetch_timeout,
                "duplicate_window": duplicate_window,
                "ephemeral_inactivity": ephemeral_inactivity,
                "publish_timeout": publish_timeout,
                "timeout": timeout,
            },
        )
        if client is not None and not isinstance(client, Client):
            raise TypeError(
                f"NatsMessageBroker needs a nats-py client (await nats.connect(...)), got "
                f"{type(client).__name__}; or use NatsMessageBroker.from_url(url)"
            )
        super().__init__(max_message_size=max_message_size)
        self.channel_prefix = channel_prefix
        self.prefetch = prefetch
        """Messages a subscription fetches at once (held in process, kept alive)."""
        self.ack_wait = ack_wait
        """Seconds JetStream waits for an ack before it redelivers; a delivery
        in process gets an in-progress ack every third of it."""
        self.fetch_timeout = fetch_timeout
        """Seconds a fetch waits for messages; an idle subscription checks
        its consumer is still there at this interval."""
        self.max_ack_pending = max_ack_pending
        """Messages a consumer has out unacknowledged, all its members together."""
        self.duplicate_window = duplicate_window
        """Seconds the stream remembers each ``Nats-Msg-Id`` (the message id)."""
        self.storage = storage
        self.replicas = replicas
        self.max_age = max_age
        """Seconds the stream keeps a message; None: no limit."""
        self.max_bytes = max_bytes
        """Bytes the stream keeps (the oldest go first); None: no limit."""
        self.create_stream = create_stream
        """Make the stream when it is missing; False: it must exist."""
        self.start_from = start_from
        """Where a new group's consumer starts: new messages, or every one the stream keeps."""
        self.ephemeral_inactivity = ephemeral_inactivity
        """Seconds the server keeps a subscription's ephemeral consumer after
        its last fetch (how long it may reconnect and miss nothing)."""
        self.publish_timeout = publish_timeout
        self.timeout = timeout
        """Seconds `start()`, `subscribe()` and the dead-letter calls wait for NATS."""
        self.dead_letter_limit = dead_letter_limit
        """How many dead letters ``{prefix}.dead-letter`` keeps (the newest)."""
        self.redelivery_backoff = redelivery_backoff
        """The delay a released message waits at JetStream (``nak``), by its delivery count."""
        self.unmatched = 0
        """Messages acknowledged because they matched no subscription's glob (of the group)."""
        self._layout = layout
        self._groups = Groups(layout)
        self._client = client
        self._js: JetStreamContext | None = None if client is None else client.jetstream()
        self._servers: list[str] = []
        self._connect_options: dict[str, Any] = {}
        self._lock = asyncio.Lock()
        self._stream_ready = False
        self._last_error: Exception | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        channel_prefix: str = "mediator",
        *,
        connect_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Self:
        """A broker with its own connection to ``nats://[user:password@]host:port[,host:port]``
        (``tls://`` for TLS), opened by `start()` (or the first use) and
        closed by `stop()`; it reconnects for ever. `connect_options` go to
        ``nats.connect`` (``tls=`` an SSL context, ``user_credentials=`` a
        credentials file, ``token=``, ``nkeys_seed=``, ``name=``...);
        `options` are the broker's own keywords."""
        broker = cls(None, channel_prefix, **options)
        broker._servers = servers_of_url(url)
        broker._connect_options = {
            "name": f"mediator {channel_prefix}",
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "connect_timeout": 5,
            **(connect_options or {}),
        }
        broker._owns_client = True
        return broker

    def __repr__(self) -> str:
        return f"<NatsMessageBroker {self.address or 'unconnected'} {self.channel_prefix!r}>"

    # -- names ---------------------------------------------------------------

    @property
    def address(self) -> str:
        """The servers, without credentials, for messages and logs."""
        if self._servers:
            return ",".join(urlsplit(s).netloc.rpartition("@")[2] for s in self._servers)
        client = self._client
        url = client.connected_url if client is not None else None
        return f"{url.hostname}:{url.port}" if url is not None else ""

    @property
    def stream(self) -> str:
        """The stream of the prefix: the prefix with ``.`` as ``_``."""
        return self._layout.stream

    @property
    def dead_letter_subject(self) -> str:
        """Where dead letters go: ``{prefix}.dead-letter``, in the prefix's stream."""
        return self._layout.dead_letter_subject

    def subject_for(self, message: Message) -> str:
        """The subject `message` is published to: ``{prefix}.{message_type}.{message_name}``."""
        return self._layout.subject_of(message)

    def durable_for(self, group: str) -> str:
        """The durable consumer every `subscribe(..., group=group)` reads from."""
        return self._layout.durable(group)

    @property
    def client(self) -> Client:
        """The nats-py client (from `from_url`: once started)."""
        if self._client is None:
            raise RuntimeError("this NatsMessageBroker connects on start(); await broker.start()")
        return self._client

    # -- connection and stream -----------------------------------------------

    async def _jetstream(self) -> JetStreamContext:
        if self._js is not None:
            return self._js
        async with self._lock:
            if self._js is None:
                where = f"connecting to NATS at {self.address}"
                self._last_error = None
                try:
                    with ERRORS.mapped(where, BrokerUnavailableError):
                        async with asyncio.timeout(self.timeout):
                            self._client = await nats.connect(
                                self._servers,
                                error_cb=self._on_error,
                                disconnected_cb=self._on_disconnected,
                                reconnected_cb=self._on_reconnected,
                                **self._connect_options,
                            )
                except BrokerUnavailableError as exc:
                    last = self._latest_error()
                    if not isinstance(exc.__cause__, TimeoutError) or last is None:
                        raise
                    lifted = ERRORS.lift(last, where, BrokerUnavailableError)
                    raise type(lifted)(
                        f"{lifted}; no connection within {self.timeout} s: check that "
                        "nats-server runs there and the address is right"
                    ) from last
                self._js = self._client.jetstream()
        return self._js

    def _latest_error(self) -> Exception | None:  # set by `_on_error` meanwhile
        return self._last_error

    async def _on_error(self, error: Exception) -> None:
        self._last_error = error
        if self._js is None:  # still connecting: said once it gives up
            logger.debug("connecting %r: %s", self, quote(repr(error), 300))
            return
        logger.warning("NATS connection of %r: %s", self, quote(repr(error), 300))

    async def _on_disconnected(self) -> None:
        if self._client is None or self._client.is_closed:
            return  # closed by stop()
        logger.warning("%r lost its NATS connection; nats-py reconnects", self)

    async def _on_reconnected(self) -> None:
        logger.warning("%r is connected to NATS again", self)
        for subscription in list(self._subscriptions):
            if isinstance(subscription, NatsSubscription):
                subscription._reconnected()  # pull again now, not after the pull's deadline

    async def _ensure_stream(self, js: JetStreamContext) -> bool:
        """Make sure the stream exists (making it when allowed); True when it
        was made now."""
        if self._stream_ready:
            return False
        config = api.StreamConfig(
            name=self.stream,
            description=f"mediator channels of prefix {self.channel_prefix}",
            subjects=[self._layout.subjects],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType(self.storage),
            num_replicas=self.replicas,
            duplicate_window=self.duplicate_window,
            max_age=self.max_age,
            max_bytes=self.max_bytes,
            discard=api.DiscardPolicy.OLD,
        )
        made = await ensure_stream(js, config, create=self.create_stream)
        self._stream_ready = True
        return made

    async def _ready(self) -> JetStreamContext:
        js = await self._jetstream()
        if not self._stream_ready:
            with ERRORS.mapped(f"checking stream {self.stream!r}", BrokerUnavailableError):
                async with asyncio.timeout(self.timeout):
                    await self._ensure_stream(js)
        return js

    async def _open(self) -> None:
        await self._ready()

    # -- publish -------------------------------------------------------------

    async def send_message(self, message: Message) -> None:
        """Publish one envelope and wait for JetStream's acknowledgement."""
        js = self._js if self._stream_ready else None
        js = js or await self._ready()
        outgoing = (self.subject_for(message), self.encode(message), headers_of(message))
        try:  # the common case, without a coroutine of ours around it
            await js.publish(*outgoing[:2], timeout=self.publish_timeout, headers=outgoing[2])
        except SDK_ERRORS as exc:
            await self._after_failure(js, *outgoing, exc)

    async def send_messages(self, messages: Sequence[Message]) -> None:
        """Publish a batch concurrently, in order, and wait for every
        acknowledgement. A message published again with the same message id
        within `duplicate_window` is acknowledged and dropped by JetStream.

        Raises PublishError (the first failure) saying what to check; the
        others of the batch may have been stored."""
        if not messages:
            return
        if len(messages) == 1:
            await self.send_message(messages[0])
            return
        js = await self._ready()
        outgoing = [(self.subject_for(m), self.encode(m), headers_of(m)) for m in messages]
        publish, timeout = js.publish, self.publish_timeout
        results = await asyncio.gather(
            *(publish(s, d, timeout=timeout, headers=h) for s, d, h in outgoing),
            return_exceptions=True,
        )
        for one, result in zip(outgoing, results, strict=True):
            if isinstance(result, SDK_ERRORS):
                await self._after_failure(js, *one, result)
            elif isinstance(result, BaseException):
                raise result

    async def _publish(
        self, js: JetStreamContext, subject: str, data: bytes, headers: dict[str, str]
    ) -> None:
        try:
            await js.publish(subject, data, timeout=self.publish_timeout, headers=headers)
        except SDK_ERRORS as exc:
            await self._after_failure(js, subject, data, headers, exc)

    async def _after_failure(
        self, js: JetStreamContext, subject: str, data: bytes, headers: dict[str, str], exc: Any
    ) -> None:
        """A publish failed with `exc`: when no stream captured the subject
        (deleted under us), make it again and publish once more; else raise
        the `PublishError` saying what to check."""
        raise_if_cancelled(exc)
        if isinstance(exc, nats.js.errors.NoStreamResponseError):
            self._stream_ready = False
            if self.create_stream:
                with ERRORS.mapped(f"making stream {self.stream!r}", PublishError):
                    await self._ensure_stream(js)
                try:
                    await js.publish(subject, data, timeout=self.publish_timeout, headers=headers)
                    return
                except SDK_ERRORS as again:
                    raise_if_cancelled(again)
                    exc = again
        raise publish_error(
            f"publishing message {headers.get(MESSAGE_ID_HEADER)} to {quote(subject, 300)}",
            exc,
            stream=self.stream,
            subjects=self._layout.subjects,
            address=self.address,
            publish_timeout=self.publish_timeout,
            duplicate_window=self.duplicate_window,
        ) from exc

    async def _publish_dead_letter(self, record: DeadLetterRecord, source: Msg) -> None:
        js = await self._ready()
        headers = dead_letter_headers(record, source)
        await self._publish(js, self.dead_letter_subject, record.data, headers)
        try:
            await js.purge_stream(
                self.stream, subject=self.dead_letter_subject, keep=self.dead_letter_limit
            )
        except Exception as exc:
            logger.warning(
                "could not trim %s to %d dead letters: %s",
                self.dead_letter_subject,
                self.dead_letter_limit,
                quote(repr(exc), 200),
            )

    # -- subscribe -----------------------------------------------------------

    async def subscribe(self, pattern: str, *, group: str | None = None) -> NatsSubscription:
        """Consume the messages whose channel matches `pattern`: from the
        group's durable pull consumer (made when missing, shared by all the
        group's members and patterns), or from an ephemeral consumer of its
        own (new messages only) without a group. Returns once the consumer
        exists: what is published from then on is delivered."""
        if group is not None:
            self._layout.check_group(group)
        subscription = NatsSubscription(self, pattern, group)
        try:
            with ERRORS.mapped(
                f"subscribing to {quote(pattern, 200)} on NATS", BrokerUnavailableError
            ):
                await subscription.open()
        except BaseException:
            await subscription.close()
            raise
        return subscription

    # -- dead letters --------------------------------------------------------

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetterRecord]:
        """Up to `limit` (default `dead_letter_limit`) records of
        ``{prefix}.dead-letter``, oldest first; they stay there."""
        with ERRORS.mapped(f"reading {self.dead_letter_subject}", BrokerUnavailableError):
            async with asyncio.timeout(self.timeout * 3):
                return await read_dead_letters(
                    await self._ready(),
                    self.stream,
                    self.dead_letter_subject,
                    self.dead_letter_limit if limit is None else limit,
                    self.timeout,
                )

    async def replay_dead_letters(
        self, records: Iterable[DeadLetterRecord]
    ) -> AsyncIterator[DeadLetterRecord]:
        """Publish each of `records` again to its channel's subject (its
        body and headers, the replay counted, a ``Nats-Msg-Id`` of the
        replay's own); once JetStream acknowledged it, delete the dead letter
        and yield it. Records no longer there are skipped."""
        whole = replayable(records)
        js = await self._ready()
        for record in whole:
            what = f"replaying dead letter {record.id} of {self.dead_letter_subject}"
            with ERRORS.mapped(what, BrokerUnavailableError):
                async with asyncio.timeout(self.timeout):
                    stored = await stored_dead_letter(
                        js, self.stream, self.dead_letter_subject, record
                    )
                    if stored is None:
                        continue
                    kind_and_name = record.channel.split(":", 2)
                    subject = self._layout.subject(*kind_and_name[1:3])
                    headers = replayed_headers(stored.headers, record)
                    await self._publish(js, subject, stored.data or b"", headers)
                    await js.delete_msg(self.stream, int(record.id))
            yield record

    async def purge_dead_letters(self, records: Iterable[DeadLetterRecord]) -> int:
        """Delete `records` from ``{prefix}.dead-letter``; how many were there."""
        js = await self._ready()
        removed = 0
        for record in records:
            with ERRORS.mapped(f"purging dead letter {record.id}", BrokerUnavailableError):
                async with asyncio.timeout(self.timeout):
                    stored = await stored_dead_letter(
                        js, self.stream, self.dead_letter_subject, record
                    )
                    if stored is not None:
                        await js.delete_msg(self.stream, int(record.id))
                        removed += 1
        return removed

    # -- lifecycle -----------------------------------------------------------

    async def _close_client(self) -> None:
        client, self._client, self._js = self._client, None, None
        self._stream_ready = False
        if client is not None and not client.is_closed:
            try:
                await client.close()
            except Exception:
                logger.debug("closing the NATS connection failed", exc_info=True)
