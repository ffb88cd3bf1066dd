"""benchmarks/bench_policy.py keeps running (tiny counts; the figures are not checked)."""

from __future__ import annotations

import json

import pytest

from synthfs.benchmarks import bench_policy
from synthfs.policy.engine import Policy


def test_big_policy_shape() -> None:
    p = Policy.from_text(bench_policy.big_policy_text(), name="bench.toml", env={})
    assert len(p.apps) == 100 and p.rule_count == 1000


def test_bench_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_policy.main(["--n", "300", "--repeat", "1", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["big_decide_warm_us"] > 0 and figures["big_identify_cold_us"] > 0
    assert bench_policy.main(["--n", "300", "--repeat", "1"]) == 0
    assert "target <= 2 µs" in capsys.readouterr().out
