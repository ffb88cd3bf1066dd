"""Fixtures of the agent tests: real server and agent processes (see agent_stack)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_stack import Stack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def running(stack: Stack) -> Stack:
    """A stack with the server and the agent started (in parallel, as embedded does)."""
    stack.start_server(wait=False)
    stack.start_agent(wait=False)
    assert stack.server is not None and stack.agent is not None
    stack.server.wait_ready()
    stack.agent.wait_ready()
    return stack
