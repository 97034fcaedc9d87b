"""Kafka: a topic per logical channel, read through topic-pattern
subscriptions, in consumer groups or on their own, at least once.

Lifecycle, reconnection and settle-once come from `mediator.transport`; this
package holds what aiokafka needs. The behaviour is described in
docs/kafka.md.
"""

try:
    import aiokafka  # type: ignore[import-untyped]  # noqa: F401  # the `kafka` extra
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "brokers.kafka needs aiokafka: pip install 'mediator-toolkit[kafka]'"
    ) from exc

from brokers.kafka._broker import KafkaMessageBroker as KafkaMessageBroker
from brokers.kafka._broker import StartFrom as StartFrom
from brokers.kafka._naming import channel_of_topic as channel_of_topic
from brokers.kafka._naming import topic_pattern as topic_pattern
from brokers.kafka._subscription import KafkaDelivery as KafkaDelivery
from brokers.kafka._subscription import KafkaSubscription as KafkaSubscription

__all__ = [
    "KafkaDelivery",
    "KafkaMessageBroker",
    "KafkaSubscription",
    "StartFrom",
    "channel_of_topic",
    "topic_pattern",
]
