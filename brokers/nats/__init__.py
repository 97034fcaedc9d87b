"""NATS JetStream: a stream per prefix, a durable pull consumer per group,
at least once, with JetStream's duplicate window keyed by the message id.

Lifecycle, reconnection and settle-once come from `mediator.transport`; this
package holds what nats-py needs. The behaviour is described in
docs/nats.md.
"""

try:
    import nats  # noqa: F401  # the `nats` extra
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("brokers.nats needs nats-py: pip install 'mediator-toolkit[nats]'") from exc

from brokers.nats._broker import DEFAULT_DUPLICATE_WINDOW as DEFAULT_DUPLICATE_WINDOW
from brokers.nats._broker import DEFAULT_PREFETCH as DEFAULT_PREFETCH
from brokers.nats._broker import NatsMessageBroker as NatsMessageBroker
from brokers.nats._dead_letters import DEAD_LETTER_HEADER as DEAD_LETTER_HEADER
from brokers.nats._naming import subject_filter as subject_filter
from brokers.nats._subscription import NatsDelivery as NatsDelivery
from brokers.nats._subscription import NatsSubscription as NatsSubscription

__all__ = [
    "DEAD_LETTER_HEADER",
    "DEFAULT_DUPLICATE_WINDOW",
    "DEFAULT_PREFETCH",
    "NatsDelivery",
    "NatsMessageBroker",
    "NatsSubscription",
    "subject_filter",
]
