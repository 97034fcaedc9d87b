"""Azure Service Bus: events published to a topic, received from its
subscriptions in peek-lock, at least once.

Lifecycle, reconnection and settle-once come from `mediator.transport`; this
package holds what azure-servicebus needs. The behaviour is described in
docs/azure-service-bus.md.
"""

try:
    import azure.servicebus.aio  # noqa: F401  # the `azure` extra
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "brokers.azure needs azure-servicebus: pip install 'mediator-toolkit[azure]'"
    ) from exc

from brokers.azure._broker import AzureMessageBroker as AzureMessageBroker
from brokers.azure._naming import sql_filter as sql_filter
from brokers.azure._subscription import AzureDelivery as AzureDelivery
from brokers.azure._subscription import AzureSubscription as AzureSubscription
from mediator.transport import CredentialError as CredentialError
from mediator.transport import EntityNotFoundError as EntityNotFoundError

__all__ = [
    "AzureDelivery",
    "AzureMessageBroker",
    "AzureSubscription",
    "CredentialError",
    "EntityNotFoundError",
    "sql_filter",
]
