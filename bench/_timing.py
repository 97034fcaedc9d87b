"""Shared timing helpers: best-of-N loops, ratios printed against a baseline."""

from __future__ import annotations

import asyncio
import statistics
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
    title: str, baseline: Body, candidate: Body, budget: float | None, n: int, repeats: int
) -> float:
    """Time both bodies interleaved and print `candidate / baseline` against `budget`.

    `budget` above 1 is a ceiling on the ratio of times; the ratio printed is
    times, so lower is better. None prints the ratio for reference only.
    """
    await baseline(n // 10)
    await candidate(n // 10)
    base = cand = float("inf")
    for _ in range(repeats):
        base = min(base, await best_per_op(baseline, n, 1))
        cand = min(cand, await best_per_op(candidate, n, 1))
    ratio = cand / base
    if budget is None:
        judged = "(reference, no budget)"
    else:
        judged = f"(budget <= {budget}) {'ok' if ratio <= budget else 'OVER BUDGET'}"
    print(
        f"{title:<58} baseline {base * 1e6:7.2f} us  mediator {cand * 1e6:7.2f} us  "
        f"ratio {ratio:5.2f} {judged}"
    )
    return ratio


async def interleaved(bodies: list[Body], n: int, repeats: int) -> list[list[float]]:
    """Seconds per operation of each body in each of `repeats` rounds of `n`
    operations, the bodies taking turns, in reverse order every other round.
    On a busy machine a server's round trip drifts by more than our overhead;
    runs made side by side drift together, so the median of their ratios is
    steady where best-of-N is not."""
    for body in bodies:
        await body(max(1, n // 5))
    times: list[list[float]] = [[] for _ in bodies]
    order = list(enumerate(bodies))
    for _ in range(repeats):
        for index, body in order:
            started = time.perf_counter()
            await body(n)
            times[index].append((time.perf_counter() - started) / n)
        order.reverse()
    return times


def rate_line(
    title: str, base: list[float], cand: list[float], floor: float | None, than: str = "raw"
) -> float:
    """Print one figure: the median seconds per operation of each side, and
    our rate as a multiple of `than`'s (higher is better: the median of the
    ratios of rounds run side by side), against `floor`; return the rate."""
    rate = statistics.median(b / c for b, c in zip(base, cand, strict=True))
    verdict = "(no budget)"
    if floor is not None:
        verdict = f"(budget >= {floor}) " + ("ok" if rate >= floor else "OVER BUDGET")
    print(
        f"{title:<58} {than:<10} {statistics.median(base) * 1e6:8.2f} us  "
        f"mediator {statistics.median(cand) * 1e6:8.2f} us  rate {rate:6.3f}x {verdict}"
    )
    return rate


class Progress:
    """How many of `total` messages a consumer handled, with the times of the
    first and the last: the consume benches time from the first delivery, so
    that subscribing and the first fetch are not counted."""

    __slots__ = ("count", "cpu_first", "cpu_last", "done", "first", "last", "total")

    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.first = self.last = 0.0
        self.cpu_first = self.cpu_last = 0.0
        self.done = asyncio.Event()

    def tick(self) -> None:
        self.count += 1
        if self.count == 1:
            self.first = time.perf_counter()
            self.cpu_first = time.process_time()
        if self.count == self.total:
            self.last = time.perf_counter()
            self.cpu_last = time.process_time()
            self.done.set()

    def per_message(self) -> float:
        """Seconds per message between the first and the last."""
        return (self.last - self.first) / (self.total - 1)

    def cpu_per_message(self) -> float:
        """CPU seconds of this process per message between the first and the
        last: what the consumer itself spent, without the waits on its broker
        that make a short window's wall time jump from run to run."""
        return (self.cpu_last - self.cpu_first) / (self.total - 1)
