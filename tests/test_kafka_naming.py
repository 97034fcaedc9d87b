"""Kafka names (brokers/kafka/_naming.py), without a server: the topic of
each channel and back, the topics a glob reads, group ids, and the servers
of a ``kafka://`` URL."""

from __future__ import annotations

import re

import pytest

from brokers.kafka import channel_of_topic, topic_pattern
from brokers.kafka._naming import (
    check_prefix,
    consumer_group,
    dead_letter_topic,
    servers_of,
    servers_of_url,
    topic_name,
)
from mediator import PublishError
from mediator.transport import GlobPattern

# -- topics and channels ---------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "kind", "name", "topic"),
    [
        ("shop", "notification_event", "OrderPlaced", "shop.notification_event.OrderPlaced"),
        ("shop", "ecst_event", "Customer", "shop.ecst_event.Customer"),
        ("shop.eu", "notification_event", "user.joined", "shop.eu.notification_event.user.joined"),
        ("a_b-c", "notification_event", "Order-v2_1", "a_b-c.notification_event.Order-v2_1"),
    ],
)
def test_a_channel_has_one_topic_and_the_topic_names_its_channel_back(
    prefix: str, kind: str, name: str, topic: str
) -> None:
    assert topic_name(prefix, kind, name) == topic
    assert channel_of_topic(topic) == f"{prefix}:{kind}:{name}"


@pytest.mark.parametrize("name", ["Order Placed", "Order:Placed", "Bestellung/Eingang", "x" * 240])
def test_an_event_name_kafka_would_refuse_says_to_give_the_class_a_name(name: str) -> None:
    with pytest.raises(PublishError, match="give the event class a name= that fits"):
        topic_name("shop", "notification_event", name)


@pytest.mark.parametrize(
    "topic", ["shop.dead-letter", "__consumer_offsets", "orders", "shop.OrderPlaced"]
)
def test_a_topic_that_holds_no_channel_has_none(topic: str) -> None:
    assert channel_of_topic(topic) is None


@pytest.mark.parametrize("prefix", ["shop", "shop.eu", "team_a-prod", "x" * 200])
def test_a_prefix_of_topic_characters_is_taken(prefix: str) -> None:
    check_prefix(prefix)


@pytest.mark.parametrize("prefix", ["shop:eu", "shop eu", "", "x" * 201, "café"])
def test_a_prefix_that_cannot_start_a_topic_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="cannot start a Kafka topic name"):
        check_prefix(prefix)


def test_the_dead_letter_topic_and_groups_live_under_the_prefix() -> None:
    assert dead_letter_topic("shop") == "shop.dead-letter"
    assert consumer_group("shop", "billing") == "shop.billing"
    assert consumer_group("other", "billing") != consumer_group("shop", "billing")


# -- patterns --------------------------------------------------------------------

CHANNELS = [
    "shop:notification_event:OrderPlaced",
    "shop:notification_event:OrderPaid",
    "shop:ecst_event:Customer",
    "shop:notification_event:user.joined",
    "shop.eu:notification_event:OrderPlaced",
    "other:notification_event:OrderPlaced",
]
GLOBS = [
    "shop:*",
    "shop:notification_event:Order*",
    "shop:*:Order?laced",
    "shop:notification_event:[OU]*",
    "shop:notification_event:[^O]*",
    "shop\\:notification_event:Order*",
    "*:notification_event:OrderPlaced",
    "shop:notification_event:user.joined",
]


@pytest.mark.parametrize("glob", GLOBS)
def test_a_glob_selects_exactly_the_topics_of_the_channels_it_matches(glob: str) -> None:
    regex = re.compile(topic_pattern(glob))
    for channel in CHANNELS:
        topic = channel.replace(":", ".")
        channel_of = channel_of_topic(topic)
        selected = regex.match(topic) is not None and GlobPattern(glob).matches(channel_of or "")
        assert selected == GlobPattern(glob).matches(channel), (glob, channel)


def test_no_subscription_reads_the_dead_letter_topic_or_foreign_topics() -> None:
    for glob in ("shop*", "*", "shop:*"):
        regex = re.compile(topic_pattern(glob))
        assert regex.match("shop.dead-letter") is None
        assert regex.match("__consumer_offsets") is None
    assert channel_of_topic("shop.dead-letter") is None


@pytest.mark.parametrize(
    ("glob", "topic"),
    [
        ("shop:notification_event:Order[PQ]laced", "shop.notification_event.OrderPlaced"),
        ("shop:notification_event:Order[\\]]laced", "shop.notification_event.OrderPlaced"),
        ("shop:notification_event:Order?", "shop.notification_event.OrderX"),
    ],
)
def test_a_set_or_a_question_mark_stands_for_one_character_of_the_topic(
    glob: str, topic: str
) -> None:
    assert re.match(topic_pattern(glob), topic) is not None
    assert re.match(topic_pattern(glob), topic + "s") is None


def test_a_pattern_matches_whole_topic_names_only() -> None:
    regex = re.compile(topic_pattern("shop:notification_event:OrderPlaced"))
    assert regex.match("shop.notification_event.OrderPlaced")
    assert regex.match("shop.notification_event.OrderPlacedAgain") is None
    assert regex.match("shop.notification_event.OrderPlaced.v2") is None


# -- servers ---------------------------------------------------------------------


def test_a_url_lists_every_bootstrap_server_with_the_default_port() -> None:
    assert servers_of_url("kafka://k1:9093,k2") == ["k1:9093", "k2:9092"]
    assert servers_of_url("kafka://k1/") == ["k1:9092"]
    assert servers_of_url("kafka://k1:9093, k2:9094") == ["k1:9093", "k2:9094"]


@pytest.mark.parametrize(
    "url",
    ["redis://k1:9092", "kafka://", "kafka://k1,,k2", "kafka://k1:9092/topic", "k1:9092"],
)
def test_a_url_that_is_not_kafka_says_what_form_it_takes(url: str) -> None:
    with pytest.raises(ValueError, match=r"kafka://host:port\[,host:port\].*client_options"):
        servers_of_url(url)


def test_servers_come_as_one_comma_separated_string_or_a_list() -> None:
    assert servers_of("k1:9092, k2:9092") == ["k1:9092", "k2:9092"]
    assert servers_of(("k1:9092", "k2:9092")) == ["k1:9092", "k2:9092"]
