"""`brokers.from_url`: one function from a URL to a working broker, for every
scheme, and a clear error for what it cannot build."""

from __future__ import annotations

import importlib
import re
import sys
import uuid

import attrs
import pytest

import brokers
from mediator import EventConsumer, EventEmitter, EventMap, NotificationEvent
from mediator.testing import keep_handled, wait_for_event
from mediator.transport import DeliveryGuarantee, SubscribingBroker


@attrs.frozen(kw_only=True)
class Pinged(NotificationEvent):
    number: int


async def _round_trip(broker: SubscribingBroker, group: str | None) -> None:
    """Publish through an emitter and receive through a consumer on `broker`."""
    events = EventMap()

    @events.bind(Pinged)
    async def handle(event: Pinged) -> None:
        return None

    consumer = keep_handled(EventConsumer(broker=broker, event_map=events))
    await consumer.subscribe(f"{broker.channel_prefix}:notification_event:*", group=group)
    await broker.start()
    try:
        async with consumer:
            await EventEmitter(event_map=events, message_broker=broker).emit(Pinged(number=7))
            received = await wait_for_event(consumer, Pinged, timeout=10)
    finally:
        await broker.stop()
    assert received.number == 7


async def test_memory_url_builds_the_in_memory_broker() -> None:
    from brokers.memory import InMemoryMessageBroker

    broker = brokers.from_url("memory://", channel_prefix="shop", history=5)
    assert isinstance(broker, InMemoryMessageBroker)
    assert (broker.channel_prefix, broker.messages.maxlen) == ("shop", 5)
    await _round_trip(broker, group="billing")


async def test_redis_url_is_pubsub_and_round_trips(redis_url: str, key_prefix: str) -> None:
    from brokers.redis import RedisPubSubMessageBroker

    broker = brokers.from_url(redis_url, channel_prefix=key_prefix)
    assert type(broker) is RedisPubSubMessageBroker
    assert broker.delivery_guarantee is DeliveryGuarantee.AT_MOST_ONCE
    assert broker.owns_client
    await _round_trip(broker, group=None)


async def test_redis_streams_url_round_trips_in_a_group(redis_url: str, key_prefix: str) -> None:
    from brokers.redis import RedisStreamMessageBroker

    url = redis_url.replace("redis://", "redis+streams://", 1)
    broker = brokers.from_url(url, channel_prefix=key_prefix, start_from="beginning")
    assert type(broker) is RedisStreamMessageBroker
    assert broker.delivery_guarantee is DeliveryGuarantee.AT_LEAST_ONCE
    assert broker.start_from == "beginning"
    # The +streams suffix is the library's: redis-py is given the plain scheme.
    assert broker.address == redis_url.removeprefix("redis://").rstrip("/")
    await _round_trip(broker, group="billing")


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("rediss://cache.example:6380/2", None),
        ("unix:///run/redis.sock?db=1", "/run/redis.sock"),
        ("rediss+streams://cache.example:6380/2", None),
        ("unix+streams:///run/redis.sock", "/run/redis.sock"),
    ],
)
def test_every_redis_form_reaches_redis_py(url: str, path: str | None) -> None:
    broker = brokers.from_url(url, channel_prefix="shop")
    streams = "+streams" in url
    assert type(broker).__name__ == (
        "RedisStreamMessageBroker" if streams else "RedisPubSubMessageBroker"
    )
    kwargs = broker.client.connection_pool.connection_kwargs  # type: ignore[attr-defined]
    if path is None:
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("cache.example", 6380, 2)
        assert broker.client.connection_pool.connection_class.__name__ == "SSLConnection"  # type: ignore[attr-defined]
    else:
        assert kwargs["path"] == path


async def test_amqp_url_builds_the_rabbitmq_broker() -> None:
    pytest.importorskip("brokers.rabbitmq", reason="brokers.rabbitmq is not there yet")
    from brokers.rabbitmq import RabbitMQMessageBroker
    from tests.rabbitmq_support import amqp_url

    prefix = f"mtk-url-{uuid.uuid4().hex[:8]}"
    broker = brokers.from_url(amqp_url(), channel_prefix=prefix, prefetch=7)
    assert type(broker) is RabbitMQMessageBroker
    assert (broker.channel_prefix, broker.prefetch, broker.owns_client) == (prefix, 7, True)
    try:
        await _round_trip(broker, group=None)
    finally:
        await _delete_rabbitmq_names(amqp_url(), prefix)


async def _delete_rabbitmq_names(url: str, prefix: str) -> None:
    import aio_pika

    from tests.rabbitmq_support import delete_everything

    connection = await aio_pika.connect(url)
    async with connection:
        await delete_everything(
            connection, [prefix, f"{prefix}.dead-letter"], [f"{prefix}.dead-letter"]
        )


def test_kafka_url_names_every_bootstrap_server() -> None:
    pytest.importorskip("brokers.kafka", reason="brokers.kafka is not there yet")
    from brokers.kafka import KafkaMessageBroker

    broker = brokers.from_url("kafka://k1:9092,k2:9093", channel_prefix="shop")
    assert type(broker) is KafkaMessageBroker
    assert list(broker.bootstrap_servers) == ["k1:9092", "k2:9093"]
    assert broker.channel_prefix == "shop"


AZURE = "Endpoint=sb://ns.example/;SharedAccessKeyName=listen;SharedAccessKey=s3cret"


def test_a_service_bus_connection_string_names_its_topic_by_entity_path() -> None:
    from brokers.azure import AzureMessageBroker

    broker = brokers.from_url(f"{AZURE};EntityPath=orders", max_wait_time=1.0)
    assert type(broker) is AzureMessageBroker
    # The prefix defaults to the topic on Service Bus, as the broker's own constructor says.
    assert (broker.topic_name, broker.channel_prefix, broker.max_wait_time) == (
        "orders",
        "orders",
        1.0,
    )
    assert broker.owns_client


def test_a_service_bus_connection_string_takes_the_topic_as_an_option() -> None:
    broker = brokers.from_url(AZURE, topic="orders", channel_prefix="shop")
    assert (broker.topic_name, broker.channel_prefix) == ("orders", "shop")  # type: ignore[attr-defined]


def test_a_service_bus_connection_string_without_a_topic_says_how_to_name_one() -> None:
    with pytest.raises(ValueError, match="EntityPath=<topic>") as caught:
        brokers.from_url(AZURE)
    assert "s3cret" not in str(caught.value)


def test_a_topic_that_contradicts_the_entity_path_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'orders'.*'billing'"):
        brokers.from_url(f"{AZURE};EntityPath=orders", topic="billing")


async def test_a_service_bus_broker_from_its_connection_string_round_trips() -> None:
    try:
        from tests.azure_peer import AmqpPeer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"python-qpid-proton missing: {exc}")
    with AmqpPeer() as peer:
        peer.add_subscription("orders", "billing")
        broker = brokers.from_url(
            peer.connection_string,
            topic="orders",
            max_wait_time=1.0,
            sender_options={"keep_alive": 0},
        )
        await _round_trip(broker, group="billing")


@pytest.mark.parametrize("url", ["mqtt://localhost:1883", "localhost:6379", "", "http://x"])
def test_an_unknown_scheme_lists_the_known_ones(url: str) -> None:
    with pytest.raises(ValueError, match="use one of memory://, redis://") as caught:
        brokers.from_url(url)
    message = str(caught.value)
    for scheme in ("redis+streams://", "amqp://", "kafka://", "Endpoint=sb://"):
        assert scheme in message


def test_the_password_of_a_bad_url_is_not_repeated() -> None:
    with pytest.raises(ValueError, match=r"user:\*\*\*@host") as caught:
        brokers.from_url("mqtt://user:hunter2@host:1883")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("redis://h:6379/0?password=s3cret", "redis://h:6379/0?password=***"),
        (
            "kafka://h:9092?security_protocol=SASL_SSL&sasl_plain_password=s3cret",
            "kafka://h:9092?security_protocol=SASL_SSL&sasl_plain_password=***",
        ),
        ("redis://u:s3cret@h:6379?password=s3cret", "redis://u:***@h:6379?password=***"),
        ("amqps://h/?auth_token=s3cret&heartbeat=30", "amqps://h/?auth_token=***&heartbeat=30"),
        ("rediss://h?ssl_keyfile_password=s3cret", "rediss://h?ssl_keyfile_password=***"),
        ("kafka://h:9092?SASL_PLAIN_PASSWORD=s3cret", "kafka://h:9092?SASL_PLAIN_PASSWORD=***"),
        ("redis://h?pass%77ord=s3cret", "redis://h?pass%77ord=***"),
        ("redis://h:6379/0?db=2", "redis://h:6379/0?db=2"),
    ],
)
def test_redact_masks_secrets_in_the_query_too(url: str, kept: str) -> None:
    assert brokers.redact(url) == kept


def test_a_missing_extra_is_named_by_the_transport_module(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if redis-py were not installed: the module's own ImportError reaches the caller.
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.delitem(sys.modules, "brokers.redis", raising=False)
    with pytest.raises(ImportError, match=r"mediator-toolkit\[redis\]"):
        brokers.from_url("redis://localhost")
    monkeypatch.undo()
    importlib.import_module("brokers.redis")


def test_from_env_reads_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(brokers.BROKER_URL_VARIABLE, "memory://")
    assert type(brokers.from_env(channel_prefix="a")).__name__ == "InMemoryMessageBroker"
    monkeypatch.delenv(brokers.BROKER_URL_VARIABLE)
    assert brokers.from_env(default="memory://").channel_prefix == "mediator"
    with pytest.raises(LookupError, match="MEDIATOR_BROKER_URL is not set"):
        brokers.from_env()


# -- broker options in the URL's query ------------------------------------------


def test_options_in_the_query_are_typed_and_reach_the_broker() -> None:
    memory = brokers.from_url("memory://?history=5&max_message_size=2048&dead_letter_limit=3")
    assert memory.messages.maxlen == 5  # type: ignore[attr-defined]
    assert memory.max_message_size == 2048  # type: ignore[attr-defined]

    streams = brokers.from_url(
        "redis+streams://127.0.0.1:6379/0?claim_idle=2.5&batch_size=50&socket_timeout=5"
        "&start_from=beginning&silence_timeout=10",
        channel_prefix="shop",
    )
    assert streams.claim_idle == 2.5  # type: ignore[attr-defined]
    assert streams.batch_size == 50  # type: ignore[attr-defined]
    assert streams.start_from == "beginning"  # type: ignore[attr-defined]
    # redis-py's own parameter stays redis-py's.
    pool = streams.client.connection_pool  # type: ignore[attr-defined]
    assert pool.connection_kwargs["socket_timeout"] == 5.0

    kafka = brokers.from_url(
        "kafka://k1:9092,k2:9093?idempotence=false&partitions=6&session_timeout_ms=30000"
        "&security_protocol=SASL_SSL&sasl_mechanism=PLAIN&sasl_plain_username=u"
        "&sasl_plain_password=p",
        channel_prefix="shop",
    )
    assert kafka.bootstrap_servers == ["k1:9092", "k2:9093"]  # type: ignore[attr-defined]
    assert kafka.idempotence is False  # type: ignore[attr-defined]
    assert kafka.consumer_options["session_timeout_ms"] == 30000  # type: ignore[attr-defined]
    # A third of the session unless given: aiokafka's 3 s would outlast a short one.
    assert kafka.consumer_options["heartbeat_interval_ms"] == 10000  # type: ignore[attr-defined]
    assert kafka.client_options["sasl_plain_password"] == "p"  # type: ignore[attr-defined]


def test_an_amqp_url_keeps_aio_pikas_parameters_and_takes_the_brokers() -> None:
    broker = brokers.from_url(
        "amqp://guest:guest@127.0.0.1:5672/?heartbeat=5&prefetch=7&mandatory=true"
    )
    assert broker.prefetch == 7  # type: ignore[attr-defined]
    assert broker.mandatory is True  # type: ignore[attr-defined]
    assert "heartbeat=5" in broker._url  # type: ignore[attr-defined]
    assert "prefetch" not in broker._url  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (
            "redis+streams://h:6379/0?claim_idel=60",
            "'claim_idel' is not an option of a redis+streams:// broker; the URL takes "
            "batch_size, block_ms, claim_idle,",
        ),
        ("kafka://h:9092?idempotence=maybe", "idempotence='maybe' is not true or false"),
        ("memory://?history=-1", "history='-1' is not a whole number, 0 or more"),
        ("kafka://h:9092?start_from=end", "start_from='end' is not 'new' or 'beginning'"),
        ("amqp://u:p@h/?prefetch=1&prefetch=2", "gives 'prefetch' twice"),
    ],
)
def test_a_bad_option_in_the_url_is_refused_naming_it(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        brokers.from_url(url)


def test_a_secret_in_a_bad_option_is_never_repeated() -> None:
    url = "kafka://h:9092?sasl_plain_password=hunter2&bogus=1"
    with pytest.raises(ValueError, match="'bogus' is not an option") as refused:
        brokers.from_url(url)
    assert "hunter2" not in str(refused.value)
    assert "sasl_plain_password=***" in str(refused.value)


def test_an_option_in_the_url_and_as_a_keyword_is_refused() -> None:
    with pytest.raises(ValueError, match="sets 'history', and so does the keyword"):
        brokers.from_url("memory://?history=5", history=6)
