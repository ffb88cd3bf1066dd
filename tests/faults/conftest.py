"""Fixtures of the fault suite: no run outlives its test, even a failed one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fault_stack import STARTED


@pytest.fixture(autouse=True)
def _kill_leftover_runs() -> Iterator[None]:
    yield
    while STARTED:
        STARTED.pop().kill()
