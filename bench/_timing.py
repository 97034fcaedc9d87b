"""Shared timing helpers: best-of-N loops, ratios printed against a baseline."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

Body = Callable[[int], Awaitable[None]]


async def best_per_op(body: Body, n: int, repeats: int) -> float:
    """The best seconds per operation of `body(n)` over `repeats` runs."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        await body(n)
        best = min(best, (time.perf_counter() - started) / n)
    return best


async def compare(
    title: str, baseline: Body, candidate: Body, budget: float, n: int, repeats: int
) -> float:
    """Time both bodies interleaved and print `candidate / baseline` against `budget`.

    `budget` above 1 is a ceiling on the ratio of times; the ratio printed is
    times, so lower is better.
    """
    await baseline(n // 10)
    await candidate(n // 10)
    base = cand = float("inf")
    for _ in range(repeats):
        base = min(base, await best_per_op(baseline, n, 1))
        cand = min(cand, await best_per_op(candidate, n, 1))
    ratio = cand / base
    verdict = "ok" if ratio <= budget else "OVER BUDGET"
    print(
        f"{title:<58} baseline {base * 1e6:7.2f} us  mediator {cand * 1e6:7.2f} us  "
        f"ratio {ratio:5.2f} (budget <= {budget}) {verdict}"
    )
    return ratio
