"""Kafka administration: the admin client, the topics a publish needs (made
or checked), and stopping any client quietly."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import errors as aiokafka_errors  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

from mediator.transport import PublishError, quote

__all__ = ["create_or_check_topics", "start_admin", "stop_client"]

logger = logging.getLogger("mediator.brokers.kafka")


async def start_admin(servers: Sequence[str], options: Mapping[str, Any]) -> Any:
    """A started admin client; closed again if it does not start."""
    admin = AIOKafkaAdminClient(bootstrap_servers=servers, **options)
    try:
        await admin.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await admin.close()
        raise
    return admin


async def create_or_check_topics(
    admin: Any,
    topics: Sequence[str],
    *,
    create: bool,
    partitions: int,
    replication_factor: int,
) -> None:
    """Create `topics` (one that exists already is left as it is), or with
    `create` False check that they exist; raises PublishError otherwise."""
    if not create:
        existing = {meta["topic"] for meta in await admin.describe_topics()}
        absent = sorted(set(topics) - existing)
        if absent:
            raise PublishError(
                f"the topic(s) {quote(', '.join(absent), 300)} do not exist and this broker "
                "does not create topics (create_topics=False); create them, or let the "
                "broker create them"
            )
        return
    response = await admin.create_topics(
        [NewTopic(topic, partitions, replication_factor) for topic in topics]
    )
    for topic, code, text in response.topic_errors:
        error = aiokafka_errors.for_code(code)
        if error not in (aiokafka_errors.NoError, aiokafka_errors.TopicAlreadyExistsError):
            raise PublishError(
                f"Kafka refused to create the topic {quote(topic, 300)}: "
                f"{error.__name__} {quote(str(text or ''), 300)}; create it yourself, "
                "or change partitions / replication_factor"
            )


async def stop_client(client: Any) -> None:
    """Stop (or close) an aiokafka client, if any, logging what fails."""
    if client is None:
        return
    try:
        await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())
    except Exception:  # the connection is gone already
        logger.debug("closing a Kafka client failed", exc_info=True)
