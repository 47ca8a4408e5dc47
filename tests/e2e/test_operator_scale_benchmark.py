"""benchmarks/operator_scale.py at a tiny size, in both modes: the code path that
docs/benchmarks.md's figures come from runs, prints the documented JSON keys, and every
job's pod appears (on kwok: runs and succeeds). Timings are not asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from kubetrain_devcluster.project import REPO_ROOT, source_path

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# As `make benchmark` runs it: the packages, the harness (localkube) and hack's tooling.
PYTHONPATH = os.pathsep.join(
    [source_path(), str(REPO_ROOT / "localkube"), str(REPO_ROOT / "hack"), str(REPO_ROOT)]
)

KEYS = {
    "jobs", "all_pods_seconds", "bare_pods_seconds", "operator_peak_rss_mib", "ratio",
    "operator_idle_rss_mib", "api_requests_per_job", "reconciler_requests_per_job",
    "reconcile_p50_seconds", "reconcile_p99_seconds", "jobs_apply_seconds",
}  # fmt: skip


def _run(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "operator_scale.py"), "--json", *args],
        env={**os.environ, "PYTHONPATH": PYTHONPATH},
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_harness_mode_creates_every_jobs_pod_and_reports_the_figures() -> None:
    result = _run("--jobs", "3")
    assert set(result) >= KEYS, KEYS - set(result)
    assert result["jobs"] == 3 and result["all_pods_seconds"] > 0  # all 3 pods appeared
    assert result["bare_pods_seconds"] > 0 and result["operator_peak_rss_mib"] > 50
    assert result["jobs_apply_alone_seconds"] > 0  # the jobs, applied with no operator
    assert result["writes_per_job"]["trainingjobs"] >= 1  # kubectl's create, counted
    assert result["reconciler_requests_per_job"] >= 5  # Service, ConfigMap, Pod, ... at least
    assert result["reconcile_p50_seconds"] is not None


def test_kwok_mode_runs_every_job_to_success() -> None:
    result = _run("--jobs", "3", "--kwok", "--kwok-nodes", "1", "--complete-after", "1",
                  "--timeout", "90")  # fmt: skip
    assert set(result) >= KEYS, KEYS - set(result)
    for key in ("all_reconciled_seconds", "all_running_seconds", "all_succeeded_seconds"):
        assert result[key] is not None and result[key] > 0, key
    assert result["succeeded"] == 3
    assert result["all_succeeded_seconds"] >= result["all_running_seconds"]
