"""benchmarks/recovery.py's measurement, one class once: a worker pod killed mid-training
through the benchmark's own code (kubetrain_devcluster.recovery_classes) on the session
cluster. Asserts that the figures are sane, not how fast they are."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from kubetrain_devcluster.operator import create_s3_secret
from kubetrain_devcluster.recovery_classes import (
    CLASSES,
    INTERVAL,
    percentile,
    restarted_losses,
    restored_in_process,
    run_once,
    summary,
)

if TYPE_CHECKING:
    from kubetrain_devcluster.operator import OperatorProcess
    from localkube.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_killed_pod_is_measured(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    create_s3_secret(cluster, namespace)
    figures = run_once(cluster, operator, namespace, CLASSES["pod-kill"], "rec-pod-kill")
    assert figures["state"] == "Succeeded", figures
    assert figures["restarts"]["error"] == 1, figures
    assert 0 < figures["detection_s"] < figures["training_again_s"] < 300, figures
    # Killed at step >= 25, resumed from a checkpoint at most one interval back.
    assert figures["resumed_step"] % INTERVAL == 0 and figures["resumed_step"] >= 20, figures
    assert 0 <= figures["steps_lost"] <= INTERVAL, figures
    assert 0 < figures["goodput_percent"] <= 100, figures
    stats = summary([figures])
    assert stats["p50"]["steps_lost"] == stats["p95"]["steps_lost"] == figures["steps_lost"]


def test_a_crashed_worker_restarts_in_place_without_new_pods(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    create_s3_secret(cluster, namespace)
    figures = run_once(
        cluster, operator, namespace, CLASSES["crash-in-place"], "rec-crash-in-place"
    )
    assert figures["state"] == "Succeeded", figures
    assert figures["restarts"]["total"] == 0, figures  # no gang restart: the pods stayed
    # Crashed at step 36, resumed in place from the checkpoint at 30.
    assert figures["resumed_step"] == 30 and figures["steps_lost"] == 6, figures
    assert 0 < figures["detection_s"] <= figures["training_again_s"] < 120, figures


def test_the_log_readings_and_percentiles() -> None:
    """The parts that read rank 0's logs and summarize runs, without a cluster."""
    line = "step {}/60 | loss 2.0 | ema 2.0 | lr 1e-3 | 100 tok/s\n"
    first = "".join(line.format(s) for s in range(1, 28))
    second = "resumed from s3://b/j/step-00000020-t0 at step 20\n" + "".join(
        line.format(s) for s in range(21, 61)
    )
    assert restarted_losses([first, second]) == (20, 7)
    restored = "".join(line.format(s) for s in [*range(1, 38), *range(31, 61)])
    assert restored_in_process(restored) == (30, 37)
    assert restored_in_process(second) is None
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([1, 2, 3, 4, 5], 95) == pytest.approx(4.8)
