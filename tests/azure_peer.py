"""A loopback AMQP 1.0 peer that plays Azure Service Bus for the real ``azure-servicebus`` SDK.

The point is to run the SDK's own connection, send, receive and settlement code without an
Azure namespace: the peer speaks just enough of Service Bus's AMQP dialect (see
``shared/AZURE_AMQP_NOTES.md``) for topics, subscriptions, peek-lock, settlement, dead-letter
sub-queues, peek and lock renewal. Pinned against azure-servicebus 7.15.0 and
python-qpid-proton 0.40.

Threading: the proton container runs in one background thread and owns every AMQP object.
The in-memory broker state is shared with the test's thread under ``self._lock``; the test
side only ever reads copies of it.

Not emulated: scheduled messages, deferred-message retrieval, sessions, rules and filters
(every subscription gets every message), max-delivery-count, TTL, duplicate detection,
transactions, token validation.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, cast

from proton import (
    UNDESCRIBED,
    Array,
    Condition,
    Connection,
    Data,
    DataException,
    Delivery,
    Endpoint,
    Event,
    Link,
    Message,
    Sender,
    symbol,
    timestamp,
    ubyte,
    uint,
    ulong,
)
from proton._reactor import Task
from proton.reactor import ApplicationEvent, Container, EventInjector

MAX_MESSAGE_SIZE = 256 * 1024  # the Standard tier's limit; the SDK sizes batches from it
LOCK_DURATION_MS = 30_000
_LOCK_CHECK = 0.2  # seconds between looks for locks that ran out
_STOP_TIMEOUT = 10.0  # seconds for the reactor thread to finish after stop()
_ACTIVE = Endpoint.LOCAL_ACTIVE | Endpoint.REMOTE_ACTIVE

# Section descriptor codes (AMQP 1.0, part 3.2).
_HEADER, _DELIVERY_ANNOTATIONS, _MESSAGE_ANNOTATIONS = 0x70, 0x71, 0x72
_PROPERTIES, _APPLICATION_PROPERTIES, _DATA = 0x73, 0x74, 0x75
_SECTION_CODES = range(0x70, 0x79)

Outcome = Literal["completed", "abandoned", "deferred", "dead-lettered", "released", "lock-lost"]


@dataclass(frozen=True)
class RecordedMessage:
    """One message as a client sent it to a topic (a batch counts as its messages)."""

    topic: str
    message_id: Any
    subject: str | None
    content_type: str | None
    correlation_id: Any
    application_properties: dict[str, Any]
    body: bytes  # the data sections joined; the SDK always sends its body as data


@dataclass(frozen=True)
class Settlement:
    """What a receiver did with a locked message."""

    lock_token: uuid.UUID
    entity: str  # e.g. "orders/subscriptions/billing", lower case
    sequence_number: int
    outcome: Outcome
    dead_letter_reason: str | None = None
    dead_letter_description: str | None = None


@dataclass
class _Entry:
    """A message held by a subscription or a dead-letter queue."""

    sequence_number: int
    payload: bytes  # the encoded message exactly as the client sent it
    enqueued_ms: int
    delivery_count: int = 0
    lock_token: uuid.UUID | None = None
    locked_until_ms: int = 0
    dead_letter: tuple[str, str] | None = None  # (reason, description)


@dataclass
class _Queue:
    """Messages of one subscription, or of its dead-letter sub-queue, in sequence order."""

    path: str
    entries: dict[int, _Entry] = field(default_factory=dict)
    consumers: list[Sender] = field(default_factory=list)
    dead_letter: _Queue | None = None  # None for a dead-letter queue itself

    def next_available(self) -> _Entry | None:
        return next((e for e in self.entries.values() if e.lock_token is None), None)


@dataclass(frozen=True)
class _Node:
    """What a link is attached to, kept on the proton link object."""

    kind: Literal["cbs", "management", "topic", "queue"]
    path: str


class PeerError(AssertionError):
    """The peer met something it could not handle; raised from ``stop()``."""


# ---------------------------------------------------------------------------------------------
# Encoding. proton's Message always writes its own header (and leaves delivery-count out when
# it is 0, which the SDK reports as None), so messages are rewritten section by section.


def _own(value: Any) -> Any:
    """Copy proton's memoryviews out before the Data object that backs them is freed."""
    if isinstance(value, memoryview):
        return value.tobytes()
    if isinstance(value, dict):
        return {_own(k): _own(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_own(v) for v in value]
    return value


def _split_sections(payload: bytes) -> list[tuple[int, bytes]]:
    """(descriptor code, raw encoded section) for each section of an encoded message."""
    sections: list[tuple[int, bytes]] = []
    rest = payload
    while rest:
        data = Data()
        size = data.decode(rest)
        data.rewind()
        if data.next() != Data.DESCRIBED:
            raise ValueError("not an AMQP message section")
        data.enter()
        data.next()
        descriptor = data.get_object()
        if not isinstance(descriptor, int) or descriptor not in _SECTION_CODES:
            raise ValueError(f"unexpected section descriptor {descriptor!r}")
        sections.append((int(descriptor), rest[:size]))
        rest = rest[size:]
    return sections


def _section_value(raw: bytes) -> Any:
    data = Data()
    data.decode(raw)
    data.rewind()
    data.next()
    data.enter()
    data.next()  # descriptor
    data.next()
    return _own(data.get_object())


def _encode_section(code: int, value: Any) -> bytes:
    data = Data()
    data.put_described()
    data.enter()
    data.put_ulong(code)
    data.put_object(value)
    data.exit()
    return bytes(data.encode())


def _split_transfer(payload: bytes) -> list[bytes]:
    """The messages in one transfer: itself, or the messages of a batch.

    proton's Python API does not expose the transfer's message format (0x80013700 marks a
    batch), so a batch is recognised by its shape: every data section is itself a complete
    encoded message. A single message whose body happens to be an encoded message would be
    mistaken for a batch; tests do not send such bodies.
    """
    datas = [raw for code, raw in _split_sections(payload) if code == _DATA]
    try:
        inner = [bytes(_section_value(raw)) for raw in datas]
        if inner and all(_split_sections(m) for m in inner):
            return inner
    except (ValueError, TypeError, DataException):
        pass
    return [payload]


def _record(topic: str, payload: bytes) -> RecordedMessage:
    # Read from the sections rather than proton's Message, which reports a missing
    # content-type as the symbol 'None'.
    properties: list[Any] = []
    application_properties: dict[Any, Any] = {}
    body: list[bytes] = []
    for code, raw in _split_sections(payload):
        if code == _PROPERTIES:
            properties = list(_section_value(raw) or [])
        elif code == _APPLICATION_PROPERTIES:
            application_properties = dict(_section_value(raw) or {})
        elif code == _DATA:
            body.append(bytes(_section_value(raw)))
    properties += [None] * (7 - len(properties))
    content_type = properties[6]
    return RecordedMessage(
        topic=topic,
        message_id=properties[0],
        subject=properties[3],
        content_type=None if content_type is None else str(content_type),
        correlation_id=properties[5],
        application_properties={str(k): v for k, v in application_properties.items()},
        body=b"".join(body),
    )


def _encode_for_receiver(entry: _Entry, *, locked: bool) -> bytes:
    """The stored message with the header, annotations and properties Service Bus adds."""
    header: list[Any] = [False, ubyte(4), None, False, uint(0)]
    annotations: dict[Any, Any] = {}
    application_properties: bytes | None = None
    properties: list[bytes] = []
    rest: list[bytes] = []  # body and footer, in the order they came
    for code, raw in _split_sections(entry.payload):
        if code == _HEADER:
            sent = _section_value(raw) or []
            header[: len(sent)] = sent
        elif code == _MESSAGE_ANNOTATIONS:
            annotations = dict(_section_value(raw) or {})
        elif code == _PROPERTIES:
            properties.append(raw)
        elif code == _APPLICATION_PROPERTIES:
            application_properties = raw
        elif code != _DELIVERY_ANNOTATIONS:  # those are per hop, never forwarded
            rest.append(raw)
    header[4] = uint(entry.delivery_count)  # written even when 0, see above
    annotations[symbol("x-opt-sequence-number")] = entry.sequence_number
    annotations[symbol("x-opt-enqueued-time")] = timestamp(entry.enqueued_ms)
    if locked:
        annotations[symbol("x-opt-locked-until")] = timestamp(entry.locked_until_ms)
    if entry.dead_letter:
        values = _section_value(application_properties) if application_properties else {}
        values["DeadLetterReason"], values["DeadLetterErrorDescription"] = entry.dead_letter
        application_properties = _encode_section(_APPLICATION_PROPERTIES, values)
    return b"".join(
        [
            _encode_section(_HEADER, header),
            _encode_section(_MESSAGE_ANNOTATIONS, annotations),
            *properties,
            *([application_properties] if application_properties else []),
            *rest,
        ]
    )


def _entity_path(address: str | None) -> str:
    """'amqps://host:port/Orders/Subscriptions/Billing' -> 'orders/subscriptions/billing'."""
    address = address or ""
    if "://" in address:
        address = address.split("://", 1)[1].partition("/")[2]
    return address.strip("/").lower()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _link_of(event: Event) -> Link:
    link = event.link
    if link is None:
        raise PeerError(f"{event.type} came without a link")
    return link


# ---------------------------------------------------------------------------------------------


class AmqpPeer:
    """Topics and subscriptions in memory, served over AMQP 1.0 on 127.0.0.1.

    Use as a context manager; declare subscriptions with ``add_subscription`` before sending.
    A lock outlives the receiver that took it, as on Service Bus: a message left unsettled
    comes back once ``lock_duration`` seconds pass without a renewal, or when the test calls
    ``expire_locks``.

    proton logs "Couldn't send: ConnectionResetError" at ERROR when the SDK drops a socket
    without waiting for the AMQP close handshake; that is harmless.
    """

    def __init__(self, *, lock_duration: float = LOCK_DURATION_MS / 1000) -> None:
        self._lock_duration_ms = int(lock_duration * 1000)
        self._lock = threading.Lock()
        self._topics: dict[str, list[_Queue]] = {}
        self._queues: dict[str, _Queue] = {}
        self._locks: dict[uuid.UUID, tuple[_Queue, _Entry]] = {}
        self._received: list[RecordedMessage] = []
        self._settlements: list[Settlement] = []
        self._renewals: list[uuid.UUID] = []
        self._errors: list[str] = []
        self._failures_to_inject = 0
        self._failures_injected = 0
        self._next_sequence_number = 1
        self._connections: set[Connection] = set()
        self._container = Container(self)
        self._injector = EventInjector()
        self._container.selectable(self._injector)
        # Port 0: the kernel picks a free port, read back from the listening socket.
        self._acceptor = self._container.acceptor("127.0.0.1", cast(Any, 0))
        self._listener = cast(socket.socket, self._acceptor._selectable._delegate)
        self.port: int = self._listener.getsockname()[1]
        self._closed = False
        self._lock_check: Task | None = None
        self._thread = threading.Thread(target=self._run, name="amqp-peer", daemon=True)

    # -- test side ----------------------------------------------------------------------------

    @property
    def connection_string(self) -> str:
        return self.connection_string_via(self.port)

    def connection_string_via(self, port: int) -> str:
        """A connection string for 127.0.0.1:``port``, e.g. a proxy in front of the peer."""
        # UseDevelopmentEmulator=true (lower case) turns TLS off and keeps the port.
        return (
            f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=test;"
            "SharedAccessKey=test;UseDevelopmentEmulator=true"
        )

    def __enter__(self) -> AmqpPeer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(raise_errors=exc is None)

    def stop(self, *, raise_errors: bool = True) -> None:
        """Close every connection and the listener, and join the reactor thread."""
        if self._thread.is_alive():
            self._injector.trigger(ApplicationEvent("peer_stop"))
            self._thread.join(_STOP_TIMEOUT)
            if self._thread.is_alive():
                raise PeerError("the AMQP peer's thread did not stop")
        if not self._closed:
            # proton closes the sockets it served but never the injector's pipe; the listener
            # is closed here too in case the reactor never ran (or died).
            self._closed = True
            self._listener.close()
            for fd in self._injector.pipe:
                os.close(fd)
        if raise_errors and self._errors:
            raise PeerError("; ".join(self._errors))

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def add_topic(self, topic: str) -> None:
        with self._lock:
            self._topics.setdefault(topic.lower(), [])

    def add_subscription(self, topic: str, subscription: str) -> None:
        path = f"{topic}/subscriptions/{subscription}".lower()
        dead_letter = _Queue(f"{path}/$deadletterqueue")
        queue = _Queue(path, dead_letter=dead_letter)
        with self._lock:
            self._topics.setdefault(topic.lower(), []).append(queue)
            self._queues[queue.path] = queue
            self._queues[dead_letter.path] = dead_letter

    def fail_next_sends(self, count: int) -> None:
        """Reject the next ``count`` transfers to a topic with com.microsoft:server-busy."""
        with self._lock:
            self._failures_to_inject = count

    @property
    def failures_injected(self) -> int:
        with self._lock:
            return self._failures_injected

    def received(self, topic: str | None = None) -> list[RecordedMessage]:
        with self._lock:
            return [m for m in self._received if topic is None or m.topic == topic.lower()]

    def settlements(self) -> list[Settlement]:
        with self._lock:
            return list(self._settlements)

    def renewals(self) -> list[uuid.UUID]:
        """Lock tokens whose lock was renewed through $management, in order."""
        with self._lock:
            return list(self._renewals)

    def outcome(self, lock_token: uuid.UUID | str) -> Outcome | None:
        token = uuid.UUID(str(lock_token))
        with self._lock:
            outcomes = [s.outcome for s in self._settlements if s.lock_token == token]
        return outcomes[-1] if outcomes else None

    def message_count(self, topic: str, subscription: str, *, dead_letter: bool = False) -> int:
        path = f"{topic}/subscriptions/{subscription}".lower()
        if dead_letter:
            path += "/$deadletterqueue"
        with self._lock:
            return len(self._queues[path].entries)

    def expire_locks(self, *, dead_letters_only: bool = False) -> None:
        """Act as if every lock ran out (or only those on dead-letter
        sub-queues): the messages come back with delivery-count + 1."""
        with self._lock:
            self._expire(
                [
                    token
                    for token, (queue, _) in self._locks.items()
                    if not dead_letters_only or queue.path.endswith("/$deadletterqueue")
                ]
            )
        self._injector.trigger(ApplicationEvent("peer_pump"))

    def _expire(self, tokens: list[uuid.UUID]) -> None:
        for token in tokens:
            _queue, entry = self._locks.pop(token)
            entry.lock_token = None
            entry.delivery_count += 1

    # -- reactor thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._container.run()
        except Exception as exc:  # the thread must not die silently: stop() reports it
            self._errors.append(f"reactor failed: {exc!r}")

    def _guard(self, event: Event, step: Callable[[Event], object]) -> None:
        """Turn a bug in the peer into a failed test rather than a hung one."""
        try:
            with self._lock:
                step(event)
        except Exception as exc:
            self._errors.append(f"{event.type}: {exc!r}")
            if event.connection is not None:
                event.connection.condition = Condition("amqp:internal-error", repr(exc))
                event.connection.close()

    def on_reactor_init(self, _event: Event) -> None:
        self._lock_check = self._container.schedule(_LOCK_CHECK, self)

    def on_timer_task(self, event: Event) -> None:
        def expire_due(_event: Event) -> None:
            now = _now_ms()
            due = [t for t, (_q, e) in self._locks.items() if e.locked_until_ms <= now]
            if due:
                self._expire(due)
                self._pump_all()

        self._guard(event, expire_due)
        self._lock_check = self._container.schedule(_LOCK_CHECK, self)

    def on_peer_stop(self, _event: Event) -> None:
        if self._lock_check is not None:
            self._lock_check.cancel()
        self._acceptor.close()
        for connection in list(self._connections):
            # Clients are closed by now; anything left is abandoned, so no close handshake.
            transport = connection.transport
            if transport is not None:
                transport.close_head()
                transport.close_tail()
        self._injector.close()

    def on_peer_pump(self, event: Event) -> None:
        self._guard(event, lambda _e: self._pump_all())

    def on_connection_init(self, event: Event) -> None:
        if event.connection is not None:
            self._connections.add(event.connection)

    def on_transport_closed(self, event: Event) -> None:
        if event.connection is not None:
            self._connections.discard(event.connection)

    # Connections and sessions carry no Service Bus semantics: mirror whatever the client does.
    def on_connection_remote_open(self, event: Event) -> None:
        if event.connection is not None:
            event.connection.open()

    def on_connection_remote_close(self, event: Event) -> None:
        if event.connection is not None:
            event.connection.close()

    def on_session_remote_open(self, event: Event) -> None:
        if event.session is not None:
            event.session.open()

    def on_session_remote_close(self, event: Event) -> None:
        if event.session is not None:
            event.session.close()

    def on_link_remote_open(self, event: Event) -> None:
        self._guard(event, self._attach)

    def on_link_remote_close(self, event: Event) -> None:
        link = _link_of(event)
        node: _Node | None = getattr(link, "peer_node", None)
        if node is not None and node.kind == "queue":
            with self._lock:
                consumers = self._queues[node.path].consumers
                consumers[:] = [c for c in consumers if c != link]
        link.close()

    def on_link_flow(self, event: Event) -> None:
        self._guard(event, lambda e: self._pump_all() if _link_of(e).is_sender else None)

    def on_delivery(self, event: Event) -> None:
        self._guard(event, self._on_delivery)

    def _attach(self, event: Event) -> None:
        link = _link_of(event)
        remote = link.remote_target if link.is_receiver else link.remote_source
        path = _entity_path(remote.address)
        node: _Node | None
        if path == "$cbs":
            node = _Node("cbs", path)
        elif path.endswith("/$management"):
            node = _Node("management", path.removesuffix("/$management"))
        elif link.is_receiver and path in self._topics:
            node = _Node("topic", path)
        elif link.is_sender and path in self._queues:
            node = _Node("queue", path)
        else:
            # Refuse the AMQP way: attach without the terminus asked for, then detach.
            link.open()
            link.condition = Condition("amqp:not-found", f"no messaging entity at {path!r}")
            link.close()
            return
        # The SDK detaches unless the reply carries both terminus; echoing its own is enough.
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        if link.is_receiver:
            link.max_message_size = MAX_MESSAGE_SIZE
            link.properties = {
                symbol("com.microsoft:max-message-batch-size"): ulong(MAX_MESSAGE_SIZE)
            }
        link.open()
        link.peer_node = node
        if link.is_receiver:
            link.flow(100)
        elif node.kind == "queue" and isinstance(link, Sender):
            self._queues[path].consumers.append(link)

    def _on_delivery(self, event: Event) -> None:
        delivery = event.delivery
        if delivery is None:
            return
        if delivery.link.is_receiver:
            self._on_transfer(delivery)
        elif delivery.updated:
            self._on_settlement(delivery)

    # A transfer from the client: a message to a topic, or a request to $cbs / $management.
    def _on_transfer(self, delivery: Delivery) -> None:
        link = delivery.link
        chunk = link.recv(delivery.pending)
        buffered: bytes = getattr(delivery, "peer_buffer", b"") + (chunk or b"")
        if delivery.partial:
            delivery.peer_buffer = buffered
            return
        link.advance()
        node: _Node | None = getattr(link, "peer_node", None)
        if node is None:  # sent on a link refused as not-found, before the client saw that
            delivery.settle()
            return
        if link.credit < 50:
            link.flow(100 - link.credit)
        if node.kind == "topic" and self._failures_to_inject > 0:
            self._failures_to_inject -= 1
            self._failures_injected += 1
            delivery.local.condition = Condition(
                "com.microsoft:server-busy", "injected by test", {symbol("injected"): True}
            )
            delivery.update(Delivery.REJECTED)
            delivery.settle()
            return
        if node.kind == "topic":
            self._enqueue(node.path, buffered)
        else:
            request = Message()
            request.decode(buffered)
            reply = self._cbs(request) if node.kind == "cbs" else self._management(node, request)
            self._reply(link.connection, node, reply)
        delivery.update(Delivery.ACCEPTED)
        delivery.settle()

    def _enqueue(self, topic: str, payload: bytes) -> None:
        for message in _split_transfer(payload):
            self._received.append(_record(topic, message))
            sequence_number = self._next_sequence_number
            self._next_sequence_number += 1
            for queue in self._topics[topic]:
                entry = _Entry(sequence_number, message, _now_ms())
                queue.entries[sequence_number] = entry
        self._pump_all()

    def _pump_all(self) -> None:
        """Hand available messages to every consumer with credit, locking each one."""
        for queue in self._queues.values():
            queue.consumers[:] = [
                c for c in queue.consumers if c.state == _ACTIVE and c.transport is not None
            ]
            for link in queue.consumers:
                self._pump(queue, link)

    def _pump(self, queue: _Queue, link: Sender) -> None:
        receive_and_delete = link.remote_snd_settle_mode == Link.SND_SETTLED
        while link.credit > 0 and (entry := queue.next_available()) is not None:
            token = uuid.uuid4()
            entry.lock_token = token
            entry.locked_until_ms = _now_ms() + self._lock_duration_ms
            # The SDK's lock token is UUID(bytes_le=tag); proton cannot read binary tags
            # back, so the token also rides on the delivery object.
            delivery = link.delivery(token.bytes_le)  # type: ignore[arg-type]  # bytes work
            delivery.peer_lock_token = token
            link.send(_encode_for_receiver(entry, locked=not receive_and_delete))
            link.advance()
            if receive_and_delete:
                delivery.settle()
                del queue.entries[entry.sequence_number]
            else:
                self._locks[token] = (queue, entry)
        if link.drain_mode:
            link.drained()

    def _on_settlement(self, delivery: Delivery) -> None:
        """Apply the receiver's outcome, then echo it settled (rcv-settle-mode second).

        A disposition can also arrive settled already, and then there is nothing to echo: the
        SDK releases that way every message it reads while no receive call is running (one
        sent on credit left over from an earlier ``receive_messages``, read while the SDK
        listens for a settlement's echo), and the messages it buffered when it closes. Such a
        released message must come back at once, or it stays locked with no receiver holding it.
        """
        token: uuid.UUID = delivery.peer_lock_token
        state = delivery.remote_state
        held = self._locks.pop(token, None)
        if held is None and delivery.settled:
            delivery.settle()  # the client gave up a lock it no longer had: nothing to answer
            return
        if held is None:
            # Settling a lock that expired (or was settled already) fails like Service Bus.
            delivery.local.condition = Condition("com.microsoft:message-lock-lost", "lock lost")
            delivery.update(Delivery.REJECTED)
            delivery.settle()
            self._settlements.append(Settlement(token, "", 0, "lock-lost"))
            return
        queue, entry = held
        entry.lock_token = None
        reason = description = None
        outcome: Outcome
        if state == Delivery.ACCEPTED:
            outcome = "completed"
            del queue.entries[entry.sequence_number]
        elif state == Delivery.REJECTED:
            outcome = "dead-lettered"
            info: Any = (delivery.remote.condition and delivery.remote.condition.info) or {}
            reason = str(info.get("DeadLetterReason", ""))
            description = str(info.get("DeadLetterErrorDescription", ""))
            del queue.entries[entry.sequence_number]
            if queue.dead_letter is not None:
                entry.dead_letter = (reason, description)
                queue.dead_letter.entries[entry.sequence_number] = entry
        elif state == Delivery.MODIFIED and delivery.remote.undeliverable:
            outcome = "deferred"  # set aside; retrieval by sequence number is not emulated
            del queue.entries[entry.sequence_number]
        elif state == Delivery.MODIFIED:
            outcome = "abandoned"
            entry.delivery_count += 1
        else:  # released: the client never looked at it (e.g. prefetched, then closed)
            outcome = "released"
        self._settlements.append(
            Settlement(token, queue.path, entry.sequence_number, outcome, reason, description)
        )
        if state == Delivery.MODIFIED:
            delivery.local.failed = delivery.remote.failed
            delivery.local.undeliverable = delivery.remote.undeliverable
        # The echoed outcome must carry no error, or the SDK raises on a dead-letter.
        if not delivery.settled:
            delivery.update(state)
        delivery.settle()
        self._pump_all()

    # $cbs and $management answer on the reply link of the same connection.
    def _cbs(self, request: Message) -> Message:
        # Any token is accepted: authorisation is not what these tests are about.
        return Message(
            correlation_id=request.id,
            properties={"status-code": 202, "status-description": "Accepted"},
        )

    def _management(self, node: _Node, request: Message) -> Message:
        properties: dict[Any, Any] = dict(request.properties or {})
        operation = str(properties.get("operation", ""))
        body: dict[str, Any] = {str(k): v for k, v in _own(request.body or {}).items()}
        status, description, value = 200, "OK", cast(Any, None)
        if operation == "com.microsoft:peek-message" and node.path in self._queues:
            start = int(body.get("from-sequence-number", 1))
            count = int(body.get("message-count", 1))
            # By sequence number, as Service Bus peeks, not in the order they arrived.
            held = sorted(self._queues[node.path].entries.items())
            entries = [e for s, e in held if s >= start]
            if entries:
                peeked = [_encode_for_receiver(e, locked=False) for e in entries[:count]]
                value = {"messages": [{"message": m} for m in peeked]}
            else:
                status, description = 204, "No Content"
        elif operation == "com.microsoft:renew-lock":
            tokens = body.get("lock-tokens", [])
            expirations = []
            for raw_token in getattr(tokens, "elements", tokens):
                token = uuid.UUID(str(raw_token))
                held = self._locks.get(token)
                if held is None:
                    return Message(
                        correlation_id=request.id,
                        properties={
                            "statusCode": 410,
                            "statusDescription": "lock lost",
                            "errorCondition": symbol("com.microsoft:message-lock-lost"),
                        },
                    )
                held[1].locked_until_ms = _now_ms() + self._lock_duration_ms
                self._renewals.append(token)
                expirations.append(timestamp(held[1].locked_until_ms))
            value = {"expirations": Array(cast(Any, UNDESCRIBED), Data.TIMESTAMP, *expirations)}
        else:
            status, description = 501, f"{operation} is not emulated"
        return Message(
            correlation_id=request.id,
            properties={"statusCode": status, "statusDescription": description},
            body=value,
        )

    def _reply(self, connection: Connection, node: _Node, reply: Message) -> None:
        link = connection.link_head(Endpoint.LOCAL_ACTIVE)
        while link is not None:
            if link.is_sender and getattr(link, "peer_node", None) == node:
                delivery = link.delivery(f"reply-{uuid.uuid4()}")
                link.send(reply.encode())
                link.advance()
                delivery.settle()
                return
            link = link.next(Endpoint.LOCAL_ACTIVE)
        raise PeerError(f"no reply link for {node}")
