"""mypy infers each handler's response type from the request sent."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

HERE = Path(__file__).parent / "typing"


def run_mypy(path: Path) -> tuple[str, int]:
    stdout, stderr, status = api.run(
        ["--strict", "--no-incremental", "--no-error-summary", "--hide-error-context", str(path)]
    )
    return stdout + stderr, status


@pytest.mark.timeout(180)
def test_send_and_stream_return_the_declared_response_types() -> None:
    output, status = run_mypy(HERE / "check_send.py")
    assert status == 0, output


@pytest.mark.timeout(180)
def test_a_wrongly_typed_use_of_the_response_is_an_error() -> None:
    output, status = run_mypy(HERE / "wrong_send.py")
    assert status == 1
    assert "wrong_send.py:16: error: Incompatible types in assignment" in output
