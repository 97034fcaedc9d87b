"""Which streams a Redis Streams subscription reads, without a server
(brokers/redis/_streams_discovery.py): what discovery joins, what a failed
join or a key of another type leaves, and what is mended after a lost group."""

from __future__ import annotations

import os

import pytest

from mediator.transport import GlobPattern

try:
    from brokers.redis._streams_discovery import StreamSet
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise
    pytest.skip(f"redis-py missing: {exc}", allow_module_level=True)

ORDERS = GlobPattern("shop:*:Order*").matches
REGISTRY = [b"shop:notification_event:OrderPlaced", b"shop:notification_event:UserSignedUp"]


def test_discovery_joins_the_registered_streams_that_match_once() -> None:
    streams = StreamSet()
    assert streams.to_join(REGISTRY, ORDERS) == ["shop:notification_event:OrderPlaced"]
    assert not streams.join("shop:notification_event:OrderPlaced")
    assert streams.reading == {"shop:notification_event:OrderPlaced": ">"}
    assert streams.to_join(REGISTRY, ORDERS) == []  # joined: not again at each discovery
    later = [*REGISTRY, "shop:domain_event:OrderShipped"]  # a stream that appears later
    assert streams.to_join(later, ORDERS) == ["shop:domain_event:OrderShipped"]


def test_a_stream_whose_group_could_not_be_made_is_retried_and_not_read_meanwhile() -> None:
    streams = StreamSet()
    key = "shop:notification_event:OrderPlaced"
    streams.join(key)
    assert streams.miss(key)  # the first failure is the one logged
    assert not streams.miss(key)
    assert key not in streams.reading
    # Retried at every discovery, even once the registry lost the key.
    assert streams.to_join([], ORDERS) == [key]
    streams.join(key)
    assert streams.reading == {key: ">"}
    assert streams.to_join(REGISTRY, ORDERS) == []


def test_a_key_of_another_type_is_skipped_until_discovery_finds_it_a_stream_again() -> None:
    streams = StreamSet()
    key = "shop:notification_event:OrderPlaced"
    streams.join(key)
    assert streams.misfit(key)  # logged once
    assert not streams.misfit(key)
    assert streams.reading == {}
    assert streams.to_join(REGISTRY, ORDERS) == [key]  # looked at again
    assert streams.join(key)  # it is a stream now: that is logged too
    assert not streams.misfits
    assert streams.reading == {key: ">"}


def test_a_lost_group_is_made_again_on_every_stream_read_or_waiting() -> None:
    streams = StreamSet()
    streams.join("shop:b")
    streams.join("shop:a")
    streams.miss("shop:c")
    streams.join("shop:d")
    streams.misfit("shop:d")
    assert streams.to_mend() == ["shop:a", "shop:b", "shop:c"]


def test_cleaning_up_covers_every_stream_joined_but_not_a_misfit() -> None:
    # A private group is destroyed where it was made; a misfit key has none.
    streams = StreamSet()
    for key in ("shop:a", "shop:b", "shop:c"):
        streams.join(key)
    streams.miss("shop:b")  # made once: still there to destroy
    streams.misfit("shop:c")
    assert streams.joined == {"shop:a", "shop:b"}
