"""Where things are on RabbitMQ (brokers/rabbitmq/_naming.py), without a
server: the names a prefix declares, the channel of a routing key, and the
binding key that covers a glob."""

from __future__ import annotations

import itertools
import re

import attrs
import pytest

from brokers.rabbitmq import binding_key
from brokers.rabbitmq._naming import MANDATORY_KEY, Layout, covers, routing_key_of
from mediator import ECSTEvent, MessageCodec, NotificationEvent
from mediator.transport import GlobPattern, channel_for

# -- names -------------------------------------------------------------------------


def test_a_prefix_names_the_exchange_and_the_broker_s_own_queues() -> None:
    layout = Layout("shop")
    assert layout.exchange == "shop"
    assert layout.group_queue("billing") == "shop.billing"
    assert layout.dead_letter_exchange == layout.dead_letter_queue == "shop.dead-letter"
    assert layout.unroutable_exchange == layout.unroutable_queue == "shop.unroutable"
    assert layout.kept_exchange == "shop.unroutable.keep"


def test_a_group_queue_is_quorum_and_dead_letters_to_the_prefix_s_exchange() -> None:
    assert Layout("shop").group_queue_arguments() == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "shop.dead-letter",
    }


@pytest.mark.parametrize(
    ("prefix", "message"),
    [("", "non-empty"), ("amq.shop", "reserved"), ("s" * 240, "too long")],
)
def test_a_prefix_that_cannot_name_an_exchange_is_refused(prefix: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Layout(prefix)


def test_the_longest_prefix_still_leaves_room_for_every_name_the_broker_adds() -> None:
    longest = "s" * (255 - len(".unroutable.keep"))
    assert len(Layout(longest).kept_exchange) == 255
    with pytest.raises(ValueError, match="too long"):
        Layout(longest + "s")


@pytest.mark.parametrize(
    ("group", "message"),
    [
        ("", "non-empty"),
        ("dead-letter", "neither 'dead-letter' nor 'unroutable'"),
        ("unroutable", "neither 'dead-letter' nor 'unroutable'"),
        ("g" * 251, "too long"),
    ],
)
def test_a_group_that_cannot_name_a_queue_of_its_own_is_refused(group: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Layout("shop").check_group(group)


def test_a_group_fits_when_its_queue_name_is_at_most_255_bytes() -> None:
    Layout("shop").check_group("g" * 250)  # "shop." + 250


def test_the_policy_command_is_the_one_the_docs_give() -> None:
    assert Layout("shop").alternate_exchange_policy() == (
        "rabbitmqctl set_policy shop-unroutable '^shop$' "
        '\'{"alternate-exchange":"shop.unroutable"}\' --apply-to exchanges'
    )


@pytest.mark.parametrize("prefix", ["shop.eu", "a+b", "x(1)", "c$[d]"])
def test_the_policy_pattern_matches_only_the_exchange_of_its_prefix(prefix: str) -> None:
    command = Layout(prefix).alternate_exchange_policy()
    found = re.search(r"'(\^.*\$)'", command)
    assert found is not None
    pattern = re.compile(found.group(1))
    assert pattern.fullmatch(prefix)
    assert not pattern.fullmatch(prefix + "x")
    for i, char in enumerate(prefix):
        if not char.isalnum():  # each special character stands for itself
            assert not pattern.fullmatch(f"{prefix[:i]}X{prefix[i + 1 :]}")


# -- routing keys and channels ---------------------------------------------------


@attrs.frozen(kw_only=True)
class OrderPlaced(NotificationEvent):
    order_id: int


@attrs.frozen(kw_only=True)
class OrderShipped(NotificationEvent, name="Order.Shipped"):
    order_id: int


@attrs.frozen(kw_only=True)
class CustomerState(ECSTEvent):
    customer_id: int


@pytest.mark.parametrize(
    ("event", "key"),
    [
        (OrderPlaced(order_id=1), "notification_event.OrderPlaced"),
        (OrderShipped(order_id=1), "notification_event.Order.Shipped"),
    ],
)
def test_a_routing_key_is_read_back_as_the_channel_the_message_was_published_on(
    event: NotificationEvent, key: str
) -> None:
    message = MessageCodec.to_message(event)
    assert routing_key_of(message) == key
    assert Layout("shop").channel(key) == channel_for("shop", message)


def test_the_type_ends_at_the_first_dot_of_a_routing_key() -> None:
    layout = Layout("shop")
    assert layout.channel("notification_event.Order.Shipped") == (
        "shop:notification_event:Order.Shipped"
    )
    # Published raw, without a name: the channel has none either.
    assert layout.channel("notification_event") == "shop:notification_event"
    assert layout.channel("") == "shop:"


def test_the_channel_of_a_routing_key_stays_right_past_the_cache() -> None:
    layout = Layout("shop")
    for n in range(5000):
        assert layout.channel(f"t.e{n}") == f"shop:t:e{n}"
    assert layout.channel("t.e0") == "shop:t:e0"


# -- binding keys ------------------------------------------------------------------

BINDINGS = [
    ("shop:notification_event:OrderPlaced", "notification_event.OrderPlaced"),
    ("shop:notification_event:Order*", "notification_event.#"),
    ("shop:notification_event:Order?", "notification_event.#"),
    ("shop:notification_event:Order.*", "notification_event.Order.#"),
    ("shop:notification_event:*", "notification_event.#"),
    ("shop:ecst_event:Customer[AB]", "ecst_event.#"),
    ("shop:*:Order?", "#"),
    ("shop:*", "#"),
    ("shop:[ne]*:*", "#"),
    ("sh?p:notification_event:OrderPlaced", "#"),
    ("*", "#"),
    ("shop:notification_event:Order\\*", "notification_event.Order*"),
    ("shop:notification_event:a.*.b", "notification_event.a.#"),
    ("shop:notification_event:x.\\*.y", "notification_event.#"),  # a literal "*" word
]


@pytest.mark.parametrize(("pattern", "key"), BINDINGS)
def test_a_glob_binds_the_narrowest_amqp_key_that_covers_it(pattern: str, key: str) -> None:
    assert binding_key(pattern, "shop") == key


@pytest.mark.parametrize("pattern", ["other:notification_event:*", "shop", "shopping:*", "sho"])
def test_a_glob_that_can_match_no_channel_of_the_prefix_is_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="can match no channel of prefix 'shop'"):
        binding_key(pattern, "shop")


TYPES = ["notification_event", "ecst_event", "domain_event"]
NAMES = ["OrderPlaced", "Order", "OrderX", "Order.Shipped", "a.b.c", "x.*.y", "#", "Customer A"]
CHANNELS = [f"shop:{kind}:{name}" for kind, name in itertools.product(TYPES, NAMES)]
TYPE_GLOBS = ["notification_event", "*", "notif*", "[ne]*", "ecst_event"]
NAME_GLOBS = [
    "*",
    "Order*",
    "Order?",
    "Order.*",
    "OrderPlaced",
    "a.*.c",
    "a.b.c",
    "Order\\*",
    "[OC]*[dr]",
    "Order.Ship?ed",
    "x.\\*.y",
    "#",
    "Customer A",
]
GLOBS = [
    *(f"shop:{kind}:{name}" for kind, name in itertools.product(TYPE_GLOBS, NAME_GLOBS)),
    "*",
    "shop:*",
    "sh?p:*",
    "[s]hop:notification_event:*",
]


@pytest.mark.parametrize("pattern", GLOBS)
def test_a_binding_key_brings_every_message_its_glob_matches(pattern: str) -> None:
    # What the in-process filter would keep must reach the queue at all.
    key = binding_key(pattern, "shop")
    glob = GlobPattern(pattern)
    for channel in CHANNELS:
        routing_key = channel.removeprefix("shop:").replace(":", ".", 1)
        assert Layout("shop").channel(routing_key) == channel
        if glob.matches(channel):
            assert covers(key, routing_key), (channel, key)


@pytest.mark.parametrize("pattern", GLOBS)
def test_only_a_hash_binding_brings_the_mandatory_marker(pattern: str) -> None:
    # The marker routes a mandatory publish to no queue; a "#" binding that
    # also gets it gets the message itself anyway.
    key = binding_key(pattern, "shop")
    assert covers(key, MANDATORY_KEY) == (key == "#")


@pytest.mark.parametrize(
    ("key", "routing_key", "covered"),
    [
        ("#", "anything.at.all", True),
        ("notification_event.#", "notification_event", True),
        ("notification_event.#", "notification_event.Order.Shipped", True),
        ("notification_event.#", "notification_eventX.Order", False),
        ("notification_event.Order.#", "notification_event.OrderPlaced", False),
        ("notification_event.OrderPlaced", "notification_event.OrderPlaced", True),
        ("notification_event.OrderPlaced", "notification_event.OrderPlaced.x", False),
    ],
)
def test_covers_is_amqp_topic_matching_for_the_keys_the_broker_binds(
    key: str, routing_key: str, covered: bool
) -> None:
    assert covers(key, routing_key) is covered


def test_each_event_type_has_routing_keys_of_its_own() -> None:
    key = routing_key_of(MessageCodec.to_message(CustomerState(customer_id=1)))
    assert key == "ecst_event.CustomerState"
    assert not covers(binding_key("shop:notification_event:*", "shop"), key)
    assert covers(binding_key("shop:*:CustomerState", "shop"), key)
