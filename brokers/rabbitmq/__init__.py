"""RabbitMQ: a durable topic exchange per prefix, a quorum queue per consumer
group, at least once for groups.

Lifecycle, reconnection and settle-once come from `mediator.transport`; this
package holds what aio-pika needs. The behaviour is described in
docs/rabbitmq.md.
"""

try:
    import aio_pika  # noqa: F401  # the `rabbitmq` extra
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "brokers.rabbitmq needs aio-pika: pip install 'mediator-toolkit[rabbitmq]'"
    ) from exc

from brokers.rabbitmq._broker import DEFAULT_HEARTBEAT as DEFAULT_HEARTBEAT
from brokers.rabbitmq._broker import DEFAULT_PREFETCH as DEFAULT_PREFETCH
from brokers.rabbitmq._broker import RabbitMQMessageBroker as RabbitMQMessageBroker
from brokers.rabbitmq._dead_letters import DEAD_LETTER_HEADER as DEAD_LETTER_HEADER
from brokers.rabbitmq._dead_letters import UNROUTABLE as UNROUTABLE
from brokers.rabbitmq._naming import binding_key as binding_key
from brokers.rabbitmq._subscription import RabbitMQDelivery as RabbitMQDelivery
from brokers.rabbitmq._subscription import RabbitMQSubscription as RabbitMQSubscription

# DEFAULT_HEARTBEAT, DEAD_LETTER_HEADER and UNROUTABLE are importable from
# here too, outside __all__: docs/rabbitmq.md describes what they stand for.
__all__ = [
    "DEFAULT_PREFETCH",
    "RabbitMQDelivery",
    "RabbitMQMessageBroker",
    "RabbitMQSubscription",
    "binding_key",
]
