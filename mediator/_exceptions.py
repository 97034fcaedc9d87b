"""Every error the toolkit raises, in one place.

```
MediatorError
├── RequestBindingError         a request type has no handler, or two
├── EventBindingError           an EventMap binding is malformed
├── EventCycleError             follow-up events that raise each other for ever
├── NoMessageBrokerError        a broker-bound event with no broker configured
├── MessageDecodeError          a received message cannot become an event
│                               (carries .reason and .message_id)
├── MessageTooLargeError        an outgoing message exceeds a transport's limit
├── CircuitOpenError            a circuit breaker refused the call while open
├── SagaError                   a saga cannot be run as asked (mediator.sagas)
│   └── SagaConflictError       another runner changed the saga first
├── TruncatedDeadLetterError    a dead letter that kept only a prefix cannot be replayed
└── TransportError              a broker answered with an error, or did not answer
    ├── PublishError            a message could not be handed to the broker
    ├── BrokerUnavailableError  the broker cannot be reached (start, subscribe)
    ├── CredentialError         the broker refused the credential
    ├── EntityNotFoundError     a topic, queue, stream or subscription does not exist
    └── SubscriptionLostError   a live subscription failed for good; the consumer stops
```

A transport never lets its SDK's own exceptions out of `start()`,
`subscribe()` or a publish: it maps them into this tree
(`mediator.transport.map_errors`), keeping the SDK's error as `__cause__`.
"""

from __future__ import annotations

import enum

__all__ = [
    "BrokerUnavailableError",
    "CredentialError",
    "DecodeFailure",
    "EntityNotFoundError",
    "EventBindingError",
    "EventCycleError",
    "MediatorError",
    "MessageDecodeError",
    "MessageTooLargeError",
    "NoMessageBrokerError",
    "PublishError",
    "RequestBindingError",
    "SubscriptionLostError",
    "TransportError",
]


class MediatorError(Exception):
    """Base class of every error raised by mediator-toolkit."""


class RequestBindingError(MediatorError, LookupError):
    """A request type has no handler bound, or was bound twice."""


class EventBindingError(MediatorError, TypeError):
    """An `EventMap.bind` call was given something it cannot bind."""


class EventCycleError(MediatorError, RuntimeError):
    """Event handlers raised follow-up events that lead back to an event type
    already being processed in the same chain."""


class NoMessageBrokerError(MediatorError, RuntimeError):
    """A NotificationEvent or ECSTEvent was raised but the EventEmitter has no
    message broker to publish it to."""


class TransportError(MediatorError):
    """A broker answered with an error, or could not be reached. The SDK's
    own exception is the `__cause__`."""


class PublishError(TransportError, ConnectionError):
    """A message could not be handed to the broker."""


class BrokerUnavailableError(TransportError, ConnectionError):
    """The broker cannot be reached: wrong address, server down, network gone."""


class CredentialError(TransportError, PermissionError):
    """The broker refused the credential: wrong, expired, or without the right."""


class EntityNotFoundError(TransportError, LookupError):
    """A topic, queue, stream or subscription the call needs does not exist."""


class SubscriptionLostError(TransportError):
    """A live subscription failed in a way retrying cannot mend; the consumer
    that read it stops, and `run()` raises this with the reason."""


class ModelBuildError(MediatorError, TypeError):
    """An event or a request could not be built from the values given (by a
    publishing decorator, say): the text names the field and what was wrong."""


class MessageTooLargeError(MediatorError, ValueError):
    """A single outgoing message is larger than the transport accepts."""


class DecodeFailure(enum.Enum):
    """Why a received message could not be decoded into an event."""

    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    MISSING_KEY = "missing_key"
    BAD_ENVELOPE = "bad_envelope"
    UNKNOWN_NAME = "unknown_name"
    INVALID_PAYLOAD = "invalid_payload"
    ID_MISMATCH = "id_mismatch"
    TOO_LARGE = "too_large"
    TOO_DEEP = "too_deep"
    DUPLICATE_KEY = "duplicate_key"


class MessageDecodeError(MediatorError, ValueError):
    """A received message cannot be turned into a registered event.

    `reason` says which check failed and `message_id` is the envelope's id when
    it could be read (``None`` otherwise), so a consumer can log, count and
    dead-letter the message.
    """

    def __init__(self, reason: DecodeFailure, detail: str, message_id: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.message_id = message_id
        super().__init__(f"{reason.value}: {detail} (message_id={message_id})")
