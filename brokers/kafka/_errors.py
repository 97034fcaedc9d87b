"""How aiokafka's errors become the library's, and which of them mean what.

```
aiokafka's errors, OSError, a timeout
├── AUTH_ERRORS: CredentialError, wherever it comes
├── TOO_LARGE: MessageTooLargeError (publishing)
├── CUT_OFF: the produce request sent once more, then PublishError
├── MOVED_ON: a commit that a rebalance overtook, logged
└── any other: BrokerUnavailableError (start, subscribe, dead_letters),
    PublishError (publishing), a new consumer (a running subscription),
    a commit tried again at the next interval
```
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from aiokafka import errors as aiokafka_errors  # type: ignore[import-untyped]

from mediator.transport import (
    BrokerUnavailableError,
    CredentialError,
    ErrorRow,
    ErrorTable,
    quote,
)

__all__ = [
    "AUTH_ERRORS",
    "CUT_OFF",
    "ERRORS",
    "MOVED_ON",
    "TOO_LARGE",
    "TRANSIENT",
    "describe",
    "kafka_errors",
]

TRANSIENT = (aiokafka_errors.KafkaError, OSError)
"""What aiokafka raises for a failure worth trying again after."""
AUTH_ERRORS = (
    aiokafka_errors.AuthenticationFailedError,
    aiokafka_errors.SaslAuthenticationFailed,
    aiokafka_errors.TopicAuthorizationFailedError,
    aiokafka_errors.GroupAuthorizationFailedError,
    aiokafka_errors.ClusterAuthorizationFailedError,
    aiokafka_errors.TransactionalIdAuthorizationFailed,
)
"""A refused credential or right: trying again cannot mend it."""
TOO_LARGE = (aiokafka_errors.MessageSizeTooLargeError, aiokafka_errors.RecordTooLargeError)
CUT_OFF = (aiokafka_errors.RequestTimedOutError, aiokafka_errors.KafkaConnectionError)
"""A produce request left unanswered: no reply within request_timeout_ms (a
connection gone silent), or its connection closed under it."""
MOVED_ON = (
    aiokafka_errors.CommitFailedError,
    aiokafka_errors.IllegalStateError,
    aiokafka_errors.RebalanceInProgressError,
    aiokafka_errors.IllegalGenerationError,
    aiokafka_errors.UnknownMemberIdError,
)
"""Commit errors meaning the partitions are not ours any more (a rebalance)."""


def describe(error: BaseException) -> str:
    """`error` as an error text quotes it."""
    return "no answer in time" if isinstance(error, TimeoutError) else quote(repr(error))


ERRORS = ErrorTable(
    sdk=TRANSIENT,
    rows=[
        ErrorRow(
            AUTH_ERRORS,
            CredentialError,
            "Kafka refused the credential or the right: check client_options "
            "(security_protocol, sasl_*, ssl_context) and the ACLs",
        ),
        ErrorRow(
            TRANSIENT,
            BrokerUnavailableError,
            "check bootstrap_servers and that the brokers run, or raise timeout=",
        ),
    ],
    describe=describe,
)
"""How aiokafka's errors (and a timeout) become the library's, with what to check."""


def kafka_errors(doing: str, servers: Sequence[str]) -> contextlib.AbstractContextManager[None]:
    """`ERRORS` around a call that is `doing` something on Kafka at `servers`."""
    return ERRORS.mapped(f"{doing} on Kafka at {','.join(servers)}")
