"""The fault suite (`make chaos`, also part of `make test`): eleven ways a training run gets
hurt on the local cluster, each played against the example job with the real MinIO.

Every scenario must end with the job Succeeded at exactly its step count, every
committed checkpoint still there and verifying (manifest signature, every file's
sha256), and no resume from a broken one. Jobs keep every checkpoint (keepLast 100), so
a checkpoint that disappears was lost, not rotated. Rows: runs/chaos.json
(tests/e2e/chaos.py); figures of the last run: docs/reliability.md.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from tests.e2e.chaos import Scenario

from kubetrain_devcluster.jobs import (
    apply_job,
    evict_pod,
    example_job,
    job_pods,
    job_status,
    merge,
    rank0_logs,
    store_uri,
    wait_checkpoint,
    wait_state,
)
from kubetrain_devcluster.operator import (
    S3_SECRET,
    OperatorProcess,
    admission_params,
    create_s3_secret,
    install,
)
from kubetrain_trainer.checkpoint import Claim, parse_checkpoint_dir
from kubetrain_trainer.checkpoint.claims import claim_key
from localkube.kubelet import NodeSpec
from localkube.s3 import s3_env
from localkube.services import wait_until

if TYPE_CHECKING:
    from localkube.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.chaos]


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator, with hostPath volumes allowed at admission and in the operator (a
    cluster admin's widening): scenario 7 keeps its file:// store on one."""
    install(cluster)
    before = admission_params(cluster)
    admission_params(cluster, volumeTypes=f"{before['volumeTypes']},hostPath")
    op = OperatorProcess(
        cluster,
        tmp_path_factory.mktemp("operator"),
        env={"KUBETRAIN_EXTRA_VOLUME_TYPES": "hostPath"},
    )
    op.write_kubeconfig()
    op.start()
    yield op
    op.kill()
    admission_params(cluster, **before)


STEPS = 100  # about 10-20 s of training for a 2-node gang here: time for a fault to land


def chaos_job(
    name: str, *, steps: int = STEPS, fault: str | None = None, **spec: Any
) -> dict[str, Any]:
    """The example, short: a checkpoint every 10 steps, all kept, good after 5 healthy steps."""
    job = example_job(name, max_steps=steps, eval_steps=30, eval_batches=2)
    job["spec"]["checkpoint"] |= {"intervalSteps": 10, "keepLast": 100}
    job["spec"]["trainer"]["recovery"]["good_after_steps"] = 5
    job["spec"]["trainer"]["metrics"]["log_steps"] = 1  # every step in rank 0's log
    if fault:
        job["spec"]["env"] = [{"name": "KUBETRAIN_FAULT_INJECT", "value": fault}]
    merge(job["spec"], spec)
    return job


@pytest.fixture
def scenario(
    cluster: Cluster, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """Makes the Scenario of a test; this process reads MinIO with its credentials."""
    assert cluster.minio is not None
    for key, value in s3_env(cluster.minio).items():
        monkeypatch.setenv(key, value)
    create_s3_secret(cluster, namespace)

    def make(name: str, title: str, fault: str, steps: int = STEPS, **kw: Any) -> Scenario:
        return Scenario(
            cluster,
            namespace,
            name,
            scenario=title,
            fault=fault,
            expected_steps=steps,
            workdir=tmp_path,
            **kw,
        )

    yield make


def launch(cluster: Cluster, operator: OperatorProcess, sc: Scenario, job: dict[str, Any]) -> None:
    """Apply the scenario's job, wait until its gang runs, start watching its store."""
    apply_job(cluster, sc.namespace, job)
    wait_state(cluster, operator, sc.namespace, sc.name, state="Running", timeout=120)
    sc.watch()


def survived(sc: Scenario) -> None:
    row = sc.row
    assert row.survived, row
    assert row.checkpoints_committed > 0, row
    assert row.checkpoints_lost == 0, row
    assert row.corrupt_resumes == 0, row


def rank0_log(cluster: Cluster, namespace: str, name: str) -> str:
    return cluster.pod_log_path(namespace, f"{name}-0", "trainer").read_text(errors="replace")


def committed_dirs(sc: Scenario) -> list[tuple[int, int]]:
    return sorted((i.step, i.term) for i in sc.store.scan() if i.committed)


def wait_claimed(sc: Scenario, term: int, timeout: float) -> None:
    wait_until(
        lambda: sc.store.storage.exists(claim_key(term)),
        timeout=timeout,
        what=f"term {term} claimed",
    )


def replace_node(cluster: Cluster, node: str) -> None:
    """Kill what still runs on a stopped or partitioned node; keep three Ready nodes."""
    cluster.stop_node(node)
    cluster.add_node(NodeSpec(f"{node}-r{int(time.time()) % 100000}"))


# ---- 1-5: infrastructure -----------------------------------------------------------------


def test_01_a_killed_worker_pod(
    cluster: Cluster, operator: OperatorProcess, namespace: str, scenario: Any
) -> None:
    name = "worker-killed"
    with scenario(name, "1 worker pod killed", "SIGKILL of worker 1 after the first commit") as sc:
        launch(cluster, operator, sc, chaos_job(name))
        wait_checkpoint(cluster, namespace, name, timeout=300)
        cluster.kill_pod(namespace, f"{name}-1", signal.SIGKILL)
        status = wait_state(cluster, operator, namespace, name, state="Succeeded", timeout=600)
    survived(sc)
    assert status["restarts"]["error"] == 1, status


def test_02_a_stopped_node_whose_process_runs_on(
    cluster: Cluster, operator: OperatorProcess, namespace: str, scenario: Any
) -> None:
    """Split brain: the node is cut off from the API server while its pod's processes
    live on, frozen (the cgroup freezer) until the replacement attempt has claimed the
    store, then thawed: the old process trains on unaware and tries to commit."""
    name = "split-brain"
    steps = 300  # one pod trains fast: the old process must still be training when cut off
    title, fault = "2 node stopped, old process runs on", "partition + freeze, thaw after the claim"
    with scenario(name, title, fault, steps=steps) as sc:
        launch(cluster, operator, sc, chaos_job(name, steps=steps, numNodes=1, numProcPerNode=2))
        wait_checkpoint(cluster, namespace, name, timeout=300)
        node = cluster.pod_node(namespace, f"{name}-0")
        kubelet = cluster.kubelets[node]
        zombie_log = kubelet.pod_log_path(namespace, f"{name}-0", "trainer")
        cluster.partition_node(node)
        kubelet.freeze_pod(namespace, f"{name}-0")
        try:
            wait_claimed(sc, 1, timeout=300)  # the operator's replacement, on another node
            kubelet.freeze_pod(namespace, f"{name}-0", frozen=False)
            wait_until(
                lambda: "superseded" in zombie_log.read_text(errors="replace"),
                timeout=300,
                what="the old process to be fenced at its next commit",
            )
            status = wait_state(cluster, operator, namespace, name, state="Succeeded", timeout=600)
        finally:
            replace_node(cluster, node)
    survived(sc)
    assert status["restarts"]["nodeFailure"] == 1, status
    zombie = zombie_log.read_text(errors="replace")
    assert "this attempt was replaced and stops here" in zombie
    # The new term resumed from the old one's newest commit; nothing the old process
    # trained after that was committed.
    claim = Claim.from_json(sc.store.storage.get_bytes(claim_key(1)))
    resumed = parse_checkpoint_dir(claim.resumed_from or "")
    assert resumed is not None and resumed[1] == 0
    assert all(step <= resumed[0] for step, term in committed_dirs(sc) if term == 0)


def test_03_the_operator_killed_mid_reconcile(
    cluster: Cluster, operator: OperatorProcess, namespace: str, scenario: Any
) -> None:
    """SIGKILL of the operator right after it recorded a gang restart and before it
    created the new gang (the restart backoff keeps that window open)."""
    name = "operator-killed"
    with scenario(
        name,
        "3 operator killed mid-reconcile",
        "SIGKILL of the operator after the restart decision",
    ) as sc:
        launch(cluster, operator, sc, chaos_job(name))
        wait_checkpoint(cluster, namespace, name, timeout=300)
        cluster.kill_pod(namespace, f"{name}-1", signal.SIGKILL)
        wait_until(
            lambda: (
                int((job_status(cluster, namespace, name).get("restarts") or {}).get("total", 0))
                >= 1
            ),
            timeout=180,
            what="the restart decision",
            interval=0.2,
        )
        operator.kill()
        time.sleep(5)
        operator.start()
        status = wait_state(cluster, operator, namespace, name, state="Succeeded", timeout=600)
    survived(sc)
    assert status["restarts"]["total"] == 1, status  # one decision, carried out once
    assert sorted(p["metadata"]["name"] for p in job_pods(cluster, namespace, name)) == [
        f"{name}-0",
        f"{name}-1",
    ]


def test_04_the_api_server_restarted_mid_job(
    cluster: Cluster, operator: OperatorProcess, namespace: str, scenario: Any
) -> None:
    name = "apiserver-restart"
    steps = 200
    with scenario(
        name, "4 API server restarted mid-job", "kube-apiserver stopped and started", steps=steps
    ) as sc:
        job = chaos_job(name, steps=steps, checkpoint={"intervalSteps": 20})
        launch(cluster, operator, sc, job)
        wait_checkpoint(cluster, namespace, name, timeout=300)
        cluster.restart_apiserver()
        status = wait_state(cluster, operator, namespace, name, state="Succeeded", timeout=600)
    survived(sc)
    assert status["restarts"]["total"] == 0, status  # an API outage is not the job's failure


def test_05_minio_stopped_during_an_upload(
    cluster: Cluster, operator: OperatorProcess, namespace: str, scenario: Any
) -> None:
    name = "s3-outage"
    with scenario(
        name,
        "5 MinIO stopped during an upload",
        "MinIO down 15 s after a commit, then a worker killed",
    ) as sc:
        launch(cluster, operator, sc, chaos_job(name))
        before = wait_checkpoint(cluster, namespace, name, timeout=300)
        cluster.stop_minio()
        time.sleep(15)  # a checkpoint every ~10 steps: at least one upload meets the outage
        cluster.start_minio()
        wait_until(
            lambda: max((s for s, _ in committed_dirs(sc)), default=0) > before,
            timeout=300,
            what="a checkpoint committed after the outage",
        )
        assert "failed (attempt" in rank0_log(cluster, namespace, name)  # the outage was met
        cluster.kill_pod(namespace, f"{name}-1", signal.SIGKILL)  # resume from the newest
        status = wait_state(cluster, operator, namespace, name, state="Succeeded", timeout=600)
    survived(sc)
    assert status["restarts"]["error"] == 1, status


# ---- 6-10: the data path -------------------------------------------------------------------


def _s3_key(sc: Scenario, directory: str, name: str) -> str:
    uri = store_uri(sc.cluster, sc.namespace, sc.name)
    return f"{uri.removeprefix(f's3://{sc.cluster.bucket}/')}/{directory}/{name}"


def test_06_the_newest_checkpoints_corrupted(
    cluster: Cluster, operator: OperatorProcess, namespace: str, scenario: Any
) -> None:
    """Steps 40, 30 and 20 broken three ways while the run hangs at step 45; the
    restarted gang must skip all three, resume from 10, and delete none of them."""
    name = "corrupted"
    fault = "hang@step=45,times=1"
    with scenario(
        name,
        "6 newest checkpoints corrupted",
        "byte flipped (40), file removed (30), manifest truncated (20)",
    ) as sc:
        launch(cluster, operator, sc, chaos_job(name, fault=fault))
        wait_until(lambda: len(committed_dirs(sc)) >= 4, timeout=300, what="checkpoints 10 to 40")
        assert cluster.minio is not None
        s3, bucket = cluster.minio.client(), cluster.bucket
        shard = _s3_key(sc, "step-00000040-t0", "dcp/__0_0.distcp")
        data = bytearray(s3.get_object(Bucket=bucket, Key=shard)["Body"].read())
        data[len(data) // 2] ^= 0xFF
        s3.put_object(Bucket=bucket, Key=shard, Body=bytes(data))
        s3.delete_object(Bucket=bucket, Key=_s3_key(sc, "step-00000030-t0", "rng-rank1.pt"))
        manifest = _s3_key(sc, "step-00000020-t0", "manifest.json")
        raw = s3.get_object(Bucket=bucket, Key=manifest)["Body"].read()
        s3.put_object(Bucket=bucket, Key=manifest, Body=raw[: len(raw) // 2])
        sc.damaged |= {"step-00000040-t0", "step-00000030-t0", "step-00000020-t0"}

        cluster.kill_pod(namespace, f"{name}-0", signal.SIGKILL)
        status = wait_state(cluster, operator, namespace, name, state="Succeeded", timeout=600)
    survived(sc)
    log = "".join(rank0_logs(cluster, namespace, name))
    assert f"resumed from {store_uri(cluster, namespace, name)}/step-00000010-t0" in log
    kept = {i.directory for i in sc.store.scan()}
    assert sc.damaged <= kept  # evidence, never deleted
    assert status["restarts"]["error"] == 1, status


def test_07_a_nan_storm_with_a_store_the_operator_cannot_see(
    cluster: Cluster, operator: OperatorProcess, namespace: str, scenario: Any, tmp_path: Path
) -> None:
    """The review's data-loss case: a file:// store on a volume mounted only in the
    workers. Batches 32-35 give NaN on every attempt, past the in-process budget."""
    store = tmp_path / "store"
    store.mkdir()
    store.chmod(0o777)  # the trainer writes as its image's user
    name = "nan-file-store"
    mount = "/mnt/kubetrain-chaos-store"
    spec = {
        "checkpoint": {"uri": f"file://{mount}"},
        "template": {
            "spec": {
                "volumes": [
                    {"name": "store", "hostPath": {"path": str(store), "type": "Directory"}}
                ],
                "volumeMounts": [{"name": "store", "mountPath": mount}],
            }
        },
    }
    job = chaos_job(name, fault="nan@step=32,times=4", **spec)
    job["spec"]["trainer"]["recovery"] |= {"max_consecutive_skips": 1, "max_restores": 0}
    with scenario(
        name, "7 NaN storm, file:// store", "nan@step=32,times=4 past the budget", local_store=store
    ) as sc:
        launch(cluster, operator, sc, job)
        status = wait_state(cluster, operator, namespace, name, state="Succeeded", timeout=900)
    survived(sc)
    assert status["restarts"]["nan"] == 1, status
    assert status["recovery"]["rollbackBeforeStep"] == 33  # the step that gave up
    assert status["recovery"]["skipBatches"] == "32-35"
    # The trainer chose step 20 (30 never saw 5 healthy steps) and kept the abandoned 30.
    assert f"resumed from file://{mount}/step-00000020-t0" in rank0_log(cluster, namespace, name)
    assert (30, 0) in committed_dirs(sc)


def test_08_a_hung_trainer(
    cluster: Cluster, operator: OperatorProcess, namespace: str, scenario: Any
) -> None:
    name = "hang"
    job = chaos_job(
        name, fault="hang@step=25,times=1", faultTolerance={"progressDeadlineSeconds": 60}
    )
    with scenario(name, "8 hang", "hang@step=25, progressDeadlineSeconds 60") as sc:
        launch(cluster, operator, sc, job)
        status = wait_state(cluster, operator, namespace, name, state="Succeeded", timeout=900)
    survived(sc)
    assert status["restarts"]["hang"] == 1, status


def test_09_a_late_commit_from_an_old_attempt(
    cluster: Cluster, operator: OperatorProcess, namespace: str, scenario: Any
) -> None:
    """The first attempt's upload of step 20 stalls for 90 s; its node is cut off
    meanwhile, the next attempt resumes from 10 and finishes, then the stalled commit
    arrives. The fence refuses it, and the new timeline is untouched."""
    name = "late-commit"
    fault = "stall@step=20,seconds=90,times=1"
    with scenario(name, "9 late commit from an old attempt", fault) as sc:
        launch(cluster, operator, sc, chaos_job(name, fault=fault, numNodes=1, numProcPerNode=2))
        node = cluster.pod_node(namespace, f"{name}-0")
        kubelet = cluster.kubelets[node]
        zombie_log = kubelet.pod_log_path(namespace, f"{name}-0", "trainer")
        wait_until(
            lambda: "fault injection: stall" in zombie_log.read_text(errors="replace"),
            timeout=300,
            what="the commit of step 20 to stall",
        )
        cluster.partition_node(node)
        try:
            status = wait_state(cluster, operator, namespace, name, state="Succeeded", timeout=600)
            wait_until(
                lambda: "superseded" in zombie_log.read_text(errors="replace"),
                timeout=300,
                what="the late commit to be refused",
            )
        finally:
            replace_node(cluster, node)
    survived(sc)
    assert status["restarts"]["nodeFailure"] == 1, status
    committed = committed_dirs(sc)
    assert (20, 0) not in committed and (20, 1) in committed
    assert [s for s, t in committed if t == 1][-1] == STEPS


def test_10_two_jobs_pointed_at_one_uri(
    cluster: Cluster, operator: OperatorProcess, namespace: str, scenario: Any
) -> None:
    assert cluster.minio is not None
    shared = f"s3://{cluster.bucket}/{namespace}/shared"
    s3 = {"endpoint": cluster.minio.endpoint, "credentialsSecretName": S3_SECRET}
    first, second = "first", "second"
    with scenario(
        first, "10 two jobs, one URI", "a second job given the first one's URI", uri=shared
    ) as sc:
        launch(cluster, operator, sc, chaos_job(first, checkpoint={"uri": shared, "s3": s3}))
        wait_until(
            lambda: bool(committed_dirs(sc)), timeout=300, what="the first job's first checkpoint"
        )
        apply_job(cluster, namespace, chaos_job(second, checkpoint={"uri": shared, "s3": s3}))
        refused = wait_state(cluster, operator, namespace, second, state="Failed", timeout=300)
        status = wait_state(cluster, operator, namespace, first, state="Succeeded", timeout=600)
    survived(sc)
    failed = next(c for c in refused["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "ConfigInvalid", failed
    assert f"TrainingJob {namespace}/{first}" in failed["message"]
    assert "own checkpoint URI" in failed["message"]
    assert refused["restarts"]["total"] == 0  # a clear error, never retried
    assert status["restarts"]["total"] == 0
    assert {i.term for i in sc.store.scan()} == {0}  # only the first job ever wrote there


def test_11_a_worker_evicted_by_a_drain(
    cluster: Cluster, operator: OperatorProcess, namespace: str, scenario: Any
) -> None:
    """A drain or a preemption signals one pod of the gang: its SIGTERM reaches the peers
    through the step's all-reduce, the whole gang saves at one step, and the restart
    resumes there without spending the restart budget (maxRestarts 0)."""
    name = "evicted"
    steps = 300
    job = chaos_job(name, steps=steps, faultTolerance={"maxRestarts": 0})
    job["spec"]["checkpoint"]["intervalSteps"] = 10_000  # only SIGTERM saves before the end
    title, fault = "11 worker evicted (drain)", "Eviction API on worker 1 past step 25"
    with scenario(name, title, fault, steps=steps) as sc:
        launch(cluster, operator, sc, job)
        wait_until(
            lambda: (
                (job_status(cluster, namespace, name).get("progress") or {}).get("step", 0) >= 25
            ),
            timeout=300,
            what="step 25",
        )
        evict_pod(cluster, namespace, f"{name}-1")
        status = wait_state(cluster, operator, namespace, name, state="Succeeded", timeout=600)
    survived(sc)
    assert status["restarts"]["preempted"] == 1 and status["restarts"]["total"] == 1, status
    first = [step for step, term in committed_dirs(sc) if term == 0]
    assert len(first) == 1 and 25 <= first[0] < steps, committed_dirs(sc)  # the SIGTERM save
    claim = Claim.from_json(sc.store.storage.get_bytes(claim_key(1)))
    assert parse_checkpoint_dir(claim.resumed_from or "") == (first[0], 0)
