"""Recovery on the local cluster: how long a job is down and how much work it loses.

    make benchmark NAME=recovery

Runs on the harness cluster (real API server, controller-manager, scheduler,
3 process-kubelet nodes, MinIO) with the operator from source under its own
RBAC identity. Each scenario is a 2-worker job from examples/trainingjob.yaml
with a checkpoint every 10 steps:

* node stop: the node of worker 1 is stopped after the second checkpoint. Down
  time runs from the stop until rank 0 of the next attempt reports a step beyond
  the checkpoint it resumed from; steps lost = the highest step reached before
  the stop minus that checkpoint's step.
* NaN: steps 42-45 give NaN on every attempt; the trainer gives up (exit 65) and
  the operator rolls back to the newest good checkpoint. Down time runs from
  rank 0's exit (its container's finishedAt) until the next attempt trains again.
* checkpoint stall: the training loop's blocked time per checkpoint
  (kubetrain_checkpoint_save_seconds on rank 0, mean over 5 saves after the
  first) with asynchronous uploads vs synchronous ones, same job with a ~150 MB
  state per rank, same cluster, one after the other (`--only-stall` runs just this).
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubetrain_devcluster import operator as operator_process
from kubetrain_devcluster.jobs import (
    ATTEMPT_LABEL,
    apply_job,
    checkpoint_steps,
    example_job,
    job_pods,
    job_status,
    rank0_progress,
    wait_state,
)
from kubetrain_devcluster.project import cluster as kubetrain_cluster
from localkube.cluster import Cluster, default_nodes
from localkube.kubelet import NodeSpec
from localkube.services import wait_until

NAMESPACE = "bench"


def job(name: str, steps: int, *, fault: str | None = None, async_upload: bool = True) -> Any:
    body = example_job(name, max_steps=steps, eval_steps=steps, eval_batches=2)
    body["spec"]["checkpoint"]["intervalSteps"] = 10
    body["spec"]["trainer"]["recovery"] |= {
        "good_after_steps": 5, "max_consecutive_skips": 1, "max_restores": 0,
    }  # fmt: skip
    body["spec"]["checkpoint"]["asyncUpload"] = async_upload
    if fault:
        body["spec"]["env"] = [{"name": "KUBETRAIN_FAULT_INJECT", "value": fault}]
    return body


def wait_training_again(cluster: Cluster, name: str, attempt: int, beyond: int) -> float:
    """Monotonic time when rank 0 of `attempt` first reports a step > `beyond`."""
    wait_until(
        lambda: (rank0_progress(cluster, NAMESPACE, name, attempt) or 0) > beyond,
        timeout=900,
        what=f"attempt {attempt} of {name} to train past step {beyond}",
        interval=0.2,
    )
    return time.monotonic()


def resumed_step(cluster: Cluster, name: str) -> int:
    log = cluster.pod_log_path(NAMESPACE, f"{name}-0", "trainer").read_text(errors="replace")
    found = re.findall(rf"resumed from s3://\S+/{name}/step-(\d+)", log)
    if not found:
        raise RuntimeError(f"{name}: rank 0 did not log a resume")
    return int(found[-1])


def node_stop(cluster: Cluster, op: operator_process.OperatorProcess) -> dict[str, float]:
    name = "bench-node-stop"
    apply_job(cluster, NAMESPACE, job(name, 80))
    wait_until(
        lambda: len(checkpoint_steps(cluster, NAMESPACE, name)) >= 2,
        timeout=600,
        what="two checkpoints",
        interval=0.5,
    )
    reached = rank0_progress(cluster, NAMESPACE, name, 0) or 0
    victim = cluster.pod_node(NAMESPACE, f"{name}-1")
    stopped = time.monotonic()
    cluster.stop_node(victim)
    reached = max(reached, rank0_progress(cluster, NAMESPACE, name, 0) or 0)
    try:
        wait_until(
            lambda: job_status(cluster, NAMESPACE, name)["restarts"]["total"] >= 1,
            timeout=300,
            what="the restart",
            interval=0.2,
        )
        decided = time.monotonic()
        status = job_status(cluster, NAMESPACE, name)
        reached = max(reached, status["recovery"]["highestStep"])
        resumed = wait_training_again(cluster, name, 1, beyond=0)
        start = resumed_step(cluster, name)
        wait_state(cluster, op, NAMESPACE, name, state="Succeeded", timeout=900)
    finally:
        cluster.add_node(NodeSpec(f"{victim}-replacement"))
    return {
        "stop -> restart decided (s)": decided - stopped,
        "stop -> training again (s)": resumed - stopped,
        "steps lost": reached - start,
        "goodput %": job_status(cluster, NAMESPACE, name)["goodputPercent"],
    }


def rank0_exit_code(cluster: Cluster, name: str, attempt: int) -> int | None:
    """Exit code of rank 0's container (torchrun) in `attempt`, once it has terminated."""
    for pod in job_pods(cluster, NAMESPACE, name):
        meta = pod["metadata"]
        if meta["name"].endswith("-0") and meta["labels"].get(ATTEMPT_LABEL) == str(attempt):
            for cs in pod["status"].get("containerStatuses") or []:
                terminated = (cs.get("state") or {}).get("terminated")
                if terminated:
                    return int(terminated["exitCode"])
    return None


def nan_rollback(cluster: Cluster, op: operator_process.OperatorProcess) -> dict[str, float]:
    name = "bench-nan"
    apply_job(cluster, NAMESPACE, job(name, 80, fault="nan@step=42,times=4"))
    # torchrun, the container's process, exits 1 whatever its worker's code; the
    # trainer's termination message says NaN (asserted through restarts.nan below).
    wait_until(
        lambda: rank0_exit_code(cluster, name, 0) is not None,
        timeout=900,
        what="rank 0 to exit",
        interval=0.2,
    )
    exited = time.monotonic()
    resumed = wait_training_again(cluster, name, 1, beyond=0)
    status = job_status(cluster, NAMESPACE, name)
    if status["restarts"]["nan"] != 1:
        raise RuntimeError(f"{name}: expected one NaN rollback, got {status['restarts']}")
    start = resumed_step(cluster, name)
    wait_state(cluster, op, NAMESPACE, name, state="Succeeded", timeout=900)
    return {
        "NaN exit -> training again (s)": resumed - exited,
        "steps lost": status["recovery"]["highestStep"] - start,
        "rolled back to step": start,
        "goodput %": job_status(cluster, NAMESPACE, name)["goodputPercent"],
    }


# The stall scenario's model: ~12.6 M parameters, ~150 MB of weights and AdamW state
# per rank, so that copying and writing the state is what a checkpoint costs.
STALL_MODEL = {"d_model": 512, "n_layers": 4, "n_heads": 8}
STALL_SAVES = 5


def save_seconds(cluster: Cluster, pod: str) -> tuple[float, int] | None:
    """(sum, count) of rank 0's kubetrain_checkpoint_save_seconds, None if unreachable."""
    ip = cluster.api.get(f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}")["status"].get("podIP")
    try:
        with urllib.request.urlopen(f"http://{ip}:9090/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    total = re.search(r"^kubetrain_checkpoint_save_seconds_sum\S* (\S+)", text, re.M)
    count = re.search(r"^kubetrain_checkpoint_save_seconds_count\S* (\S+)", text, re.M)
    if not (total and count):
        return None
    return float(total.group(1)), int(float(count.group(1)))


def stall(cluster: Cluster, op: operator_process.OperatorProcess, async_upload: bool) -> float:
    """Mean seconds the loop was blocked per checkpoint, from rank 0's /metrics, over
    STALL_SAVES saves after the first (which also allocates the staging memory)."""
    name = f"bench-{'async' if async_upload else 'sync'}"
    body = job(name, 5 * (STALL_SAVES + 2), async_upload=async_upload)
    body["spec"]["checkpoint"]["intervalSteps"] = 5
    body["spec"]["trainer"]["model"] |= STALL_MODEL
    apply_job(cluster, NAMESPACE, body)
    wait_state(cluster, op, NAMESPACE, name, state="Running", timeout=300)
    seen: list[tuple[float, int]] = []

    def saved(count: int) -> bool:
        found = save_seconds(cluster, f"{name}-0")
        if found is None or found[1] < count:
            return False
        seen.append(found)
        return True

    wait_until(lambda: saved(1), timeout=900, what=f"{name}: a first checkpoint", interval=0.2)
    first = seen[-1]
    target = first[1] + STALL_SAVES
    wait_until(lambda: saved(target), timeout=1800, what=f"{name}: more saves", interval=0.2)
    last = seen[-1]
    cluster.kubectl("-n", NAMESPACE, "delete", "tj", name, "--wait=false")
    return (last[0] - first[0]) / (last[1] - first[1])


def report(scenario: str, figures: dict[str, float]) -> None:
    print(scenario)
    for key, value in figures.items():
        print(f"  {key:34s} {value:8.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only-stall", action="store_true", help="skip node stop and NaN")
    args = parser.parse_args()
    with kubetrain_cluster(default_nodes(3)) as cluster, tempfile.TemporaryDirectory() as tmp:
        operator_process.install(cluster)
        cluster.kubectl("create", "namespace", NAMESPACE)
        operator_process.create_s3_secret(cluster, NAMESPACE)
        op = operator_process.OperatorProcess(cluster, Path(tmp))
        op.write_kubeconfig()
        op.start()
        try:
            if not args.only_stall:
                report("node stop", node_stop(cluster, op))
                report("NaN rollback", nan_rollback(cluster, op))
            sync_s = stall(cluster, op, async_upload=False)
            async_s = stall(cluster, op, async_upload=True)
        finally:
            op.kill()
        print("checkpoint stall per save (rank 0, mean)")
        print(f"  synchronous (baseline)             {sync_s * 1000:8.0f} ms")
        print(f"  asynchronous                       {async_s * 1000:8.0f} ms")
        print(f"  ratio async/sync                   {async_s / sync_s:8.3f}   (target <= 0.1)")


if __name__ == "__main__":
    main()
