"""Recovery on the local cluster: per failure class, how long a job is down and how much
work it loses; and the checkpoint stall of async vs sync uploads.

    make benchmark NAME=recovery ARGS="--repeats 5 --json"

Runs on the harness cluster (real API server, controller-manager, scheduler,
4 process-kubelet nodes in two pools, MinIO) with the operator from source under
its own RBAC identity, one cluster and one operator for every run. Each run is
one 2-worker job from examples/trainingjob.yaml, 60 steps, a checkpoint every
10, one line per step in rank 0's log, hurt once by a fault of its class; the
jobs run one after the other (`--parallel N`: N at a time; node stops keep to
their own pool of nodes, so they never hit another job). Classes (`--classes`,
default all but `none`): pod-kill, node-stop, nan-in-process, nan-rollback,
hang, preemption, crash-recreate and crash-in-place (a worker crash without and with
faultTolerance.inPlaceRestarts), none (no fault: the goodput baseline); how each is played and
what each figure measures: kubetrain_devcluster/recovery_classes.py. Prints a
table of p50/p95 per class (`--json`: one JSON object with every run's figures,
p50 and p95).

* checkpoint stall: the training loop's blocked time per checkpoint
  (kubetrain_checkpoint_save_seconds on rank 0, mean over 5 saves after the
  first) with asynchronous uploads vs synchronous ones, same job with a ~150 MB
  state per rank, same cluster, one after the other (`--stall` adds it,
  `--only-stall` runs just this).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubetrain_devcluster import operator as operator_process
from kubetrain_devcluster.jobs import apply_job, example_job, wait_state
from kubetrain_devcluster.project import cluster as kubetrain_cluster
from kubetrain_devcluster.recovery_classes import (
    CLASSES,
    FIGURES,
    POOL_LABEL,
    run_once,
    summary,
)
from localkube.cluster import Cluster
from localkube.kubelet import NodeSpec
from localkube.services import wait_until

NAMESPACE = "bench"


def job(name: str, steps: int, *, async_upload: bool = True) -> Any:
    body = example_job(name, max_steps=steps, eval_steps=steps, eval_batches=2)
    body["spec"]["checkpoint"]["intervalSteps"] = 10
    body["spec"]["checkpoint"]["asyncUpload"] = async_upload
    return body


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


def loads() -> list[float]:
    """The 1, 5 and 15 minute load averages of this machine."""
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def run_classes(
    cluster: Cluster,
    op: operator_process.OperatorProcess,
    names: list[str],
    repeats: int,
    parallel: int,
) -> dict[str, Any]:
    """Every class `repeats` times, round robin, up to `parallel` jobs at a time; node
    stops one at a time on their own pool of nodes, the other classes on the shared one."""
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    node_stops = threading.Lock()

    def one(cls: str, i: int) -> None:
        pool = "victim" if cls == "node-stop" else "shared"
        try:
            with node_stops if cls == "node-stop" else contextlib.nullcontext():
                name = f"rec-{cls}-{i}"
                figures = run_once(cluster, op, NAMESPACE, CLASSES[cls], name, pool)
        except Exception as error:  # reported in the output; the other runs go on
            figures = {"error": f"{type(error).__name__}: {error}"[:2000]}
        figures["load_1m"] = loads()[0]
        runs[cls].append(figures)
        print(f"{cls} #{i}: {json.dumps(figures)}", file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        done = [pool.submit(one, cls, i) for i in range(repeats) for cls in names]
        for future in done:
            future.result()
    return {n: {"model": CLASSES[n].model, "runs": r, **summary(r)} for n, r in runs.items()}


def print_table(result: dict[str, Any]) -> None:
    heads = ("detection s", "training again s", "steps lost", "goodput %")
    print(f"{'class':16s}" + "".join(f"{h:>22s}" for h in heads))
    for cls, res in result["classes"].items():
        cells = []
        for key in FIGURES:
            p50, p95 = res["p50"][key], res["p95"][key]
            cells.append("-" if p50 is None else f"{p50:.1f} / {p95:.1f}")
        print(f"{cls:16s}" + "".join(f"{c:>22s}" for c in cells))
    print(f"(p50 / p95 over {result['repeats']} runs each; load {result['load_1m']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per class (default 5)")
    parser.add_argument(
        "--classes",
        default=",".join(c for c in CLASSES if c != "none"),
        help=f"comma-separated, of: {', '.join(CLASSES)}",
    )
    parser.add_argument("--parallel", type=int, default=1, help="jobs at a time (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--stall", action="store_true", help="also the checkpoint stall")
    parser.add_argument("--only-stall", action="store_true", help="only the checkpoint stall")
    args = parser.parse_args()
    names = [] if args.only_stall else [c for c in args.classes.split(",") if c]
    unknown = set(names) - set(CLASSES)
    if unknown:
        parser.error(f"unknown classes {sorted(unknown)}; known: {', '.join(CLASSES)}")
    result: dict[str, Any] = {
        "repeats": args.repeats,
        "parallel": args.parallel,
        "load_before": loads(),
    }
    started = time.monotonic()
    nodes = [NodeSpec(f"node-{i}", labels={POOL_LABEL: "shared"}) for i in range(2)] + [
        NodeSpec(f"victim-{i}", labels={POOL_LABEL: "victim"}) for i in range(2)
    ]
    with kubetrain_cluster(nodes) as cluster, tempfile.TemporaryDirectory() as tmp:
        operator_process.install(cluster)
        cluster.create_namespace(NAMESPACE)
        operator_process.create_s3_secret(cluster, NAMESPACE)
        op = operator_process.OperatorProcess(cluster, Path(tmp))
        op.write_kubeconfig()
        op.start()
        try:
            result["classes"] = run_classes(cluster, op, names, args.repeats, args.parallel)
            if args.stall or args.only_stall:
                sync_s = stall(cluster, op, async_upload=False)
                async_s = stall(cluster, op, async_upload=True)
                result["stall_ms"] = {"sync": sync_s * 1000, "async": async_s * 1000}
        finally:
            op.kill()
    runs = [r for c in result["classes"].values() for r in c["runs"]]
    result["load_1m"] = {
        "min": min((r["load_1m"] for r in runs), default=None),
        "max": max((r["load_1m"] for r in runs), default=None),
    }
    result["load_after"] = loads()
    result["minutes"] = round((time.monotonic() - started) / 60, 1)
    if args.json:
        print(json.dumps(result))
        return
    if names:
        print_table(result)
    if "stall_ms" in result:
        sync_ms, async_ms = result["stall_ms"]["sync"], result["stall_ms"]["async"]
        print("checkpoint stall per save (rank 0, mean)")
        print(f"  synchronous (baseline)             {sync_ms:8.0f} ms")
        print(f"  asynchronous                       {async_ms:8.0f} ms")
        print(f"  ratio async/sync                   {async_ms / sync_ms:8.3f}   (target <= 0.1)")


if __name__ == "__main__":
    main()
