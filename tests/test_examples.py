"""The runnable examples work as documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_quickstart_shows_the_local_handler_and_the_published_envelope() -> None:
    lines = run_example("quickstart.py")
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
    lines = run_example("memory_pubsub.py")
    assert lines[0] == "billing order 101: 4200 cents (checkout-1)"
    assert re.fullmatch(r"billing order 102: 990 cents \([0-9a-f]{32}\)", lines[1])
    assert lines[2:] == [
        "refunding order 101",
        "received 3, handled 3",
        "published 5, newsletter included",
    ]
