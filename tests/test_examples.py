"""The runnable examples work as documented."""

from __future__ import annotations

import re

import orjson

from tests.examples_runner import run_ok


def test_quickstart_shows_the_local_handler_and_the_published_envelope() -> None:
    lines = run_ok("quickstart.py")
    assert lines[0] == "local handler: user 7 joined meeting 42"
    assert lines[1].startswith("response: seat ")
    assert lines[2] == "published on meetings:notification_event:meeting.user_joined"
    envelope = orjson.loads(lines[3])
    assert envelope["message_type"] == "notification_event"
    assert envelope["message_name"] == "meeting.user_joined"
    assert envelope["message_id"] == envelope["payload"]["event_id"]
    assert envelope["payload"]["user_id"] == 7
    assert envelope["payload"]["event_timestamp"].endswith("+00:00")


def test_memory_pubsub_consumer_receives_only_its_pattern() -> None:
    lines = run_ok("memory_pubsub.py")
    assert lines[0] == "billing order 101: 4200 cents (checkout-1)"
    assert re.fullmatch(r"billing order 102: 990 cents \([0-9a-f]{32}\)", lines[1])
    assert lines[2:] == [
        "refunding order 101",
        "received 3, handled 3",
        "published 5, newsletter included",
    ]


def test_publishing_prints_what_the_decorators_published() -> None:
    assert run_ok("publishing.py") == [
        'published order.created: {"order_id":"o-101","customer_id":"c-42",'
        '"items":["book","lamp"],"status":"CREATED"}',
        "not paid: 0 published",
        'published order.completed: {"order_id":"o-101","status":"COMPLETED"}',
        'published order.created: {"order_id":"o-102","customer_id":"c-43",'
        '"items":["pen"],"status":"CREATED"}',
        "cancel_order body: order.cancelling already published",
        "local handler: order o-102 released 1 item(s)",
        'published order.cancelling: {"order_id":"o-102","reason":"changed my mind"}',
    ]


def test_models_sends_and_receives_all_three_forms() -> None:
    assert run_ok("models.py") == [
        "sent orders.placed: ['event_id', 'event_timestamp', 'order_id', 'total_cents']",
        "sent UserJoinedNotificationEvent: ['event_id', 'event_timestamp', 'joined_at', 'user_id']",
        "sent customers.moved: ['address', 'customer_id', 'event_id', 'event_timestamp']",
        "received CustomerMoved: customer 3 to Oslo",
        "received OrderPlaced: order 1, 4200 cents",
        "received UserJoinedNotificationEvent: user 7 at 2026-03-07T09:26:00 (naive)",
    ]


def test_dead_letters_are_listed_replayed_once_mended_and_purged() -> None:
    assert run_ok("dead_letters.py") == [
        "3 dead-lettered: handler_failed",
        "1 dead-lettered: not_json",
        *["replayed shop:notification_event:OrderPlaced (replayed 0 times before)"] * 3,
        "charged orders [1, 2, 3]",
        "purged 1: not_json; left 0",
    ]


def test_the_order_saga_completes_compensates_a_declined_card_and_a_shipment_timeout() -> None:
    assert run_ok("sagas.py") == [
        "order 1 completed",
        "order 2 compensated: step charge_payment: RuntimeError: card declined for order 2",
        "order 3 compensated: step ship: timed out after 0.2 s",
        "reserved [1], charged {1: 4200}",
        "counts {'running': 0, 'compensating': 0, 'completed': 1, 'compensated': 2, "
        "'failed': 0, 'abandoned': 0}",
    ]


def test_the_order_process_ships_compensates_a_declined_card_and_an_overdue_shipment() -> None:
    lines = run_ok("order_process.py")
    assert lines[-3:] == [
        "order 1: shipped",
        "order 2: declined: stock released",
        "order 3: not shipped in time: refunded, stock released",
    ]
    assert sorted(lines[:-3]) == sorted(
        [
            *(f"ReserveStock {n}" for n in (1, 2, 3)),
            *(f"ChargePayment {n}" for n in (1, 2, 3)),
            "Ship 1",
            "ReleaseStock 2",
            "Ship 3",
            "RefundPayment 3",
            "ReleaseStock 3",
        ]
    )
