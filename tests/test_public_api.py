"""The public names are importable as the docs give them, and every __all__ is honest."""

from __future__ import annotations

import importlib
import types
from typing import TypeVar

import pytest

import mediator

DESIGNED = [
    "Mediator",
    "Request",
    "Response",
    "RequestHandler",
    "RequestMap",
    "Event",
    "DomainEvent",
    "NotificationEvent",
    "ECSTEvent",
    "EventHandler",
    "EventMap",
    "EventEmitter",
    "Message",
    "MiddlewareChain",
]


@pytest.mark.parametrize("name", DESIGNED)
def test_designed_names_are_exported(name: str) -> None:
    assert name in mediator.__all__
    assert getattr(mediator, name).__name__ == name


@pytest.mark.parametrize("module_name", ["mediator", "mediator.transport"])
def test_all_lists_exactly_the_public_exports(module_name: str) -> None:
    # Re-export modules, as anyio checks its own: every public name is in
    # __all__ and every name in __all__ is there.
    module = importlib.import_module(module_name)
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(module.__all__) == public


def test_testing_exports_what_it_defines() -> None:
    import mediator.testing as testing

    defined = {
        name
        for name, value in vars(testing).items()
        if not name.startswith("_")
        and not isinstance(value, TypeVar)
        and getattr(value, "__module__", None) == testing.__name__
    }
    assert defined <= set(testing.__all__)
    assert all(hasattr(testing, name) for name in testing.__all__)


def test_applications_transport_authors_and_tests_each_have_their_module() -> None:
    import mediator.testing
    import mediator.transport

    # What only a transport author needs stays out of the application namespace.
    for name in ("BrokerLifecycle", "ReconnectingSubscription", "DeliveryBase", "map_errors"):
        assert name in mediator.transport.__all__
        assert name not in mediator.__all__
    for name in ("CapturingBroker", "wait_until", "wait_for_event", "dead_letters"):
        assert name in mediator.testing.__all__
        assert name not in mediator.__all__


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("mediator.container", "DIContainer"),
        ("mediator.container", "RodiContainer"),
        ("brokers.memory", "InMemoryMessageBroker"),
        ("brokers.redis", "RedisMessageBroker"),
        ("brokers.redis", "RedisStreamMessageBroker"),
        ("brokers.azure", "AzureMessageBroker"),
        ("brokers.rabbitmq", "RabbitMQMessageBroker"),
        ("brokers.kafka", "KafkaMessageBroker"),
    ],
)
def test_module_level_names(module: str, name: str) -> None:
    imported = importlib.import_module(module)
    assert name in imported.__all__
    assert isinstance(getattr(imported, name), type)


def test_redis_pubsub_keeps_diators_name() -> None:
    from brokers.redis import RedisMessageBroker, RedisPubSubMessageBroker

    assert RedisMessageBroker is RedisPubSubMessageBroker


def test_every_broker_is_named_transport_message_broker_and_old_names_still_import() -> None:
    import brokers.memory
    import brokers.redis

    for module in ("memory", "redis", "azure", "rabbitmq", "kafka"):
        imported = importlib.import_module(f"brokers.{module}")
        named = [name for name in imported.__all__ if name.endswith("Broker")]
        assert named, module
        assert all(name.endswith("MessageBroker") for name in named), named
    assert brokers.redis.RedisPubSubBroker is brokers.redis.RedisPubSubMessageBroker
    assert brokers.redis.RedisStreamBroker is brokers.redis.RedisStreamMessageBroker
    assert brokers.memory.InMemoryMessageBroker.__name__ == "InMemoryMessageBroker"


def test_every_broker_reads_its_dead_letters_with_the_contracts_signature() -> None:
    import inspect

    from brokers.azure import AzureMessageBroker
    from brokers.kafka import KafkaMessageBroker
    from brokers.memory import InMemoryMessageBroker
    from brokers.rabbitmq import RabbitMQMessageBroker
    from brokers.redis import RedisPubSubMessageBroker, RedisStreamMessageBroker
    from mediator.transport import DeadLetterStore

    assert isinstance(InMemoryMessageBroker(), DeadLetterStore)
    for broker in (
        AzureMessageBroker,
        KafkaMessageBroker,
        InMemoryMessageBroker,
        RabbitMQMessageBroker,
        RedisPubSubMessageBroker,
        RedisStreamMessageBroker,
    ):
        limit = inspect.signature(broker.dead_letters).parameters["limit"]
        assert limit.kind is inspect.Parameter.KEYWORD_ONLY, broker
        assert limit.default is None, broker


def test_names_for_transport_authors_moved_out_of_mediator_still_import_with_a_warning() -> None:
    import mediator
    import mediator.transport

    for name in ("Delivery", "SubscribingBroker", "channel_for", "encode_message"):
        assert name not in mediator.__all__
        assert name in mediator.transport.__all__
        with pytest.warns(DeprecationWarning, match=f"from mediator.transport import {name}"):
            assert getattr(mediator, name) is getattr(mediator.transport, name)
    assert "Settled" in mediator.__all__
