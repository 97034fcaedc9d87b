"""The parent of ``mediator run --workers`` without starting a process
(mediator/_operations/workers.py): the command each worker runs, and the
restart delays docs/running.md promises."""

from __future__ import annotations

import sys

import pytest

from mediator._operations.exit_status import (
    DRAIN_CANCELLED,
    FAILED,
    FORCED,
    GAVE_UP,
    SEVERITY,
    STOPPED,
    USAGE,
)
from mediator._operations.workers import RestartPolicy, worker_command


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "shop:app", "--workers", "4", "--broker", "redis://cache:6379/0"],
        ["run", "shop:app", "--workers=4", "--broker", "redis://cache:6379/0"],
        ["run", "--workers", "4", "shop:app", "--broker", "redis://cache:6379/0"],
    ],
)
def test_each_worker_runs_the_same_command_without_workers(argv: list[str]) -> None:
    assert worker_command(argv) == [
        sys.executable,
        "-m",
        "mediator",
        "run",
        "shop:app",
        "--broker",
        "redis://cache:6379/0",
    ]


def test_restart_delays_double_from_the_first_up_to_30_seconds() -> None:
    policy = RestartPolicy(delay=1.0)
    delays = []
    previous = None
    for _ in range(8):
        previous = policy.next_delay(previous)
        delays.append(previous)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_a_first_delay_above_the_cap_is_kept_not_shortened() -> None:
    policy = RestartPolicy(delay=45.0)
    assert policy.next_delay(None) == 45.0
    assert policy.next_delay(45.0) == 45.0


def test_the_defaults_are_those_of_the_command_line() -> None:
    policy = RestartPolicy()
    assert (policy.delay, policy.limit, policy.window) == (1.0, 5, 60.0)


def test_the_parent_reports_the_most_serious_status_in_the_documented_order() -> None:
    # docs/running.md: 2, 5, 1, 3, 4, 0 from most to least serious.
    assert list(reversed(SEVERITY)) == [
        USAGE,
        GAVE_UP,
        FAILED,
        FORCED,
        DRAIN_CANCELLED,
        STOPPED,
    ]
    assert max([STOPPED, DRAIN_CANCELLED, FAILED], key=SEVERITY.index) == FAILED
