"""Hostile input at a running agent's socket: bad frames dropped, good ones answered, alive.

The agent's socket is private to the interposer, so a frame on it is either
a bug in the interposer or an attacker who already got past the socket's
0600/0700 guard; either way the agent must neither die nor hang. Its rule
(:mod:`agent.main`): a frame that does not decode is dropped (and logged),
a frame that decodes is answered, one at a time and in order. So the
fuzzer (:mod:`fuzzframes`) predicts, with the same codec, which frames are
owed a reply, and checks after every batch of 200 (with a valid Stat whose
answer must come) that exactly those were answered. ``SYNTHFS_FUZZ_FRAMES``
frames in CI (20,000); a million in the slow run.
"""

from __future__ import annotations

import pytest
from agent_stack import Stack
from fuzzframes import CI_FRAMES, FULL_FRAMES, SEED, FrameFuzzer, agent_seeds, blast, decodes

from synthfs.protocol.messages import Message, Stat, StatReply


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _is_root(msg: Message) -> bool:
    return isinstance(msg, StatReply) and msg.attrs.kind == "dir"


def _blast_agent(running: Stack, count: int) -> None:
    (running.root / "d").mkdir()
    (running.root / "d" / "f").write_bytes(b"data")
    (running.root / "f").write_bytes(b"file")
    agent = running.agent
    assert agent is not None and running.server is not None
    valid, garbage = agent_seeds()
    rss0 = _rss_kib(agent.pid)
    res = blast(running.agent_ep, FrameFuzzer(valid, garbage, SEED), count,
                probe=lambda: Stat(path="/"), probe_ok=_is_root,
                owes_reply=lambda parts: decodes(parts[-1]),
                alive=lambda: agent.popen.poll() is None, in_order=True)
    rss = _rss_kib(agent.pid)
    print(res.summary("agent"), f"; RSS {rss0 // 1024} -> {rss // 1024} MiB")
    # Bounds: nothing a frame declares grows the agent; every batch answered promptly.
    assert rss - rss0 < 128 * 1024, f"RSS grew by {(rss - rss0) // 1024} MiB"
    assert res.worst_probe_s < 10.0, res.worst_probe_s
    assert res.frames == count and res.probes == -(-count // 200)
    assert res.errnos["undecodable"] == 0  # every reply is a valid message
    assert res.mismatches == [], res.mismatches[:10]
    assert res.replies == res.expected, f"seed {SEED}"
    assert agent.popen.poll() is None and running.server.popen.poll() is None
    log = agent.output()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
    # Dropped frames are logged at a limited rate: a flood must not fill the disk.
    assert len(log.splitlines()) < res.dropped / 10, f"{len(log.splitlines())} log lines"
    # Still serving: a fresh interposer connection gets a real answer.
    assert _is_root(running.client().call(Stat(path="/")))


def test_fuzzed_frames_at_socket_speed(running: Stack) -> None:
    """CI: SYNTHFS_FUZZ_FRAMES (20,000) mutated frames, a probe after every 200."""
    _blast_agent(running, CI_FRAMES)


@pytest.mark.slow
def test_a_million_fuzzed_frames(running: Stack) -> None:
    _blast_agent(running, FULL_FRAMES)


def test_oversized_frame_is_dropped_and_the_agent_goes_on(running: Stack) -> None:
    """A frame over the codec's limit never reaches the agent's memory whole: ZeroMQ drops it."""
    import zmq

    from synthfs.protocol.codec import MAX_FRAME

    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(running.agent_ep)
    try:
        s.send(b"\x00" * (4 * MAX_FRAME))
        assert not s.poll(500)
    finally:
        s.close()
    assert running.agent is not None and running.agent.popen.poll() is None
    assert _is_root(running.client().call(Stat(path="/")))
    assert "bad frame" not in running.agent.output()  # dropped by ZeroMQ, before decoding
