"""benchmarks/s3_throughput.py runs both sides against a real MinIO (quick mode: small
random files, one round) and prints the JSON keys docs/benchmarks.md documents.
Throughput is not asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests.integration.trainer_runs import REPO, env_with

pytestmark = pytest.mark.integration


def test_quick_mode_reports_both_sides_for_upload_and_download() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "s3_throughput.py"), "--quick", "--json"],
        env=env_with(), capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["files"] == 8 and result["rounds"] == 1 and result["file_set"] == "random"
    for way in ("upload", "download"):
        for side in ("ours", "tm"):
            assert result[f"{way}_{side}_mbps"] > 0
            assert result[f"{way}_{side}_client_cpu_s"] >= 0
        assert result[f"{way}_ratio"] > 0 and len(result[f"{way}_ratio_range"]) == 2
    assert result["resume_ms"] > 0
