"""Kafka: the broker, which builds the aiokafka clients (a producer, an admin
client, a consumer per subscription) and ties publishing, topics,
subscriptions and dead letters to them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Literal, Self

from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]

from brokers.kafka._admin import create_or_check_topics, start_admin, stop_client
from brokers.kafka._dead_letters import (
    dead_letter_of,
    live,
    read_topic,
    removal_of,
    replayed_record,
)
from brokers.kafka._errors import kafka_errors
from brokers.kafka._naming import (
    check_prefix,
    consumer_group,
    dead_letter_topic,
    servers_of,
    servers_of_url,
    topic_name,
)
from brokers.kafka._producer import (
    Record,
    publish_error,
    records_of,
    send_records,
    start_producer,
)
from brokers.kafka._subscription import KafkaDelivery, KafkaSubscription
from mediator.transport import (
    DEFAULT_MAX_MESSAGE_SIZE,
    BrokerLifecycle,
    DeadLetterRecord,
    DeliveryGuarantee,
    MediatorError,
    Message,
    quote,
    replay_count_of,
    replayable,
)

__all__ = ["KafkaMessageBroker", "StartFrom"]

StartFrom = Literal["new", "beginning"]

_PRODUCER_KEYS = {
    "bootstrap_servers": "pass the servers as the broker's first argument",
    "enable_idempotence": "use the broker's idempotence= keyword",
    "value_serializer": "the broker writes the envelope bytes itself",
    "key_serializer": "the broker writes the partition key itself",
}
_CONSUMER_KEYS = {
    "bootstrap_servers": "pass the servers as the broker's first argument",
    "group_id": "pass the group to subscribe(pattern, group=...)",
    "enable_auto_commit": "the broker commits what was handled itself",
    "auto_offset_reset": "use the broker's start_from= keyword",
    "metadata_max_age_ms": "use the broker's discovery_interval= keyword",
    "value_deserializer": "the consumer decodes the envelope bytes itself",
    "key_deserializer": "the broker reads keys as bytes",
}
"""The aiokafka options the broker sets itself, and what to pass instead."""


class KafkaMessageBroker(BrokerLifecycle):
    """Publishes envelopes to Kafka topics and reads them by pattern.

    ```python
    broker = KafkaMessageBroker("kafka-1:9092,kafka-2:9092", channel_prefix="shop")
    # or
    broker = KafkaMessageBroker.from_url("kafka://kafka-1:9092,kafka-2:9092", "shop")
    ```

    The broker builds its aiokafka clients and closes them on `stop()`:
    `client_options` go to every one of them, `producer_options` and
    `consumer_options` to the producer and the consumers only.
    """

    delivery_guarantee = DeliveryGuarantee.AT_LEAST_ONCE

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str] = "127.0.0.1:9092",
        *,
        channel_prefix: str = "mediator",
        create_topics: bool = True,
        partitions: int = 3,
        replication_factor: int = 1,
        idempotence: bool = True,
        start_from: StartFrom = "new",
        ordered: bool = True,
        discovery_interval: float = 5.0,
        commit_interval: float = 1.0,
        prefetch: int = 100,
        dead_letter_limit: int = 10_000,
        timeout: float = 30.0,
        client_options: Mapping[str, Any] | None = None,
        producer_options: Mapping[str, Any] | None = None,
        consumer_options: Mapping[str, Any] | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        check_prefix(channel_prefix)
        if start_from not in ("new", "beginning"):
            raise ValueError(f"start_from must be 'new' or 'beginning', got {start_from!r}")
        for name, value in (
            ("partitions", partitions),
            ("replication_factor", replication_factor),
            ("prefetch", prefetch),
            ("dead_letter_limit", dead_letter_limit),
        ):
            if value < 1:
                raise ValueError(f"KafkaMessageBroker({name}={value}): must be at least 1")
        for name, seconds in (
            ("discovery_interval", discovery_interval),
            ("commit_interval", commit_interval),
            ("timeout", timeout),
        ):
            if seconds <= 0:
                raise ValueError(f"KafkaMessageBroker({name}={seconds}): must be above 0 seconds")
        for options, reserved in (
            (producer_options or {}, _PRODUCER_KEYS),
            (consumer_options or {}, _CONSUMER_KEYS),
            (client_options or {}, _PRODUCER_KEYS | _CONSUMER_KEYS),
        ):
            for key in options:
                if key in reserved:
                    raise ValueError(f"the option {key!r} is the broker's to set: {reserved[key]}")
        super().__init__(max_message_size=max_message_size)
        self.bootstrap_servers = servers_of(bootstrap_servers)
        self.channel_prefix = channel_prefix
        self.create_topics = create_topics
        """Create a topic on its first publish; False: it must exist."""
        self.partitions = partitions
        """Partitions of a topic the broker creates (the dead-letter topic gets one)."""
        self.replication_factor = replication_factor
        """Replicas of a topic the broker creates."""
        self.idempotence = idempotence
        """An idempotent producer (no duplicates from its own retries); Tansu 0.6 has none."""
        self.start_from = start_from
        """Where a group with no committed offset starts on the topics that exist."""
        self.ordered = ordered
        """Records of one partition handled one at a time, in order."""
        self.discovery_interval = discovery_interval
        """Seconds between metadata refreshes: how soon a new topic is read."""
        self.commit_interval = commit_interval
        """Seconds between a group subscription's commits."""
        self.prefetch = prefetch
        """Records a partition holds ahead of its handlers before it is fetched
        from again (plus what one fetch brings, max_partition_fetch_bytes)."""
        self.dead_letter_limit = dead_letter_limit
        """The most dead letters `dead_letters()` returns (the newest)."""
        self.timeout = timeout
        """Seconds `start()`, `subscribe()` and `dead_letters()` wait for Kafka."""
        self.dead_letter_topic = dead_letter_topic(channel_prefix)
        self.client_options = dict(client_options or {})
        self.producer_options = dict(producer_options or {})
        self.consumer_options = dict(consumer_options or {})
        session = self.consumer_options.get("session_timeout_ms")
        if session is not None and "heartbeat_interval_ms" not in self.consumer_options:
            # aiokafka's heartbeat (3 s) outlasts a short session: the group
            # would expire each member between heartbeats and rebalance for ever.
            self.consumer_options["heartbeat_interval_ms"] = max(1, int(session) // 3)
        self._owns_client = True  # every aiokafka client here is the broker's own
        self._producer: Any = None
        self._admin_client: Any = None
        self._lock = asyncio.Lock()
        self._known: set[str] = set()
        """Topics known to exist: made or checked by this broker."""
        self._topics: dict[tuple[str, str], str] = {}

    @classmethod
    def from_url(cls, url: str, channel_prefix: str = "mediator", **options: Any) -> Self:
        """A broker for ``kafka://host:port[,host:port]``; `options` are the
        constructor's keywords."""
        return cls(servers_of_url(url), channel_prefix=channel_prefix, **options)

    def __repr__(self) -> str:
        return f"<KafkaMessageBroker {','.join(self.bootstrap_servers)} {self.channel_prefix!r}>"

    def group_id(self, group: str) -> str:
        """The Kafka consumer group of `subscribe(..., group=group)`:
        ``{prefix}.{group}``, so that applications sharing a cluster never
        share a group by accident."""
        return consumer_group(self.channel_prefix, group)

    def topic_for(self, message: Message) -> str:
        """The topic `message` is published to: ``{prefix}.{message_type}.{message_name}``."""
        key = (message.message_type, message.message_name)
        topic = self._topics.get(key)
        if topic is None:
            topic = topic_name(self.channel_prefix, message.message_type, message.message_name)
            if len(self._topics) >= 10_000:
                self._topics.clear()
            self._topics[key] = topic
        return topic

    # -- publish -----------------------------------------------------------

    async def send_message(self, message: Message) -> None:
        """Publish one envelope; raises PublishError when Kafka does not take it."""
        await self.send_messages((message,))

    async def send_messages(self, messages: Sequence[Message]) -> None:
        """Publish a batch in order: every record handed to the producer
        without waiting, then all awaited (acknowledged by every in-sync
        replica); those cut off with their connection are sent once more."""
        if not messages:
            return
        records = records_of(messages, self.topic_for, self.encode)
        try:
            if any(record[0] not in self._known for record in records):
                await self._ensure_topics({record[0] for record in records})
            await send_records(self._started_producer, records)
        except MediatorError:
            raise
        except Exception as exc:
            raise publish_error(
                messages, exc, idempotence=self.idempotence, servers=self.bootstrap_servers
            ) from exc

    async def _ensure_topics(self, topics: Iterable[str], partitions: int | None = None) -> None:
        missing = [topic for topic in topics if topic not in self._known]
        if not missing:
            return
        await create_or_check_topics(
            await self._admin(),
            missing,
            create=self.create_topics,
            partitions=partitions or self.partitions,
            replication_factor=self.replication_factor,
        )
        self._known.update(missing)

    async def _started_producer(self) -> Any:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                self._producer = await start_producer(
                    self.bootstrap_servers,
                    idempotence=self.idempotence,
                    options={**self.client_options, **self.producer_options},
                )
        return self._producer

    async def _admin(self) -> Any:
        if self._admin_client is not None:
            return self._admin_client
        async with self._lock:
            if self._admin_client is None:
                self._admin_client = await start_admin(self.bootstrap_servers, self.client_options)
        return self._admin_client

    def _new_consumer(self, group: str | None) -> Any:
        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=group,
            enable_auto_commit=False,
            # Where nothing is committed and nothing was chosen: the first record.
            auto_offset_reset="earliest",
            metadata_max_age_ms=int(self.discovery_interval * 1000),
            **{**self.client_options, **self.consumer_options},
        )

    # -- subscribe ---------------------------------------------------------

    async def subscribe(self, pattern: str, *, group: str | None = None) -> KafkaSubscription:
        """Read the topics whose channel matches `pattern`, in consumer group
        `group` (or on its own: new records only); returns once Kafka has
        given it its partitions."""
        subscription = KafkaSubscription(self, pattern, group)
        try:
            doing = f"subscribing to {quote(repr(pattern), 200)}"
            with kafka_errors(doing, self.bootstrap_servers):
                await subscription.open()
        except BaseException:
            await subscription.close()
            raise
        return subscription

    # -- dead letters --------------------------------------------------------

    async def _send_dead_letter(
        self, delivery: KafkaDelivery, reason: str, description: str
    ) -> None:
        dead = DeadLetterRecord.of(
            delivery.channel,
            delivery.data,
            reason,
            description,
            delivery.delivery_count,
            replay_count=replay_count_of(dict(delivery.record.headers or ())),
        )
        await self._produce(dead_letter_of(delivery.record, dead, self.dead_letter_topic))

    async def _produce(self, record: Record) -> None:
        """Produce one record and wait for its acknowledgement."""
        topic, value, key, headers = record
        await self._ensure_topics((topic,), partitions=1)
        producer = await self._started_producer()
        await (await producer.send(topic, value, key=key, headers=headers))

    async def _live_dead_letters(self) -> list[tuple[Any, DeadLetterRecord]]:
        with kafka_errors(f"reading {self.dead_letter_topic}", self.bootstrap_servers):
            async with asyncio.timeout(self.timeout):
                records = await read_topic(
                    await self._admin(), self._dead_letter_consumer, self.dead_letter_topic
                )
        return live(records)

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetterRecord]:
        """The newest `limit` (default `dead_letter_limit`) records of
        ``{prefix}.dead-letter``, oldest first (as far as the topic's
        retention kept them), leaving out those replayed or purged."""
        found = [dead for _, dead in await self._live_dead_letters()]
        return found[-(self.dead_letter_limit if limit is None else limit) :]

    async def replay_dead_letters(
        self, records: Iterable[DeadLetterRecord]
    ) -> AsyncIterator[DeadLetterRecord]:
        """Produce each of `records` again to its source topic (its value,
        key and headers, the replay counted); once Kafka acknowledged it,
        append a marker that removes it from ``{prefix}.dead-letter``, and
        yield it. Records no longer there are skipped."""
        whole = replayable(records)
        if not whole:
            return
        sources = {dead.id: record for record, dead in await self._live_dead_letters()}
        for dead in whole:
            source = sources.get(dead.id)
            if source is None:
                continue
            with kafka_errors(f"replaying dead letter {dead.id}", self.bootstrap_servers):
                async with asyncio.timeout(self.timeout):
                    await self._produce(replayed_record(source, dead))
                    await self._produce(removal_of(dead.id, self.dead_letter_topic, "replayed"))
            yield dead

    async def purge_dead_letters(self, records: Iterable[DeadLetterRecord]) -> int:
        """Append a marker removing each of `records` that is still in
        ``{prefix}.dead-letter``; how many were."""
        there = {dead.id for _, dead in await self._live_dead_letters()}
        removed = 0
        for dead in records:
            if dead.id in there:
                with kafka_errors(f"purging dead letter {dead.id}", self.bootstrap_servers):
                    async with asyncio.timeout(self.timeout):
                        await self._produce(removal_of(dead.id, self.dead_letter_topic, "purged"))
                there.discard(dead.id)
                removed += 1
        return removed

    def _dead_letter_consumer(self) -> Any:
        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            enable_auto_commit=False,
            **{**self.client_options, **self.consumer_options},
        )

    # -- lifecycle ---------------------------------------------------------

    async def _open(self) -> None:
        with kafka_errors("connecting", self.bootstrap_servers):
            async with asyncio.timeout(self.timeout):
                await self._admin()

    async def _close_client(self) -> None:
        producer, self._producer = self._producer, None
        admin, self._admin_client = self._admin_client, None
        await asyncio.gather(stop_client(producer), stop_client(admin))
        self._known.clear()
