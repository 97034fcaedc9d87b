"""Redis key and channel names without a server (brokers/redis/_naming.py):
what a producer publishes to, where a consumer and its tools find the
registry and the dead letters, and the names of groups and members."""

from __future__ import annotations

import os
import uuid

import pytest

from mediator.transport import Message, channel_for

try:
    from redis.asyncio import Redis

    from brokers.redis import RedisMessageBroker, RedisPubSubMessageBroker, RedisStreamMessageBroker
    from brokers.redis._naming import (
        PRIVATE_GROUP_PREFIX,
        channel_name,
        consumer_name,
        dead_letter_key,
        private_group,
        registry_key,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise
    pytest.skip(f"redis-py missing: {exc}", allow_module_level=True)

ORDER_ID = uuid.UUID("0b9e4bb4-7a53-4b8e-9d53-3f1e2f7d6a10")
PLACED = Message(
    message_type="notification_event",
    message_name="OrderPlaced",
    message_id=ORDER_ID,
    payload={"order_id": 1},
)


def test_a_message_goes_to_its_logical_channel_on_both_transports() -> None:
    # Patterns are written against the logical channel: it must be the key.
    client = Redis()  # never connects: nothing here sends a command
    expected = channel_for("shop", PLACED)
    assert expected == "shop:notification_event:OrderPlaced"
    assert RedisPubSubMessageBroker(client, "shop").channel(PLACED) == expected
    assert RedisStreamMessageBroker(client, "shop").channel(PLACED) == expected
    assert channel_name("shop", PLACED) == expected


def test_the_diator_layout_ends_with_the_message_id_where_diator_published() -> None:
    broker = RedisMessageBroker.diator_compatible(Redis())
    assert broker.channel(PLACED) == f"python_diator_channel:notification_event:{ORDER_ID}"
    assert channel_name("shop", PLACED, "diator") == f"shop:notification_event:{ORDER_ID}"


def test_the_registry_and_the_dead_letters_have_fixed_keys_under_the_prefix() -> None:
    # Documented keys: operators and scripts read and delete them by name.
    streams = RedisStreamMessageBroker(Redis(), "shop")
    assert streams.registry_key == registry_key("shop") == "shop:streams"
    assert streams.dead_letter_key == dead_letter_key("shop") == "shop:dead-letter"
    assert RedisPubSubMessageBroker(Redis(), "shop").dead_letter_key == "shop:dead-letter"


def test_no_message_is_ever_published_to_the_registry_or_the_dead_letter_key() -> None:
    # Both sit under the prefix, beside the streams; a channel has three parts.
    reserved = {registry_key("shop"), dead_letter_key("shop")}
    for message_type in ("streams", "dead-letter"):
        for message_name in ("", "x"):
            message = Message(message_type=message_type, message_name=message_name, payload={})
            assert channel_name("shop", message) not in reserved


def test_private_groups_are_recognisable_and_never_shared() -> None:
    first, second = private_group(), private_group()
    assert first.startswith(PRIVATE_GROUP_PREFIX)
    assert first.startswith("solo:")  # the docs name it, for XGROUP DESTROY by hand
    assert first != second


def test_member_names_say_which_process_and_differ_per_subscription() -> None:
    first, second = consumer_name(), consumer_name()
    host, pid, _ = first.rsplit(":", 2)
    assert pid == str(os.getpid())
    assert host
    assert first != second
