"""The public names are importable as DESIGN.md fixes them, and __all__ is honest."""

from __future__ import annotations

import importlib
import types

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


def test_all_lists_exactly_the_public_exports() -> None:
    public = {
        name
        for name, value in vars(mediator).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(mediator.__all__) == public


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("mediator.container", "DIContainer"),
        ("brokers.memory", "InMemoryMessageBroker"),
        ("brokers.redis", "RedisMessageBroker"),
        ("brokers.redis", "RedisStreamBroker"),
        ("brokers.azure", "AzureMessageBroker"),
    ],
)
def test_module_level_names(module: str, name: str) -> None:
    imported = importlib.import_module(module)
    assert name in imported.__all__
    assert getattr(imported, name).__name__ == name
