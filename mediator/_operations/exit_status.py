"""The exit statuses of ``mediator run`` (docs/running.md, "Exit statuses")."""

from __future__ import annotations

__all__ = ["DRAIN_CANCELLED", "FAILED", "FORCED", "GAVE_UP", "SEVERITY", "STOPPED", "USAGE"]

STOPPED = 0
"""Stopped by SIGTERM or SIGINT with every delivery drained, or ended by itself."""
FAILED = 1
"""The service failed to start or while running; the reason is on stderr."""
USAGE = 2
"""A command line that cannot be carried out (argparse's status too)."""
FORCED = 3
"""A second signal cut the drain short: what was in flight was not drained."""
DRAIN_CANCELLED = 4
"""The stop's drain timeout cancelled deliveries still in flight (released for redelivery)."""
GAVE_UP = 5
"""Under ``--workers``: a worker kept failing, so the parent stopped them all."""

SEVERITY = (STOPPED, DRAIN_CANCELLED, FORCED, FAILED, GAVE_UP, USAGE)
"""Least to most serious: the parent of ``--workers`` exits with the most
serious of its own status and its workers' last ones."""
