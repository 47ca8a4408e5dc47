"""benchmarks/peers.py runs every framework on the same workload: one short round of
each, in real processes, trains the same thing (identical final losses) and prints
the JSON keys docs/benchmarks.md documents. Timings are not asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests.integration.trainer_runs import REPO, env_with

pytestmark = pytest.mark.integration


def test_the_four_runners_train_the_same_thing_and_report_their_figures() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "peers.py"),
         "--steps", "6", "--warmup", "2", "--rounds", "1", "--json"],
        env=env_with(), capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    runners = ("plain", "kubetrain", "hf_trainer", "lightning")
    for name in runners:
        assert result[f"{name}_ms"] > 0 and result[f"{name}_peak_rss_mib"] > 100
    # The same model, batches, optimizer, schedule and clipping: the same numbers.
    losses = {result[f"{name}_final_loss"] for name in runners}
    assert len(losses) == 1 or max(losses) - min(losses) < 1e-5, losses
    for peer in ("plain", "hf_trainer", "lightning"):
        assert result[f"kubetrain_over_{peer}"] > 0
