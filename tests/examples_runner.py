"""Running the example scripts as their users do: as processes of their own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 45  # seconds per process; the example consumers give up by themselves after 30

SHOP_ORDERS = [
    re.compile(r"billing order 101: 4200 cents \(checkout-1\)"),
    re.compile(r"billing order 102: 990 cents \([0-9a-f]{32}\)"),  # a fresh correlation id
    re.compile(r"refunding order 101"),
]
"""What a billing consumer of examples/shop.py prints for place_orders()."""


def example_command(name: str, **env: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment running examples/`name` with `env` added;
    settings of the Azure examples are not inherited from the test's environment."""
    command = [sys.executable, str(ROOT / "examples" / name)]
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("SERVICEBUS_")}
    return command, {**inherited, "PYTHONPATH": str(ROOT), **env}


def run(name: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run examples/`name` to completion."""
    command, full_env = example_command(name, **env)
    return subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT, env=full_env, check=False
    )


def run_ok(name: str, **env: str) -> list[str]:
    """Run examples/`name`, require success, return its output lines."""
    result = run(name, **env)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def consumer_started_first(consumer: str, producer: str, **env: str) -> list[str]:
    """Start `consumer`, run `producer` to completion, then wait for the
    consumer; require both to succeed and return the consumer's lines."""
    command, full_env = example_command(consumer, **env)
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env
    )
    try:
        run_ok(producer, **env)
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    return stdout.splitlines()


def assert_handled_the_three_orders(lines: list[str]) -> None:
    """The billing consumer printed exactly the shop's three order events."""
    assert len(lines) == 3, lines
    bills = [line for line in lines if line.startswith("billing")]
    assert bills == sorted(bills), "order 101 was placed before order 102"
    for pattern in SHOP_ORDERS:
        assert any(pattern.fullmatch(line) for line in lines), (pattern.pattern, lines)
