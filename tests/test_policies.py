"""Backoff: capped exponential delays that stay bounded for any number of attempts."""

from __future__ import annotations

import pytest

from mediator import Backoff


@pytest.mark.parametrize(
    ("backoff", "attempt"),
    [
        (Backoff(), 10**6),
        (Backoff(multiplier=10), 5000),
        (Backoff(initial=1e-300, multiplier=10, maximum=1e10), 400),
        (Backoff(multiplier=1.5, maximum=3600, jitter=1), 10**9),
    ],
)
def test_a_delay_after_any_number_of_attempts_stays_within_the_maximum(
    backoff: Backoff, attempt: int
) -> None:
    # A reconnect loop counts attempts for as long as a broker is down.
    for _ in range(20):
        delay = backoff.delay(attempt)
        assert 0 <= delay <= backoff.maximum * (1 + backoff.jitter)


@pytest.mark.parametrize(
    "backoff",
    [
        Backoff(jitter=0),
        Backoff(multiplier=10, jitter=0),
        Backoff(initial=0.1, multiplier=1.01, maximum=60, jitter=0),
        Backoff(initial=7, multiplier=3, maximum=5, jitter=0),
    ],
)
def test_delays_never_decrease_and_stay_at_the_maximum_once_reached(backoff: Backoff) -> None:
    delays = [backoff.delay(attempt) for attempt in range(1, 3000)]
    assert delays == sorted(delays)
    reached = delays.index(backoff.maximum)
    assert set(delays[reached:]) == {backoff.maximum}
    assert backoff.delay(10**6) == backoff.delay(10**12) == backoff.maximum


def test_delays_grow_by_the_multiplier_from_the_initial_delay() -> None:
    backoff = Backoff(initial=0.05, multiplier=2, maximum=5, jitter=0)
    assert [backoff.delay(attempt) for attempt in range(1, 10)] == [
        0.05,
        0.1,
        0.2,
        0.4,
        0.8,
        1.6,
        3.2,
        5.0,
        5.0,
    ]


def test_without_growth_every_delay_is_the_initial_one() -> None:
    assert {Backoff(initial=0, jitter=0).delay(n) for n in (1, 2, 10**6)} == {0.0}
    assert {Backoff(initial=2, multiplier=1, jitter=0).delay(n) for n in (1, 10**6)} == {2.0}
