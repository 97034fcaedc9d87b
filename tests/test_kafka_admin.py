"""The topics a Kafka publish needs (brokers/kafka/_admin.py), without a
server: created with the broker's partitions and replicas, an existing one
left as it is, and what a refusal or a missing topic says."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import errors as aiokafka_errors

from brokers.kafka._admin import create_or_check_topics
from mediator import PublishError


class Admin:
    """aiokafka's admin client, as far as topics are made or checked."""

    def __init__(self, existing: set[str], refusals: dict[str, int] | None = None) -> None:
        self.existing = existing
        self.refusals = refusals or {}
        self.created: list[tuple[str, int, int]] = []

    async def describe_topics(self) -> list[dict[str, Any]]:
        return [{"topic": topic} for topic in sorted(self.existing)]

    async def create_topics(self, new: list[Any]) -> Any:
        errors = []
        for topic in new:
            self.created.append((topic.name, topic.num_partitions, topic.replication_factor))
            if topic.name in self.refusals:
                code = self.refusals[topic.name]
            elif topic.name in self.existing:
                code = aiokafka_errors.TopicAlreadyExistsError.errno
            else:
                code = aiokafka_errors.NoError.errno
            errors.append((topic.name, code, None))
        return SimpleNamespace(topic_errors=errors)


async def test_topics_are_created_with_the_partitions_and_replicas_asked_for() -> None:
    admin = Admin(existing=set())
    await create_or_check_topics(
        admin, ["shop.a", "shop.b"], create=True, partitions=3, replication_factor=2
    )
    assert admin.created == [("shop.a", 3, 2), ("shop.b", 3, 2)]


async def test_a_topic_that_exists_already_is_used_as_it_is() -> None:
    admin = Admin(existing={"shop.a"})
    await create_or_check_topics(admin, ["shop.a"], create=True, partitions=3, replication_factor=1)


async def test_a_refused_topic_names_the_topic_the_error_and_what_to_change() -> None:
    refused = aiokafka_errors.InvalidReplicationFactorError
    admin = Admin(existing=set(), refusals={"shop.b": refused.errno})
    with pytest.raises(PublishError) as raised:
        await create_or_check_topics(
            admin, ["shop.a", "shop.b"], create=True, partitions=3, replication_factor=5
        )
    text = str(raised.value)
    assert "Kafka refused to create the topic shop.b: InvalidReplicationFactorError" in text
    assert "change partitions / replication_factor" in text


async def test_without_create_topics_a_missing_topic_is_named_and_nothing_created() -> None:
    admin = Admin(existing={"shop.a"})
    with pytest.raises(PublishError, match=r"the topic\(s\) shop.b, shop.c do not exist"):
        await create_or_check_topics(
            admin, ["shop.c", "shop.a", "shop.b"], create=False, partitions=3, replication_factor=1
        )
    assert admin.created == []
    await create_or_check_topics(
        admin, ["shop.a"], create=False, partitions=3, replication_factor=1
    )
