"""How azure-servicebus errors become the library's, and the backoff between attempts."""

from __future__ import annotations

import contextlib

from azure.servicebus.exceptions import (
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusError,
)

from mediator.transport import (
    Backoff,
    CredentialError,
    EntityNotFoundError,
    ErrorRow,
    ErrorTable,
    TransportError,
)

__all__ = ["ERRORS", "RETRY", "refused", "service_bus_errors"]

RETRY = Backoff(initial=0.2, multiplier=2, maximum=10.0, jitter=0.2)
"""The wait between publish attempts and between receiver reopens."""

ERRORS = ErrorTable(
    sdk=(ServiceBusError,),
    rows=[
        ErrorRow(
            (ServiceBusAuthenticationError, ServiceBusAuthorizationError),
            CredentialError,
            "Azure Service Bus refused the credential: check the connection string or the "
            "credential; it may be wrong, expired, or lack the Send/Listen right on this entity",
        ),
        ErrorRow(
            MessagingEntityNotFoundError,
            EntityNotFoundError,
            "it does not exist in the Service Bus namespace: create it (in the portal, with "
            "az servicebus, or with ServiceBusAdministrationClient)",
        ),
    ],
)
"""A row is a refusal retrying cannot mend; anything else is the error the call site names."""


def refused(entity: str, doing: str, exc: BaseException) -> TransportError | None:
    """The library's error for an SDK error that retrying cannot mend, else None."""
    if ERRORS.row(exc) is None:
        return None
    return ERRORS.lift(exc, f"{doing} {entity}", TransportError)


def service_bus_errors(
    entity: str, doing: str, otherwise: type[TransportError]
) -> contextlib.AbstractContextManager[None]:
    """`ERRORS` around a call that is `doing` something to `entity`."""
    return ERRORS.mapped(f"{doing} {entity}", otherwise)
