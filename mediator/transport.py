"""What a transport author needs, and nothing an application needs.

A transport (a module in `brokers/`, or your own) is built from these
pieces: it implements the broker contract (`SubscribingBroker`), settles
`Delivery` objects, and leaves to the kit what every transport shares.

```python
from mediator.transport import BrokerLifecycle, DeliveryBase, ReconnectingSubscription
```

- `BrokerLifecycle`: ``start()``/``stop()``/``async with``, closing every
  subscription concurrently, and the client only when the broker built it.
- `ReconnectingSubscription`: the receive loop that reconnects with a capped
  backoff after a transient error, logs the outage and the return, and
  stops with a `TransportError` when retrying cannot help.
- `DeliveryBase`: a delivery settled exactly once (ack, release, dead letter).
- `DeadLetterRecord`: the one shape of a dead letter on every broker, with
  the body bounded to 64 KiB plus its size and SHA-256.
- `map_errors`: the SDK's exceptions into the library's tree.
- `GlobPattern`: the channel glob, matched as Redis does, for transports
  that filter in process.

The "Writing a transport" page of the docs builds a toy transport on it.
"""

from mediator._broker import BatchMessageBroker as BatchMessageBroker
from mediator._broker import DeadLetterQueue as DeadLetterQueue
from mediator._broker import DeadLetterStore as DeadLetterStore
from mediator._broker import Delivery as Delivery
from mediator._broker import DeliveryGuarantee as DeliveryGuarantee
from mediator._broker import MessageBroker as MessageBroker
from mediator._broker import SubscribingBroker as SubscribingBroker
from mediator._broker import Subscription as Subscription
from mediator._dead_letters import REPLAY_COUNT_HEADER as REPLAY_COUNT_HEADER
from mediator._dead_letters import DeadLetterRecord as DeadLetterRecord
from mediator._dead_letters import TruncatedDeadLetterError as TruncatedDeadLetterError
from mediator._dead_letters import replay_count_of as replay_count_of
from mediator._dead_letters import replayable as replayable
from mediator._delivery import DeliveryBase as DeliveryBase
from mediator._error_mapping import ErrorRow as ErrorRow
from mediator._error_mapping import ErrorTable as ErrorTable
from mediator._error_mapping import being_cancelled as being_cancelled
from mediator._error_mapping import map_errors as map_errors
from mediator._exceptions import BrokerUnavailableError as BrokerUnavailableError
from mediator._exceptions import CredentialError as CredentialError
from mediator._exceptions import EntityNotFoundError as EntityNotFoundError
from mediator._exceptions import MediatorError as MediatorError
from mediator._exceptions import MessageTooLargeError as MessageTooLargeError
from mediator._exceptions import PublishError as PublishError
from mediator._exceptions import SubscriptionLostError as SubscriptionLostError
from mediator._exceptions import TransportError as TransportError
from mediator._group_members import GroupMember as GroupMember
from mediator._group_members import GroupMembers as GroupMembers
from mediator._lifecycle import BrokerLifecycle as BrokerLifecycle
from mediator._lifecycle import close_all as close_all
from mediator._limits import DEAD_LETTER_BODY_LIMIT as DEAD_LETTER_BODY_LIMIT
from mediator._limits import QUOTE_LIMIT as QUOTE_LIMIT
from mediator._limits import quote as quote
from mediator._message import DEFAULT_MAX_MESSAGE_SIZE as DEFAULT_MAX_MESSAGE_SIZE
from mediator._message import Message as Message
from mediator._message import channel_for as channel_for
from mediator._message import encode_message as encode_message
from mediator._patterns import GlobPattern as GlobPattern
from mediator._patterns import glob_after_prefix as glob_after_prefix
from mediator._patterns import glob_characters as glob_characters
from mediator._policies import Backoff as Backoff
from mediator._subscription import RECONNECT as RECONNECT
from mediator._subscription import ReconnectingSubscription as ReconnectingSubscription
from mediator._subscription import Reconnection as Reconnection

__all__ = [
    "DEAD_LETTER_BODY_LIMIT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "QUOTE_LIMIT",
    "RECONNECT",
    "REPLAY_COUNT_HEADER",
    "Backoff",
    "BatchMessageBroker",
    "BrokerLifecycle",
    "BrokerUnavailableError",
    "CredentialError",
    "DeadLetterQueue",
    "DeadLetterRecord",
    "DeadLetterStore",
    "Delivery",
    "DeliveryBase",
    "DeliveryGuarantee",
    "EntityNotFoundError",
    "ErrorRow",
    "ErrorTable",
    "GlobPattern",
    "GroupMember",
    "GroupMembers",
    "MediatorError",
    "Message",
    "MessageBroker",
    "MessageTooLargeError",
    "PublishError",
    "ReconnectingSubscription",
    "Reconnection",
    "SubscribingBroker",
    "Subscription",
    "SubscriptionLostError",
    "TransportError",
    "TruncatedDeadLetterError",
    "being_cancelled",
    "channel_for",
    "close_all",
    "encode_message",
    "glob_after_prefix",
    "glob_characters",
    "map_errors",
    "quote",
    "replay_count_of",
    "replayable",
]
