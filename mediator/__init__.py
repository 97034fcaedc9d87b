"""mediator-toolkit: a CQRS mediator for asyncio.

```python
from mediator import Mediator, RequestMap, EventMap, EventEmitter
```
"""

from mediator._broker import MessageBroker as MessageBroker
from mediator._circuit import CircuitBreaker as CircuitBreaker
from mediator._circuit import CircuitBreakerInterceptor as CircuitBreakerInterceptor
from mediator._circuit import CircuitBreakerMiddleware as CircuitBreakerMiddleware
from mediator._circuit import CircuitOpenError as CircuitOpenError
from mediator._circuit import CircuitState as CircuitState
from mediator._codec import MessageCodec as MessageCodec
from mediator._consumer import ConsumerStats as ConsumerStats
from mediator._consumer import EventConsumer as EventConsumer
from mediator._container import Container as Container
from mediator._container import Resolver as Resolver
from mediator._context import correlation_scope as correlation_scope
from mediator._context import current_correlation_id as current_correlation_id
from mediator._context import current_message as current_message
from mediator._emitter import EventEmitter as EventEmitter
from mediator._event_map import EventBinding as EventBinding
from mediator._event_map import EventMap as EventMap
from mediator._events import DomainEvent as DomainEvent
from mediator._events import ECSTEvent as ECSTEvent
from mediator._events import Event as Event
from mediator._events import EventHandler as EventHandler
from mediator._events import EventType as EventType
from mediator._events import NotificationEvent as NotificationEvent
from mediator._events import RaisesEvents as RaisesEvents
from mediator._events import event_name as event_name
from mediator._exceptions import BrokerUnavailableError as BrokerUnavailableError
from mediator._exceptions import CredentialError as CredentialError
from mediator._exceptions import DecodeFailure as DecodeFailure
from mediator._exceptions import EntityNotFoundError as EntityNotFoundError
from mediator._exceptions import EventBindingError as EventBindingError
from mediator._exceptions import EventCycleError as EventCycleError
from mediator._exceptions import MediatorError as MediatorError
from mediator._exceptions import MessageDecodeError as MessageDecodeError
from mediator._exceptions import MessageTooLargeError as MessageTooLargeError
from mediator._exceptions import ModelBuildError as ModelBuildError
from mediator._exceptions import NoMessageBrokerError as NoMessageBrokerError
from mediator._exceptions import PublishError as PublishError
from mediator._exceptions import RequestBindingError as RequestBindingError
from mediator._exceptions import SubscriptionLostError as SubscriptionLostError
from mediator._exceptions import TransportError as TransportError
from mediator._handling import Settled as Settled
from mediator._interceptors import Consuming as Consuming
from mediator._interceptors import Interceptor as Interceptor
from mediator._interceptors import Publishing as Publishing
from mediator._mediator import Mediator as Mediator
from mediator._message import Message as Message
from mediator._middlewares import Handle as Handle
from mediator._middlewares import LoggingMiddleware as LoggingMiddleware
from mediator._middlewares import Middleware as Middleware
from mediator._middlewares import MiddlewareChain as MiddlewareChain
from mediator._operations.service import Service as Service
from mediator._operations.service import ServiceStarted as ServiceStarted
from mediator._operations.service import ServiceStopping as ServiceStopping
from mediator._operations.service import SubscriptionSpec as SubscriptionSpec
from mediator._patterns import glob_match as glob_match
from mediator._policies import Backoff as Backoff
from mediator._policies import DeadLetter as DeadLetter
from mediator._policies import ErrorPolicy as ErrorPolicy
from mediator._policies import FailFast as FailFast
from mediator._policies import Ignore as Ignore
from mediator._policies import LogAndContinue as LogAndContinue
from mediator._policies import Retry as Retry
from mediator._publishing import publish_arguments as publish_arguments
from mediator._publishing import publish_result as publish_result
from mediator._requests import Request as Request
from mediator._requests import RequestHandler as RequestHandler
from mediator._requests import RequestMap as RequestMap
from mediator._requests import Response as Response
from mediator._requests import StreamingRequestHandler as StreamingRequestHandler
from mediator._requests import StreamRequest as StreamRequest

__all__ = [
    "Backoff",
    "BrokerUnavailableError",
    "CircuitBreaker",
    "CircuitBreakerInterceptor",
    "CircuitBreakerMiddleware",
    "CircuitOpenError",
    "CircuitState",
    "ConsumerStats",
    "Consuming",
    "Container",
    "CredentialError",
    "DeadLetter",
    "DecodeFailure",
    "DomainEvent",
    "ECSTEvent",
    "EntityNotFoundError",
    "ErrorPolicy",
    "Event",
    "EventBinding",
    "EventBindingError",
    "EventConsumer",
    "EventCycleError",
    "EventEmitter",
    "EventHandler",
    "EventMap",
    "EventType",
    "FailFast",
    "Handle",
    "Ignore",
    "Interceptor",
    "LogAndContinue",
    "LoggingMiddleware",
    "Mediator",
    "MediatorError",
    "Message",
    "MessageBroker",
    "MessageCodec",
    "MessageDecodeError",
    "MessageTooLargeError",
    "Middleware",
    "MiddlewareChain",
    "ModelBuildError",
    "NoMessageBrokerError",
    "NotificationEvent",
    "PublishError",
    "Publishing",
    "RaisesEvents",
    "Request",
    "RequestBindingError",
    "RequestHandler",
    "RequestMap",
    "Resolver",
    "Response",
    "Retry",
    "Service",
    "ServiceStarted",
    "ServiceStopping",
    "Settled",
    "StreamRequest",
    "StreamingRequestHandler",
    "SubscriptionLostError",
    "SubscriptionSpec",
    "TransportError",
    "correlation_scope",
    "current_correlation_id",
    "current_message",
    "event_name",
    "glob_match",
    "publish_arguments",
    "publish_result",
]

_FOR_TRANSPORTS = frozenset(
    {
        "BatchMessageBroker",
        "DEFAULT_MAX_MESSAGE_SIZE",
        "Delivery",
        "DeliveryGuarantee",
        "SubscribingBroker",
        "Subscription",
        "channel_for",
        "encode_message",
    }
)
"""Names for transport authors that `mediator` exported before they went to
`mediator.transport` only: still importable from here, with a warning."""


def __getattr__(name: str) -> object:
    if name in _FOR_TRANSPORTS:
        import warnings

        from mediator import transport

        warnings.warn(
            f"mediator.{name} is for transport authors and moved to mediator.transport: "
            f"import it from there (from mediator.transport import {name})",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(transport, name)
    raise AttributeError(f"module 'mediator' has no attribute {name!r}")
